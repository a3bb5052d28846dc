"""The built-in agent node kinds' frontend parts: spec schema, lowering, decomposition and plan.json entry.

One ``NodeKind`` per kind, registered in ``terrazzo.frontend.kinds`` when the registry is
first used. Their cost hooks are registered by ``terrazzo.report.agent_plan``, build hooks by
``terrazzo.pipeline.agent`` and runner hooks by ``terrazzo.runtime.agent_plan``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from terrazzo.frontend.agent import (
    _LLM_BYTES,
    _abs_ref,
    _embeddings_info,
    _llm_arch,
    _model_info,
    _split_llm,
    _split_model,
)
from terrazzo.frontend.agent_schema import AgentNodeEntry, LoopEntry
from terrazzo.frontend.agent_spec import (
    InputNode,
    LLMNode,
    MemoryLoadNode,
    MemoryStoreNode,
    ModelNode,
    RetrieveNode,
    ToolNode,
)
from terrazzo.frontend.kinds import LowerContext, Lowered, NodeKind, register_kind
from terrazzo.ir import Graph, Op, TensorType

# -- plan.json entries -------------------------------------------------------------------------


class InputEntry(AgentNodeEntry):
    device: str | None = None
    shape: list[int] = [-1]
    dtype: str = "int32"


class ModelEntry(AgentNodeEntry):
    device: str
    stage: int
    batch_stages: dict[str, int] = {}  # batch size → bundle stage of the copy built for it


class PhaseEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: str
    stage: int


class LLMRunConfig(BaseModel):
    """The architecture the LLM's phases were built with (``TinyLlamaConfig`` fields)."""

    model_config = ConfigDict(extra="allow")
    prompt_len: int
    vocab_size: int


class LLMEntry(AgentNodeEntry):
    prefill: PhaseEntry
    decode: PhaseEntry
    config: LLMRunConfig
    max_new_tokens: int
    search_below: int = 128
    kv_cache_bytes: int = 0
    decode_batch: dict[str, int] = {}  # batch size → bundle stage of the batched paged decode
    kv: dict[str, Any] = {}  # the paged KV pool of those stages (block, n_blocks, dtype)

    def device_label(self) -> str:
        return f"{self.prefill.device}::{self.decode.device}"

    def served_outputs(self, loops: dict[str, LoopEntry]) -> list[tuple[str, str, tuple[int, ...]]]:
        out: list[tuple[str, str, tuple[int, ...]]] = [
            (self.name, "int64", (self.max_new_tokens,)),  # the answer's token ids
            (f"{self.name}.prompt", "int64", (-1,)),  # the prompt it read (byte tokens)
        ]
        if self.loop:
            out.append((f"{self.loop}.iterations", "int64", (1,)))
        return out


class ToolEntry(AgentNodeEntry):
    device: str
    function: str
    dtype: str | None = None


class RetrieveEntry(AgentNodeEntry):
    device: str
    embeddings: str | None = None
    top_k: int
    passages: list[str] = []
    index_b64: str = ""


class MemoryEntry(AgentNodeEntry):
    device: str
    key: str
    dtype: str | None = None


# -- lowering ----------------------------------------------------------------------------------


def _lower_input(node: InputNode, cx: LowerContext) -> Lowered:
    return Lowered({}, cx.values[cx.inputs[0]])


def _lower_llm(node: LLMNode, cx: LowerContext) -> Lowered:
    arch = _llm_arch(node, cx.base_dir, cx.where)
    osl = node.output_tokens or node.max_new_tokens
    attrs = {
        "preset": node.preset or "custom",
        "layers": arch.layers,
        "d_model": arch.d_model,
        "heads": arch.heads,
        "kv_heads": arch.kv_heads,
        "ffn_dim": arch.intermediate,
        "vocab": arch.vocab,
        "dtype": node.dtype,
        "max_new_tokens": node.max_new_tokens,
        "input_tokens": node.input_tokens,
        "output_tokens": osl,
        "prompt_tokens": node.prompt_tokens,
    }
    if node.checkpoint is not None:  # a Hugging Face directory: its weights run
        attrs["checkpoint"] = str((cx.base_dir / node.checkpoint).resolve())
    return Lowered(
        attrs,
        TensorType((-1,), "int32"),
        flops=2 * arch.params * (node.input_tokens + osl),
        param_bytes=arch.params * _LLM_BYTES[node.dtype],
    )


def _lower_model(node: ModelNode, cx: LowerContext) -> Lowered:
    info = _model_info(node, cx.base_dir, cx.where)
    attrs: dict[str, Any] = {"source": info["source"], "format": info["format"]}
    if info["format"] == "torch" and node.example_inputs:
        attrs["example_inputs"] = tuple(
            (k, tuple(v.shape), v.dtype) for k, v in node.example_inputs.items()
        )
    return Lowered(attrs, info["output"], param_bytes=info["param_bytes"])


def _lower_tool(node: ToolNode, cx: LowerContext) -> Lowered:
    attrs = {"function": _abs_ref(node.function, cx.base_dir), "latency_s": float(node.latency_s)}
    return Lowered(attrs, TensorType(tuple(node.output.shape), node.output.dtype))


def _lower_retrieve(node: RetrieveNode, cx: LowerContext) -> Lowered:
    if node.documents is not None:  # text retrieval: a faiss index built at compile time
        from terrazzo.errors import FrontendError

        path = (cx.base_dir / node.documents).resolve()
        if not path.exists():
            raise FrontendError(f"{cx.where} field 'documents': {path} does not exist")
        dim = max(1, int(np.prod([d for d in cx.values[cx.inputs[0]].shape if d > 0])))
        attrs = {"documents": str(path), "top_k": node.top_k}
        return Lowered(attrs, TensorType((node.top_k,), "string"), flops=2 * dim * 1024)
    assert node.embeddings is not None
    rows, dim, itemsize, source = _embeddings_info(node.embeddings, cx.base_dir, cx.where)
    attrs = {"embeddings": source, "rows": rows, "dim": dim, "top_k": node.top_k}
    return Lowered(
        attrs,
        TensorType((node.top_k,), "int64"),
        flops=2 * rows * dim,
        param_bytes=rows * dim * itemsize,
    )


def _lower_memory_load(node: MemoryLoadNode, cx: LowerContext) -> Lowered:
    return Lowered({"key": node.key}, TensorType(tuple(node.output.shape), node.output.dtype))


def _lower_memory_store(node: MemoryStoreNode, cx: LowerContext) -> Lowered:
    return Lowered({"key": node.key}, cx.values[cx.inputs[0]])


# -- decomposition -----------------------------------------------------------------------------


def _decompose_llm(
    op: Op, graph: Graph, values: dict[str, TensorType], models: bool
) -> tuple[list[Op], Any]:
    return _split_llm(op, values), None


def _decompose_model(
    op: Op, graph: Graph, values: dict[str, TensorType], models: bool
) -> tuple[list[Op], Any]:
    return _split_model(op, graph, values) if models else ([op], None)


BUILTIN_KINDS = (
    NodeKind("input", "input.query", InputNode, InputEntry, _lower_input, op_class="io",
             cpu_only=True),
    NodeKind("model", "model.call", ModelNode, ModelEntry, _lower_model,
             decompose=_decompose_model),
    NodeKind("llm", "llm.call", LLMNode, LLMEntry, _lower_llm, phases=("prefill", "decode"),
             sub_kinds=("llm.prefill", "llm.kv_transfer", "llm.decode"), decompose=_decompose_llm),
    NodeKind("tool", "tool.invoke", ToolNode, ToolEntry, _lower_tool, op_class="tool",
             cpu_only=True),
    NodeKind("retrieve", "retrieve.topk", RetrieveNode, RetrieveEntry, _lower_retrieve,
             op_class="retrieve", cpu_only=True),
    NodeKind("memory.load", "memory.load", MemoryLoadNode, MemoryEntry, _lower_memory_load,
             op_class="memory", needs_input=False, cpu_only=True),
    NodeKind("memory.store", "memory.store", MemoryStoreNode, MemoryEntry, _lower_memory_store,
             op_class="memory", cpu_only=True),
)  # fmt: skip

for _kind in BUILTIN_KINDS:
    register_kind(_kind)

import terrazzo.frontend.agent_flow  # noqa: E402,F401  (branch, join, map)
import terrazzo.frontend.agent_tools  # noqa: E402,F401  (http)
