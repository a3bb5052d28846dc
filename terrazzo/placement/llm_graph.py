"""Operator-level LLM graphs for placement: an LLMConfig preset → prefill and decode IR Graphs.

Planning only (no TVM build): each op carries its FLOPs, activation/KV bytes and weight bytes
for ONE sequence (``batch`` 1); ``llm_scale`` scales them by the batch it chooses. Decoder
layers are emitted with identical op signatures (``layer`` attribute), which is the symmetry
the LLM-scale planner exploits.
"""

from __future__ import annotations

from dataclasses import dataclass

from terrazzo.costmodel.llm import LLMConfig, dtype_bytes
from terrazzo.errors import PlacementError
from terrazzo.ir.graph import Graph, Op, TensorType, make_attrs

#: Ops of one decoder layer, in order (name, op_class).
LAYER_OPS: tuple[tuple[str, str], ...] = (
    ("attn_norm", "norm"),
    ("q_proj", "matmul"),
    ("k_proj", "matmul"),
    ("v_proj", "matmul"),
    ("rope", "elementwise"),
    ("attention", "matmul"),
    ("o_proj", "matmul"),
    ("attn_residual", "elementwise"),
    ("mlp_norm", "norm"),
    ("gate_proj", "matmul"),
    ("up_proj", "matmul"),
    ("silu_mul", "elementwise"),
    ("down_proj", "matmul"),
    ("mlp_residual", "elementwise"),
)
#: Ops whose output is all-reduced under Megatron tensor parallelism.
TP_ALLREDUCE_OPS = frozenset({"o_proj", "down_proj"})
_IR_DTYPE = {"fp16": "float16", "bf16": "bfloat16", "fp8": "float8", "fp4": "float8"}


@dataclass(frozen=True, slots=True)
class LLMGraphs:
    """The two phase graphs of one model: ``prefill`` (``isl`` tokens) and ``decode`` (1 token)."""

    cfg: LLMConfig
    dtype: str
    isl: int
    osl: int
    prefill: Graph
    decode: Graph

    @property
    def num_ops(self) -> int:
        return len(self.prefill.ops) + len(self.decode.ops)


def _phase_graph(cfg: LLMConfig, dtype: str, phase: str, tokens: int, ctx: int) -> Graph:
    """One phase: ``tokens`` new tokens per sequence attending over ``ctx`` tokens of context."""
    eb = dtype_bytes(dtype)
    wb = cfg.weight_bytes(dtype) / cfg.params  # bytes per weight (fp4: 0.5)
    d, kv_d, ff = cfg.d_model, cfg.kv_heads * cfg.head_dim, cfg.intermediate
    irt = _IR_DTYPE.get(dtype, "float16")
    act = TensorType((1, tokens, d), irt)
    values: dict[str, TensorType] = {"tokens": TensorType((1, tokens), "int32")}
    ops: list[Op] = []

    def add(name: str, kind: str, cls: str, inputs: tuple[str, ...], shape: tuple[int, ...],
            flops: float, read: float, params: float, **attrs: object) -> str:  # fmt: skip
        out = f"{name}.out"
        values[out] = TensorType(shape, irt)
        nbytes = values[out].nbytes
        ops.append(Op(name, kind, inputs, (out,), make_attrs({"phase": phase, **attrs}), cls,
                      int(flops), int(read), int(nbytes), int(params)))  # fmt: skip
        return out

    x = add("embed", "take", "data_movement", ("tokens",), act.shape, 0, tokens * d * eb,
            0 if phase == "decode" else 0, layer=-1)  # fmt: skip
    # the embedding table is resident but only `tokens` rows are read per step
    ops[-1] = Op(ops[-1].name, ops[-1].kind, ops[-1].inputs, ops[-1].outputs, ops[-1].attrs,
                 ops[-1].op_class, 0, tokens * d * eb, tokens * d * eb,
                 int(cfg.vocab * d * wb))  # fmt: skip
    kv_read = 2 * ctx * kv_d * eb
    for layer in range(cfg.layers):
        p = f"l{layer}."
        a = {"layer": layer}
        h = add(p + "attn_norm", "rms_norm", "norm", (x,), act.shape, 4 * tokens * d,
                tokens * d * eb, d * wb, **a)  # fmt: skip
        q = add(p + "q_proj", "matmul", "matmul", (h,), act.shape, 2 * tokens * d * d,
                tokens * d * eb, d * d * wb, **a)  # fmt: skip
        k = add(p + "k_proj", "matmul", "matmul", (h,), (1, tokens, kv_d), 2 * tokens * d * kv_d,
                tokens * d * eb, d * kv_d * wb, **a)  # fmt: skip
        v = add(p + "v_proj", "matmul", "matmul", (h,), (1, tokens, kv_d), 2 * tokens * d * kv_d,
                tokens * d * eb, d * kv_d * wb, **a)  # fmt: skip
        r = add(p + "rope", "rope", "elementwise", (q, k), act.shape, 6 * tokens * (d + kv_d),
                tokens * (d + kv_d) * eb, 0, **a)  # fmt: skip
        # causal attention: prefill sees on average ctx/2 keys per query, decode all ctx
        keys = ctx / 2 if phase == "prefill" else ctx
        att = add(p + "attention", "attention", "matmul", (r, v), act.shape,
                  4 * tokens * keys * d, tokens * d * eb + kv_read, 0, **a)  # fmt: skip
        o = add(p + "o_proj", "matmul", "matmul", (att,), act.shape, 2 * tokens * d * d,
                tokens * d * eb, d * d * wb, **a)  # fmt: skip
        x = add(p + "attn_residual", "add", "elementwise", (x, o), act.shape, tokens * d,
                2 * tokens * d * eb, 0, **a)  # fmt: skip
        h = add(p + "mlp_norm", "rms_norm", "norm", (x,), act.shape, 4 * tokens * d,
                tokens * d * eb, d * wb, **a)  # fmt: skip
        g = add(p + "gate_proj", "matmul", "matmul", (h,), (1, tokens, ff), 2 * tokens * d * ff,
                tokens * d * eb, d * ff * wb, **a)  # fmt: skip
        u = add(p + "up_proj", "matmul", "matmul", (h,), (1, tokens, ff), 2 * tokens * d * ff,
                tokens * d * eb, d * ff * wb, **a)  # fmt: skip
        s = add(p + "silu_mul", "silu_mul", "elementwise", (g, u), (1, tokens, ff),
                5 * tokens * ff, 2 * tokens * ff * eb, 0, **a)  # fmt: skip
        dn = add(p + "down_proj", "matmul", "matmul", (s,), act.shape, 2 * tokens * d * ff,
                 tokens * ff * eb, d * ff * wb, **a)  # fmt: skip
        x = add(p + "mlp_residual", "add", "elementwise", (x, dn), act.shape, tokens * d,
                2 * tokens * d * eb, 0, **a)  # fmt: skip
    h = add("final_norm", "rms_norm", "norm", (x,), act.shape, 4 * tokens * d, tokens * d * eb,
            d * wb, layer=cfg.layers)  # fmt: skip
    # only the last position's logits are needed (the next token)
    logits = add("lm_head", "matmul", "matmul", (h,), (1, 1, cfg.vocab), 2 * d * cfg.vocab,
                 d * eb, cfg.vocab * d * wb, layer=cfg.layers)  # fmt: skip
    return Graph(f"{cfg.name}.{phase}", tuple(ops), values, ("tokens",), (logits,),
                 attrs=make_attrs({"phase": phase, "tokens": tokens, "context": ctx})).verify()  # fmt: skip


def build_llm_graphs(cfg: LLMConfig, isl: int, osl: int, dtype: str = "fp16") -> LLMGraphs:
    """Prefill (``isl`` prompt tokens) and decode (one token at mean context) operator graphs.

    Raises:
        PlacementError: lengths are not positive.
    """
    if isl < 1 or osl < 1:
        raise PlacementError(f"isl and osl must be ≥ 1, found isl={isl}, osl={osl}")
    dtype_bytes(dtype)  # validates
    prefill = _phase_graph(cfg, dtype, "prefill", isl, isl)
    decode = _phase_graph(cfg, dtype, "decode", 1, isl + osl // 2)
    return LLMGraphs(cfg, dtype, isl, osl, prefill, decode)
