"""Agent specs: YAML and builder → agent-level ir.Graph, schema errors, loops, decomposition of LLM calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from terrazzo.errors import FrontendError
from terrazzo.frontend.agent import (
    AgentBuilder,
    decompose,
    kv_bytes_per_token,
    llm_config_from_hf,
    load_agent,
    load_embeddings,
    resolve_callable,
)
from terrazzo.frontend.agent_spec import LLM_PRESETS

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "agents" / "voice_agent.yaml"

SIMPLE = """
name: qa
nodes:
  - {name: query, type: input}
  - {name: history, type: memory.load, key: s}
  - {name: answer, type: llm, preset: llama3-8b, dtype: fp8, max_new_tokens: 512, input_tokens: 4096, output_tokens: 512}
  - {name: search, type: tool, function: "numpy:ravel", latency_s: 0.1}
  - {name: save, type: memory.store, key: s}
  - {name: reply, type: output}
edges: ["query -> answer", "history -> answer", "answer -> search", "search -> save", "save -> reply"]
loops:
  - {name: research, from: search, to: answer, max_iterations: 4, expected_iterations: 2}
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.yaml"
    p.write_text(text)
    return p


def test_yaml_lowers_to_agent_graph(tmp_path: Path) -> None:
    g = load_agent(_write(tmp_path, SIMPLE))
    assert g.level == "agent"
    assert [o.kind for o in g.ops] == [
        "input.query", "memory.load", "llm.call", "tool.invoke", "memory.store",
    ]  # fmt: skip
    assert g.outputs == ("save",)
    answer = g.op("answer")
    assert answer.inputs == ("query", "history")
    # Loop bounds land on the body ops only.
    assert answer.attr("loop") == "research" and answer.attr("loop_max_iterations") == 4
    assert g.op("search").attr("loop_expected_iterations") == 2.0
    assert g.op("save").attr("loop") is None
    # Llama 3 8B has ~8.03 B parameters; FP8 weights are one byte each.
    assert 8.0e9 < answer.param_bytes < 8.1e9
    assert answer.flops == 2 * llm_config_from_hf(LLM_PRESETS["llama3-8b"], "t").params * (
        4096 + 512
    )


def test_llama3_kv_cache_per_token() -> None:
    # 2 · 32 layers · 8 kv heads · 128 head_dim · 2 bytes = 131072 bytes/token (128 KiB) for 8B FP16.
    arch = llm_config_from_hf(LLM_PRESETS["llama3-8b"], "t")
    assert kv_bytes_per_token(arch, "fp16") == arch.kv_bytes_per_token("fp16") == 131072
    assert kv_bytes_per_token(arch, "int8") == 65536  # agent dtypes include int8
    arch70 = llm_config_from_hf(LLM_PRESETS["llama3-70b"], "t")
    assert kv_bytes_per_token(arch70, "fp16") == 2 * 80 * 8 * 128 * 2
    assert 70.0e9 < arch70.params < 71.0e9


def test_llm_config_from_hf_refuses_bad_sizes() -> None:
    bad = dict(LLM_PRESETS["llama3-8b"], num_hidden_layers=0)
    with pytest.raises(FrontendError, match="num_hidden_layers=0 must be > 0"):
        llm_config_from_hf(bad, "spec.yaml node 'llm'")
    with pytest.raises(FrontendError, match="must divide evenly"):
        llm_config_from_hf(dict(LLM_PRESETS["llama3-8b"], num_key_value_heads=5), "w")


def test_decompose_splits_llm_into_phases(tmp_path: Path) -> None:
    g = decompose(load_agent(_write(tmp_path, SIMPLE)))
    kinds = [o.kind for o in g.ops]
    assert kinds[2:5] == ["llm.prefill", "llm.kv_transfer", "llm.decode"]
    pre, xfer, dec = g.ops[2:5]
    assert (
        pre.op_class == "llm_prefill"
        and dec.op_class == "llm_decode"
        and xfer.op_class == "kv_transfer"
    )
    # KV of a 4096-token FP8 prompt: 2 · 32 · 8 · 128 · 1 byte · 4096.
    assert g.values["answer.kv"].nbytes == 2 * 32 * 8 * 128 * 4096 == xfer.bytes_read
    assert dec.outputs == ("answer",)  # consumers are unchanged
    assert g.op("search").inputs == ("answer",)
    assert pre.attr("loop") == "research" and xfer.attr("loop") == "research"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("nodes: [{name: q, type: input}, {name: x, type: llm, preset: gpt5}, {name: o, type: output}]",
         "node 'x'"),
        ("nodes: [{name: q, type: input}, {name: x, type: llm, preset: llama3-8b, dtype: fp4}, {name: o, type: output}]",
         "dtype 'fp4'"),
        ("nodes: [{name: q, type: input}, {name: t, type: tool, function: nocolon}, {name: o, type: output}]",
         "node 't' field 'function'"),
        ("nodes: [{name: q, type: input}, {name: t, type: magic}, {name: o, type: output}]",
         "unknown node type"),
        ("nodes: [{name: q, type: input}, {name: o, type: output}]\nedges: ['q -> z']",
         "unknown node 'z'"),
        ("nodes: [{name: q, type: input}, {name: o, type: output}]\nloops: [{name: l, from: q, to: o, max_iterations: 2, expected_iterations: 3}]",
         "expected_iterations=3"),
    ],
)  # fmt: skip
def test_schema_errors_name_node_and_field(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(FrontendError, match=None) as e:
        load_agent(_write(tmp_path, text))
    assert needle in str(e.value), str(e.value)


def test_cycle_in_edges_points_to_loops(tmp_path: Path) -> None:
    text = SIMPLE.replace('"save -> reply"]', '"save -> reply", "search -> answer"]')
    with pytest.raises(FrontendError, match="loops"):
        load_agent(_write(tmp_path, text))


def test_builder_matches_yaml(tmp_path: Path) -> None:
    b = AgentBuilder("qa")
    q = b.input("query")
    h = b.memory_load("history", key="s")
    a = b.llm("answer", [q, h], preset="llama3-8b", dtype="fp8", max_new_tokens=512,
              input_tokens=4096, output_tokens=512)  # fmt: skip
    s = b.tool("search", [a], "numpy:ravel", latency_s=0.1)
    v = b.memory_store("save", s, key="s")
    b.output("reply", v)
    b.loop("research", start=a, end=s, max_iterations=4, expected_iterations=2)
    g = b.build()
    y = load_agent(_write(tmp_path, SIMPLE))
    assert g.ops == y.ops and g.outputs == y.outputs


def test_retrieve_reads_npy_header(tmp_path: Path) -> None:
    np.save(tmp_path / "docs.npy", np.ones((10, 8), dtype=np.float32))
    b = AgentBuilder("r", base_dir=tmp_path)
    q = b.input("q", shape=(8,), dtype="float32")
    r = b.retrieve("docs", [q], "docs.npy", top_k=3)
    b.output("o", r)
    op = b.build().op("docs")
    assert (op.attr("rows"), op.attr("dim"), op.param_bytes) == (10, 8, 320)
    m = load_embeddings(str(op.attr("embeddings")))
    assert m.shape == (10, 8) and np.allclose(np.linalg.norm(m, axis=1), 1.0)


def test_resolve_callable_errors() -> None:
    assert resolve_callable("numpy:ravel") is np.ravel
    with pytest.raises(FrontendError, match="no callable 'nope'"):
        resolve_callable("numpy:nope")
    with pytest.raises(FrontendError, match="does not exist"):
        resolve_callable("missing_file.py:f", base_dir="/nonexistent")


def test_voice_agent_example_loads() -> None:
    g = load_agent(EXAMPLE)
    kinds = {o.name: o.kind for o in g.ops}
    assert (
        kinds["stt"] == "model.call"
        and kinds["planner"] == "llm.call"
        and kinds["docs"] == "retrieve.topk"
    )
    assert g.values["stt"].shape == (1, 16, 256)
    assert g.op("planner").attr("loop_max_iterations") == 3
    fn = resolve_callable(str(g.op("search").attr("function")))
    q = fn(np.arange(10))
    assert q.shape == (32,) and abs(float(np.linalg.norm(q)) - 1.0) < 1e-5


@pytest.mark.slow
def test_decompose_voice_agent_models_into_operators() -> None:
    g = decompose(load_agent(EXAMPLE))
    stt_ops = [o for o in g.ops if o.attr("agent_node") == "stt"]
    assert stt_ops and all(o.name.startswith("stt.") for o in stt_ops)
    assert any(o.op_class == "matmul" for o in stt_ops)
    assert stt_ops[-1].outputs == ("stt",)  # the node's value keeps its name for consumers
    assert [o.kind for o in g.ops if o.attr("agent_node") == "planner"] == [
        "llm.prefill", "llm.kv_transfer", "llm.decode",
    ]  # fmt: skip
    assert set(g.relax_mod) == {"stt", "tts"}
