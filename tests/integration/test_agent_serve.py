"""The voice agent end to end: compiled to a .tzb, served by ``terrazzo serve``, queried with the stock tritonclient.

Checks that serving answers what the same agent computes in-process, that the LLM's prefill and
decode ran in different worker processes on different planned device classes (the KV cache
crossing between them as gRPC tensors), and that the served LLM answer equals greedy decoding
with the torch reference model for the same prompt.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "examples" / "agents" / "voice_agent.yaml"
FLEET = {
    "devices": {"cpu": {"count": 8}, "h100": {"count": 2}, "a100-80g": {"count": 2}},
    "pricing": {"mode": "cloud"},
}
SEEDS = (0, 1, 2, 3)
_WORKER_RE = re.compile(r"^\s+stage(\d+)/r0\s+device (\S+)\s+target \S+\s+pid (\d+) at \S+(.*)$")


def _audio(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 1600)).astype(np.float32)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Compile (API, host builds only: no GPU here) and serve with the ``terrazzo serve`` CLI."""
    from terrazzo.pipeline import compile_agent
    from terrazzo.placement import Fleet

    out = tmp_path_factory.mktemp("agent") / "voice.tzb"
    result = compile_agent(SPEC, Fleet.model_validate(FLEET), "2s", out, device_builds=False)
    cmd = [sys.executable, "-m", "terrazzo.cli", "serve", str(result.path), "--port", "0",
           "--metrics-port", "0", "--timeout", "60"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []
        while not (lines and lines[-1].startswith("ready")):
            line = proc.stdout.readline()
            assert line, f"terrazzo serve exited: {proc.stderr.read()[-3000:]}"
            lines.append(line)
        text = "".join(lines)
        info = {
            "port": int(re.search(r"on 127\.0\.0\.1:(\d+)", text).group(1)),
            "metrics": int(re.search(r"metrics on http://127\.0\.0\.1:(\d+)", text).group(1)),
            "model": re.search(r"serving model '([^']+)'", text).group(1),
            "workers": {
                int(m.group(1)): {"device": m.group(2), "pid": int(m.group(3)), "note": m.group(4)}
                for m in map(_WORKER_RE.match, lines)
                if m
            },
            "text": text,
        }
        yield result, info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _infer(port: int, model: str, audio: np.ndarray) -> dict[str, np.ndarray]:
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    inp = tc.InferInput("audio", [1, 1600], "FP32")
    inp.set_data_from_numpy(audio)
    names = ("speech", "planner", "research.iterations")
    res = client.infer(model, [inp], outputs=[tc.InferRequestedOutput(n) for n in names],
                       client_timeout=60)  # fmt: skip
    return {n: res.as_numpy(n) for n in names}


def _agent_json(path):
    from terrazzo.bundle import open_bundle

    with open_bundle(path) as b:
        return b.plan_json["agent"]


def test_stock_client_matches_in_process_agent_and_torch(served):
    from terrazzo.codegen.llm_phases import TinyLlamaConfig, greedy_generate, torch_reference
    from terrazzo.runtime.agent_plan import LocalAgent, agent_serving_plan

    result, info = served
    local = LocalAgent(agent_serving_plan(result.path))  # its own (empty) memory store
    node = next(n for n in _agent_json(result.path)["nodes"] if n["kind"] == "llm.call")
    cfg = TinyLlamaConfig(**node["config"])
    ref = torch_reference(cfg)
    iterations = []
    for seed in SEEDS:  # same request order on both sides: memory carries state between requests
        got = _infer(info["port"], info["model"], _audio(seed))
        env = local({"audio": _audio(seed)})
        assert got["planner"].dtype == np.int64 and got["planner"].shape == (
            node["max_new_tokens"],
        )
        np.testing.assert_array_equal(got["planner"], env["planner"])
        np.testing.assert_array_equal(got["research.iterations"], env["research.iterations"])
        np.testing.assert_allclose(got["speech"], env["speech"], rtol=1e-5, atol=1e-6)
        k = int(env["research.iterations"][0])
        iterations.append(k)
        prompt = env["planner.prompt" if k == 3 else f"planner.prompt__it{k - 1}"]
        assert prompt.size > 0
        expected = greedy_generate(ref, prompt, node["max_new_tokens"], cfg)
        np.testing.assert_array_equal(got["planner"], expected)
    assert max(iterations) > 1, f"no request took the search loop: {iterations}"
    assert min(iterations) == 1, f"every request looped: {iterations}"


def test_prefill_and_decode_in_different_workers_and_classes(served):
    from terrazzo.runtime.agent_plan import agent_serving_plan, runner_kind

    result, info = served
    _infer(info["port"], info["model"], _audio(9))
    plan = agent_serving_plan(result.path)  # the same stage layout the server built
    workers = info["workers"]
    assert len(workers) == len(plan.stages), info["text"]
    by_kind: dict[str, list] = {}
    for st in plan.stages:
        by_kind.setdefault(runner_kind(st), []).append(st)
        assert workers[st.index]["device"] == st.device
    for pre, dec in zip(by_kind["llm_prefill"], by_kind["llm_decode"], strict=True):
        assert pre.device != dec.device, (pre.device, dec.device)
        assert workers[pre.index]["pid"] != workers[dec.index]["pid"]
        # the decode worker reads the caches only the prefill worker produces
        assert {o for o in pre.outputs if "cache" in o} <= set(dec.inputs)
    for st in (*by_kind["llm_prefill"], *by_kind["llm_decode"]):
        if st.device != "cpu":  # the planned GPU is absent: the CLI says the CPU build serves
            assert (
                "fallback" in workers[st.index]["note"] and st.device in workers[st.index]["note"]
            )
    for kind in ("tool", "retrieve", "memory_load", "memory_store"):
        assert all(st.device == "cpu" for st in by_kind[kind]), kind
    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{info['metrics']}/metrics", timeout=10
    ).read()
    for st in (by_kind["llm_prefill"][0], by_kind["llm_decode"][0]):  # both phases ran
        m = re.search(
            rf'terrazzo_stage_latency_seconds_count\{{[^}}]*stage="{st.index}"[^}}]*\}} (\S+)',
            metrics.decode(),
        )
        assert m and float(m.group(1)) >= 1, st.index


def test_terrazzo_run_executes_an_agent_bundle_in_process(served, capsys) -> None:
    """``terrazzo run`` on an agent bundle runs its worker graph here (no KeyError, no servers)."""
    import json

    from terrazzo.cli import main

    result, _ = served
    assert main(["run", str(result.path), "--json", "--benchmark", "2", "--warmup", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["outputs"]["speech"]["shape"] == [1, 1600]
    assert out["outputs"]["planner"]["dtype"] == "int64"
    assert any("a100-80g" in (s["note"] or "") for s in out["stages"])
    assert out["latency_ms_p50"] > 0
