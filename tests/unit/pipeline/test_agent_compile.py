"""Agent compiler and runtime pieces that need no TVM build: P::D placement, plan unrolling, glue and CPU runners."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terrazzo.errors import CodegenError, ServingError
from terrazzo.runtime import agent_runners as ar

ROOT = Path(__file__).resolve().parents[3]
SPEC = ROOT / "examples" / "agents" / "voice_agent.yaml"
FLEET = {
    "devices": {"cpu": {"count": 8}, "h100": {"count": 2}, "a100-80g": {"count": 2}},
    "pricing": {"mode": "cloud"},
}


@pytest.fixture(scope="module")
def voice_graph():
    from terrazzo.frontend.agent import load_agent

    return load_agent(SPEC)


# -- placement ---------------------------------------------------------------------------------
def test_pd_split_puts_prefill_and_decode_on_different_classes(voice_graph):
    from terrazzo.pipeline.agent import place_agent
    from terrazzo.placement import SLA, Fleet

    fleet, sla = Fleet.model_validate(FLEET), SLA(latency_s=2.0)
    together, _ = place_agent(voice_graph, fleet, sla, pd_split=False)
    split, notes = place_agent(voice_graph, fleet, sla, pd_split=True)
    a = split.assignment
    assert a["planner.prefill"] != a["planner.decode"]
    assert together.assignment["planner.prefill"] == together.assignment["planner.decode"]
    assert split.usd_per_hour >= together.usd_per_hour - 1e-9  # the split is a constraint
    assert any("P::D split forced" in n for n in notes)
    assert any("costed as llama3-8b" in n for n in notes)
    for task in ("search", "docs", "history", "remember"):
        assert a[task] == "cpu"
    assert split.latency_s <= 2.0


TWO_LLMS = """
name: two_llms
nodes:
  - {name: prompt, type: input, shape: [1, 16], dtype: int64}
  - {name: draft, type: llm, preset: tiny-llama, dtype: fp16, max_new_tokens: 16, input_tokens: 32, output_tokens: 16}
  - {name: answer, type: llm, preset: tiny-llama, dtype: fp16, max_new_tokens: 16, input_tokens: 32, output_tokens: 16}
  - {name: text, type: output}
edges: [prompt -> draft, draft -> answer, answer -> text]
"""


def test_forced_splits_of_several_llms_agree_with_the_table(tmp_path):
    """Each LLM's split note names the pair the compile table shows (the plan's assignment):
    a later node's split search must not undo an earlier node's split (it did: the table said
    ``draft a100-80g::a100-80g`` while the note said ``cpu::a100-80g``)."""
    import re

    from terrazzo.frontend.agent import load_agent
    from terrazzo.frontend.agent_kinds import LLMEntry, PhaseEntry
    from terrazzo.pipeline.agent import place_agent
    from terrazzo.placement import SLA, Fleet

    spec = tmp_path / "two_llms.yaml"
    spec.write_text(TWO_LLMS)
    fleet = Fleet.model_validate(FLEET)
    plan, notes = place_agent(load_agent(spec), fleet, SLA(latency_s=5.0))
    forced = {}
    for n in notes:
        m = re.match(r"(\w+): P::D split forced .*: (\S+)::(\S+) at", n)
        if m:
            forced[m.group(1)] = f"{m.group(2)}::{m.group(3)}"
    assert set(forced) == {"draft", "answer"}, notes
    for name, pair in forced.items():
        a = plan.assignment
        entry = LLMEntry(name=name, kind="llm.call", prefill=PhaseEntry(device=a[f"{name}.prefill"], stage=0),
                         decode=PhaseEntry(device=a[f"{name}.decode"], stage=1),
                         config={"prompt_len": 32, "vocab_size": 256}, max_new_tokens=16)  # fmt: skip
        assert entry.device_label() == pair, (name, notes)
        assert a[f"{name}.prefill"] != a[f"{name}.decode"]


def test_cost_preset_replaces_test_size_llm_only(voice_graph):
    from terrazzo.pipeline.agent import _costed_graph

    g, notes = _costed_graph(voice_graph, "auto")
    llm = next(o for o in g.ops if o.kind == "llm.call")
    assert llm.attr("preset") == "llama3-8b" and llm.attr("d_model") == 4096 and len(notes) == 1
    same, none = _costed_graph(voice_graph, None)
    assert same is voice_graph and none == []
    with pytest.raises(CodegenError, match="cost_preset 'gpt-9'"):
        _costed_graph(voice_graph, "gpt-9")


def test_deployment_size_llm_is_refused_for_building(voice_graph):
    from terrazzo.pipeline.agent import _check_runnable, _costed_graph, llm_config_of

    tiny = next(o for o in voice_graph.ops if o.kind == "llm.call")
    _check_runnable(tiny)
    cfg = llm_config_of(tiny)
    assert (cfg.d_model, cfg.n_layers, cfg.vocab_size) == (64, 2, 256)
    assert cfg.max_len == cfg.prompt_len + tiny.attr("max_new_tokens")
    big = next(o for o in _costed_graph(voice_graph, "llama3-8b")[0].ops if o.kind == "llm.call")
    with pytest.raises(CodegenError, match="tiny-llama"):
        _check_runnable(big)


# -- serving plan (unrolled loop) ---------------------------------------------------------------
def _agent_json(k: int) -> tuple[dict, dict]:
    from terrazzo.bundle import StageInfo, TensorSpec

    def info(i: int, ins, outs, reason=None):
        return StageInfo(
            i,
            "cpu",
            {"kind": "llvm"},
            reason,
            tuple(TensorSpec(*t) for t in ins),
            tuple(TensorSpec(*t) for t in outs),
        )

    infos = {
        0: info(0, [("audio", "float32", (1, 1600))], [("stt", "float32", (1, 16, 256))]),
        1: info(1, [("tokens", "int64", (1, 32)), ("length", "int64", (1,))], []),
        2: info(2, [], [], "planned on a100-80g"),
        3: info(3, [("tokens", "int64", (1, 16))], [("tts", "float32", (1, 1600))]),
    }
    cfg = {"prompt_len": 32, "vocab_size": 256}
    nodes = [
        {"name": "audio", "kind": "input.query", "inputs": ["audio_arg"], "loop": None},
        {
            "name": "stt",
            "kind": "model.call",
            "inputs": ["audio"],
            "loop": None,
            "device": "cpu",
            "stage": 0,
        },
        {
            "name": "history",
            "kind": "memory.load",
            "inputs": [],
            "loop": None,
            "device": "cpu",
            "key": "s",
        },
        {
            "name": "planner",
            "kind": "llm.call",
            "inputs": ["stt", "history"],
            "loop": "research",
            "prefill": {"device": "h100", "stage": 1},
            "decode": {"device": "a100-80g", "stage": 2},
            "config": cfg,
            "max_new_tokens": 8,
            "search_below": 128,
        },
        {
            "name": "search",
            "kind": "tool.invoke",
            "inputs": ["planner"],
            "loop": "research",
            "device": "cpu",
            "function": "m:f",
        },
        {
            "name": "docs",
            "kind": "retrieve.topk",
            "inputs": ["search"],
            "loop": "research",
            "device": "cpu",
            "embeddings": "synthetic:8x4:seed=0",
            "top_k": 2,
        },
        {
            "name": "remember",
            "kind": "memory.store",
            "inputs": ["docs"],
            "loop": None,
            "device": "cpu",
            "key": "s",
        },
        {
            "name": "tts",
            "kind": "model.call",
            "inputs": ["remember"],
            "loop": None,
            "device": "cpu",
            "stage": 3,
        },
    ]
    agent = {
        "name": "voice",
        "nodes": nodes,
        "outputs": {"speech": "tts"},
        "loops": {"research": {"from": "docs", "to": "planner", "max_iterations": k}},
    }
    return agent, infos


@pytest.mark.parametrize("k", [1, 3])
def test_loop_is_unrolled_into_a_valid_stage_dag(k, tmp_path):
    from terrazzo.runtime.agent_plan import _PlanBuilder, runner_kind
    from terrazzo.runtime.plan import ServingPlan
    from terrazzo.runtime.tensors import TensorSpec

    agent, infos = _agent_json(k)
    b = _PlanBuilder(agent, infos, "/x.tzb", None, str(tmp_path))
    stages = b.build()
    plan = ServingPlan(
        "voice",
        (TensorSpec("audio", "FP32", (1, 1600)),),
        (TensorSpec("speech", "FP32", (1, 1600)), *b.extra_outputs),
        stages,
    )
    plan.verify()
    kinds = [runner_kind(s) for s in stages]
    assert kinds.count("llm_prefill") == kinds.count("llm_decode") == kinds.count("tool") == k
    assert len(stages) == 4 + 4 * k
    pre = [s for s in stages if runner_kind(s) == "llm_prefill"]
    dec = [s for s in stages if runner_kind(s) == "llm_decode"]
    for i, (p, d) in enumerate(zip(pre, dec, strict=True)):
        assert (p.device, d.device) == ("h100", "a100-80g")
        assert d.fallback_reason == "planned on a100-80g"
        suffix = "" if i == k - 1 else f"__it{i}"
        assert f"planner.k_cache{suffix}" in p.outputs and f"planner.k_cache{suffix}" in d.inputs
        if i > 0:  # later iterations are gated by the head's flag and read the fed-back docs
            assert f"research.active{suffix}" in d.inputs
            assert f"docs__it{i - 1}" in p.inputs
    tts = stages[-1]
    assert tts.outputs == ("tts", "speech") and tts.inputs == ("remember",)
    names = {t.name for t in plan.outputs}
    assert {"speech", "planner", "research.iterations"} <= names


def test_llm_inside_a_loop_must_be_its_head(tmp_path):
    from terrazzo.runtime.agent_plan import _PlanBuilder

    agent, infos = _agent_json(2)
    agent["loops"]["research"]["to"] = "search"
    with pytest.raises(ServingError, match="not its head"):
        _PlanBuilder(agent, infos, "/x.tzb", None, str(tmp_path)).build()


# -- glue ----------------------------------------------------------------------------------------
def test_to_tokens_from_logits_and_integers():
    logits = np.zeros((1, 3, 256), np.float32)
    logits[0, [0, 1, 2], [7, 300 % 256, 255]] = 1.0
    np.testing.assert_array_equal(ar.to_tokens(logits), [7, 44, 255])
    np.testing.assert_array_equal(ar.to_tokens(np.array([[1, 257, -1]], np.int32)), [1, 1, 255])
    with pytest.raises(ServingError, match="trailing axis of 256"):
        ar.to_tokens(np.zeros((1, 32), np.float32))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 255), max_size=20), max_size=4), st.integers(1, 40))
def test_build_prompt_keeps_the_last_tokens(parts, prompt_len):
    arrays = [np.array(p, np.int64) for p in parts]
    flat = [t for p in parts for t in p]
    got = ar.build_prompt(arrays, prompt_len)
    assert got.dtype == np.int64 and 1 <= got.shape[0] <= prompt_len
    assert got.tolist() == (flat[-prompt_len:] or [0])
    padded = ar.fit_tokens(got, (1, prompt_len))
    assert padded.shape == (1, prompt_len) and padded[0, : got.shape[0]].tolist() == got.tolist()
    assert not padded[0, got.shape[0] :].any()


# -- CPU runners -----------------------------------------------------------------------------------
def test_retrieve_is_cosine_top_k_and_passes_through_when_inactive():
    from terrazzo.frontend.agent import load_embeddings

    run = ar.retrieve("synthetic:64x32:seed=0", 4, "q", "docs", active="on", prev="old")
    m = load_embeddings("synthetic:64x32:seed=0")
    q = np.random.default_rng(3).standard_normal(32).astype(np.float32)
    got = run({"q": q, "on": np.array([1]), "old": np.array([9, 9, 9, 9])})["docs"]
    np.testing.assert_array_equal(got, np.argsort(-(m @ q))[:4])
    off = run({"q": q, "on": np.array([0]), "old": np.array([9, 9, 9, 9])})["docs"]
    np.testing.assert_array_equal(off, [9, 9, 9, 9])
    with pytest.raises(ServingError, match="query has 3 dims"):
        run({"q": np.ones(3, np.float32), "on": np.array([1]), "old": off})


def test_tool_runs_the_example_search_function():
    run = ar.tool(f"{ROOT / 'examples/agents/voice_tools.py'}:web_search", "answer", "search")
    y = run({"answer": np.arange(40, dtype=np.int64)})["search"]
    assert y.shape == (32,) and y.dtype == np.float32
    assert abs(float(np.linalg.norm(y)) - 1.0) < 1e-5
    with pytest.raises(ServingError, match="cannot be loaded"):
        ar.tool("no_such_module_xyz:fn", "a", "b")


def test_memory_store_then_load_shares_state_through_files(tmp_path):
    load = ar.memory_load(str(tmp_path), "session", "history", dtype="int32")
    store = ar.memory_store(str(tmp_path), "session", "docs", "remember")
    first = load({})["history"]
    assert first.shape == (0,) and first.dtype == np.int32
    out = store({"docs": np.array([3, 1, 4], np.int64)})
    np.testing.assert_array_equal(out["remember"], [3, 1, 4])
    again = ar.memory_load(str(tmp_path), "session", "history")({})["history"]  # another "worker"
    assert again.dtype == np.int32 and again.tolist() == [3, 1, 4]
    assert ar.memory_load(str(tmp_path), "other", "h")({})["h"].shape == (0,)


@pytest.mark.slow
def test_cli_compiles_agent_spec_with_device_builds(tmp_path):
    import json
    import subprocess
    import sys

    import yaml

    from terrazzo.bundle import open_bundle
    from terrazzo.runtime.agent_plan import _cuda_present, agent_serving_plan

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(FLEET))
    out = tmp_path / "voice.tzb"
    cmd = [sys.executable, "-m", "terrazzo.cli", "compile", str(SPEC), "--fleet", str(fleet),
           "--sla", "2s", "-o", str(out), "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["kind"] == "agent" and summary["bundle"] == str(out)
    pre_dev, dec_dev = summary["devices"]["planner"].split("::")
    assert pre_dev != dec_dev
    with open_bundle(out) as b:
        stages = {s.ops[0]: s for s in b.stages}
        agent = b.plan_json["agent"]
    assert set(stages) == {"stt", "planner.prefill", "planner.decode", "tts"}
    gpu = next(s for s in stages.values() if s.device != "cpu")
    assert gpu.target["kind"] == "cuda" and {"host", "device", "kernels"} <= set(gpu.files)
    assert all(s.target["kind"] == "llvm" for s in stages.values() if s.device == "cpu")
    rows = [w for w in agent["workers"] if w["device"] == gpu.device]
    assert len(rows) == 3 and all(w["fallback_target"]["kind"] == "llvm" for w in rows)
    plan = agent_serving_plan(out)
    reasons = [s.fallback_reason for s in plan.stages if s.device == gpu.device]
    assert len(reasons) == 3  # one per unrolled iteration
    if not _cuda_present():
        assert all(r and "host-CPU build serves" in r for r in reasons)


def test_batch_sizes_flag_parses_and_refuses_in_one_line():
    from terrazzo.commands._agent import batch_sizes_arg
    from terrazzo.errors import FrontendError

    assert batch_sizes_arg("8,1, 2,2") == (1, 2, 8)
    assert batch_sizes_arg("") == ()
    with pytest.raises(
        FrontendError, match="--batch-sizes '0,4': each batch size must be in 1..256"
    ):
        batch_sizes_arg("0,4")
    with pytest.raises(FrontendError, match="comma-separated integers"):
        batch_sizes_arg("two")
