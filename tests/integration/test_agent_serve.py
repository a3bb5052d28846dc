"""The voice agent end to end: compiled to a .tzb, served, and queried with the stock tritonclient.

Checks that serving answers what the same agent computes in-process, that the LLM's prefill and
decode ran in different worker processes on different planned device classes (the KV cache
crossing between them as gRPC tensors), and that the served LLM answer equals greedy decoding
with the torch reference model for the same prompt.
"""

from __future__ import annotations

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


def _audio(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 1600)).astype(np.float32)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from terrazzo.codegen.agent import compile_agent
    from terrazzo.placement import Fleet
    from terrazzo.runtime import serve
    from terrazzo.runtime.agent_plan import agent_serving_plan

    out = tmp_path_factory.mktemp("agent") / "voice.tzb"
    # no GPU here: the GPU-planned stages' own builds are covered by a slow unit test
    result = compile_agent(SPEC, Fleet.model_validate(FLEET), "2s", out, device_builds=False)
    plan = agent_serving_plan(result.path)
    server = serve(plan, default_timeout_s=60.0)
    try:
        yield result, plan, server
    finally:
        server.stop(drain_timeout_s=5)


def _infer(port: int, model: str, audio: np.ndarray) -> dict[str, np.ndarray]:
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    inp = tc.InferInput("audio", [1, 1600], "FP32")
    inp.set_data_from_numpy(audio)
    outs = [tc.InferRequestedOutput(n) for n in ("speech", "planner", "research.iterations")]
    res = client.infer(model, [inp], outputs=outs, client_timeout=60)
    return {n: res.as_numpy(n) for n in ("speech", "planner", "research.iterations")}


def test_stock_client_matches_in_process_agent_and_torch(served):
    from terrazzo.codegen.llm_phases import TinyLlamaConfig, greedy_generate, torch_reference
    from terrazzo.runtime.agent_plan import LocalAgent, agent_serving_plan

    result, plan, server = served
    local = LocalAgent(agent_serving_plan(result.path))  # its own (empty) memory store
    node = next(n for n in _agent_json(result.path)["nodes"] if n["kind"] == "llm.call")
    cfg = TinyLlamaConfig(**node["config"])
    ref = torch_reference(cfg)
    iterations = []
    for seed in SEEDS:  # same request order on both sides: memory carries state between requests
        got = _infer(server.port, plan.model_name, _audio(seed))
        env = local({"audio": _audio(seed)})
        assert got["planner"].dtype == np.int64 and got["planner"].shape == (
            node["max_new_tokens"],
        )
        np.testing.assert_array_equal(got["planner"], env["planner"])
        np.testing.assert_array_equal(got["research.iterations"], env["research.iterations"])
        np.testing.assert_allclose(got["speech"], env["speech"], rtol=1e-5, atol=1e-6)
        k = int(env["research.iterations"][0])
        iterations.append(k)
        last = "planner.prompt" if k == 3 else f"planner.prompt__it{k - 1}"
        prompt = env[last]
        assert prompt.size > 0
        expected = greedy_generate(ref, prompt, node["max_new_tokens"], cfg)
        np.testing.assert_array_equal(got["planner"], expected)
    assert max(iterations) > 1, f"no request took the search loop: {iterations}"
    assert min(iterations) == 1, f"every request looped: {iterations}"


def test_prefill_and_decode_in_different_workers_and_classes(served):
    from terrazzo.runtime.agent_plan import runner_kind

    _, plan, server = served
    _infer(server.port, plan.model_name, _audio(9))
    rows = {r["stage"]: r for r in server.workers()}
    by_kind: dict[str, list] = {}
    for st in plan.stages:
        by_kind.setdefault(runner_kind(st), []).append(st)
    for pre, dec in zip(by_kind["llm_prefill"], by_kind["llm_decode"], strict=True):
        assert pre.device != dec.device, (pre.device, dec.device)
        assert rows[pre.index]["handle"].pid != rows[dec.index]["handle"].pid
        # the cache the decode worker reads is produced by the prefill worker only
        assert set(pre.outputs) & set(dec.inputs) >= {o for o in pre.outputs if "cache" in o}
    dec0 = by_kind["llm_decode"][0]
    assert dec0.fallback_reason and dec0.device in dec0.fallback_reason
    for kind in ("tool", "retrieve", "memory_load", "memory_store"):
        assert all(st.device == "cpu" for st in by_kind[kind]), kind
    # both phases ran (the first iteration always does), each in its own worker
    reg = server.metrics.registry
    for st in (by_kind["llm_prefill"][0], dec0):
        n = reg.get_sample_value(
            "terrazzo_stage_latency_seconds_count",
            {"model": plan.model_name, "stage": str(st.index), "device": st.device},
        )
        assert n and n >= 1, (st.index, n)


def _agent_json(path):
    from terrazzo.bundle import open_bundle

    with open_bundle(path) as b:
        return b.plan_json["agent"]
