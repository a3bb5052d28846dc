"""The voice agent as a program: two independent branches and a streamed LLM → TTS edge, run in process.

Checks the streamed stage (decode with the TTS voicing each 16-token chunk as it completes)
answers what the unstreamed order would: every chunk of the speech equals the TTS model run on
that chunk of the answer; concurrent+pipelined and sequential runs agree; plan and compile
place the program the same way; conversations run at once share decode steps and model
executions (continuous batching, dynamic batching) and answer exactly as when run alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "examples" / "agents" / "voice_program.yaml"
FLEET = {"devices": {"cpu": {"count": 8}, "h100": {"count": 2}}, "pricing": {"mode": "cloud"}}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from terrazzo.pipeline import compile_agent
    from terrazzo.placement import Fleet

    out = tmp_path_factory.mktemp("voice") / "voice.tzb"
    return compile_agent(SPEC, Fleet.model_validate(FLEET), "5s", out, device_builds=False,
                         batch_sizes=(1, 4))  # fmt: skip


def test_streamed_speech_is_the_tts_of_each_answer_chunk(compiled):
    from terrazzo.bundle import open_bundle
    from terrazzo.frontend.agent_flow import to_text
    from terrazzo.runtime.agent_plan import LocalAgent, agent_serving_plan, runner_kind
    from terrazzo.runtime.agent_runners import fit_tokens

    plan = agent_serving_plan(compiled.path)
    kinds = [runner_kind(st) for st in plan.stages]
    assert "llm_decode_stream" in kinds and "llm_decode" not in kinds
    audio = np.random.default_rng(0).standard_normal((1, 1600)).astype(np.float32)
    seq = LocalAgent(plan)({"audio": audio})
    con_agent = LocalAgent(plan, concurrent=True)
    try:
        con = con_agent({"audio": audio})
    finally:
        con_agent.close()
    np.testing.assert_array_equal(seq["planner"], con["planner"])
    np.testing.assert_allclose(seq["speech"], con["speech"], rtol=1e-6, atol=1e-6)
    assert to_text(seq["screen"]) == to_text(con["screen"])
    assert to_text(con["screen"]).startswith("card[account ")
    with open_bundle(compiled.path) as b:
        tts_entry = b.agent.node("tts")
        tts = b.load_stage(tts_entry.stage)
    tokens = con["planner"]
    assert tokens.shape == (64,) and con["speech"].shape == (1, 1600 * 4)
    for c in range(4):
        want = tts({"tokens": fit_tokens(tokens[16 * c : 16 * (c + 1)], (1, 16))})
        got = con["speech"][:, 1600 * c : 1600 * (c + 1)]
        np.testing.assert_allclose(got, next(iter(want.values())), rtol=1e-5, atol=1e-6)


def test_plan_and_compile_place_the_program_the_same_way(compiled, tmp_path, capsys):
    import json

    import yaml

    from terrazzo.cli import main

    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(FLEET))
    argv = ["plan", str(SPEC), "--fleet", str(tmp_path / "fleet.yaml"), "--sla", "5s", "--json"]
    assert main(argv) == 0
    planned = json.loads(capsys.readouterr().out)
    assignment = {op: st["device"] for st in planned["stages"] for op in st["ops"]}
    assert assignment == dict(compiled.plan.assignment)
    assert assignment["crm"] == "cpu"  # tools on CPUs in both
    assert assignment["planner.prefill"] != assignment["planner.decode"]  # the P::D split in both


def test_concurrent_conversations_share_decode_steps_and_model_batches(compiled):
    from terrazzo.bundle import open_bundle
    from terrazzo.frontend.agent_flow import to_text
    from terrazzo.runtime.agent_plan import LocalAgent, agent_serving_plan

    with open_bundle(compiled.path) as b:
        assert sorted(b.agent.node("planner").decode_batch) == ["1", "4"]
        assert sorted(b.agent.node("tts").batch_stages) == ["4"]
        assert sorted(b.agent.node("stt").batch_stages) == ["4"]
    plan = agent_serving_plan(compiled.path)
    alone = LocalAgent(plan)  # batching on, one conversation at a time
    together = LocalAgent(plan, concurrent=True, max_workers=32)
    audio = [np.random.default_rng(10 + c).standard_normal((1, 1600)).astype(np.float32)
             for c in range(4)]  # fmt: skip
    try:
        want = [alone({"audio": a}) for a in audio]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda a: together({"audio": a}), audio))
        stream = next(r for r in together.runners if getattr(r, "engine", None) is not None)
        stats = stream.engine.stats()
        tts_runs = dict(stream.model.executions)
    finally:
        together.close()
        alone.close()
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(w["planner"], g["planner"])
        np.testing.assert_allclose(w["speech"], g["speech"], rtol=1e-5, atol=1e-6)
        assert to_text(w["screen"]) == to_text(g["screen"])
    assert len({tuple(w["planner"]) for w in want}) > 1  # different conversations
    # 4 x 64 tokens alone would take 4 x 63 steps; sharing steps takes far fewer
    assert stats["steps"] < 3 * 63, stats
    assert stats["per_bucket"].get("4", {}).get("steps", 0) > 0, stats
    assert tts_runs[4] > 0, tts_runs  # chunks of several conversations voiced in one execution


def test_served_conversations_at_once_answer_as_alone(compiled):
    """``terrazzo serve`` on the batched bundle, 4 stock-client conversations at once: the
    workers run the batching runners (called concurrently: decode engine, merged model calls)
    and the answers are those of the batch-1 builds run one node after another."""
    import re
    import signal
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as tc

    from terrazzo.runtime.agent_plan import LocalAgent, agent_serving_plan
    from terrazzo.runtime.plan import RunnerSpec

    def batch_one(kwargs):
        inner = kwargs.get("kwargs")
        if not isinstance(inner, dict):
            return kwargs
        inner = batch_one(inner)
        if "batching" in inner or "batched" in inner or "batch_stages" in inner:
            inner = {**inner, "batching": False}
        return {**kwargs, "kwargs": inner}

    from dataclasses import replace

    plan = agent_serving_plan(compiled.path)
    stages = tuple(replace(st, runner=RunnerSpec(st.runner.factory, batch_one(dict(st.runner.kwargs))))
                   for st in plan.stages)  # fmt: skip
    alone = LocalAgent(replace(plan, stages=stages))
    audio = [np.random.default_rng(40 + c).standard_normal((1, 1600)).astype(np.float32)
             for c in range(4)]  # fmt: skip
    want = [alone({"audio": a}) for a in audio]
    cmd = [sys.executable, "-m", "terrazzo.cli", "serve", str(compiled.path), "--port", "0",
           "--metrics-port", "0", "--timeout", "60"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []
        while not (lines and lines[-1].startswith("ready")):
            line = proc.stdout.readline()
            assert line, f"terrazzo serve exited: {proc.stderr.read()[-3000:]}"
            lines.append(line)
        text = "".join(lines)
        port = int(re.search(r"on 127\.0\.0\.1:(\d+)", text).group(1))
        model = re.search(r"serving model '([^']+)'", text).group(1)

        def infer(a):
            client = tc.InferenceServerClient(f"127.0.0.1:{port}")
            inp = tc.InferInput("audio", [1, 1600], "FP32")
            inp.set_data_from_numpy(a)
            names = ("speech", "planner", "screen")
            res = client.infer(model, [inp], outputs=[tc.InferRequestedOutput(n) for n in names],
                               client_timeout=60)  # fmt: skip
            return {n: res.as_numpy(n) for n in names}

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(infer, audio))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(w["planner"], g["planner"].reshape(-1))
        np.testing.assert_allclose(w["speech"], g["speech"], rtol=1e-5, atol=1e-6)
