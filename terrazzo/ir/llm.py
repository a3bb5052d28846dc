"""One description of a decoder-only transformer, shared by every stage that needs its shape.

The frontend records it on ``llm.*`` ops, the cost model prices it, the LLM build
(``codegen.llm_phases``) builds weights of this shape, and reports describe it. It lives in the IR
layer because both the frontend and the cost model (independent siblings) read it.

KV cache = 2 · layers · d_model · (kv_heads / heads) · tokens · batch · bytes (arXiv 2507.19635).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from terrazzo.errors import CostModelError

DTYPE_BYTES: Mapping[str, int] = MappingProxyType({"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1})
# FP4 (NVFP4 / MXFP4) stores weights in half a byte; the KV cache and the activations that
# cross the TP all-reduce stay FP8, as in the MLPerf FP4 submissions (weights-only FP4).
WEIGHT_BYTES: Mapping[str, float] = MappingProxyType({**DTYPE_BYTES, "fp4": 0.5})
_KV_DTYPE: Mapping[str, str] = MappingProxyType({"fp4": "fp8"})


@dataclass(frozen=True, slots=True)
class LLMConfig:
    """A decoder-only transformer: shape and parameter count."""

    name: str
    layers: int
    d_model: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    params: int

    def __post_init__(self) -> None:
        for f in ("layers", "d_model", "heads", "kv_heads", "intermediate", "vocab", "params"):
            if getattr(self, f) <= 0:
                raise CostModelError(
                    f"LLMConfig {self.name!r}: {f} must be > 0, found {getattr(self, f)!r}"
                )
        if self.heads % self.kv_heads:
            raise CostModelError(
                f"LLMConfig {self.name!r}: heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})"
            )

    @staticmethod
    def llama(
        name: str,
        layers: int,
        d_model: int,
        heads: int,
        kv_heads: int,
        intermediate: int,
        vocab: int,
    ) -> LLMConfig:
        """A Llama-style model (gated MLP, untied embeddings) with its parameter count derived."""
        kv = kv_heads * (d_model // heads)
        per_layer = (
            2 * d_model * d_model + 2 * d_model * kv + 3 * d_model * intermediate + 2 * d_model
        )
        params = layers * per_layer + 2 * vocab * d_model + d_model
        return LLMConfig(name, layers, d_model, heads, kv_heads, intermediate, vocab, params)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    def weight_bytes(self, dtype: str = "fp16") -> int:
        """Bytes of all weights at ``dtype`` (fp4: half a byte per parameter)."""
        if dtype in WEIGHT_BYTES and dtype not in DTYPE_BYTES:
            return math.ceil(self.params * WEIGHT_BYTES[dtype])
        return self.params * dtype_bytes(dtype)

    def kv_bytes_per_token(self, dtype: str = "fp16") -> int:
        """KV cache bytes per token of one sequence."""
        return kv_cache_bytes(self, 1, 1, dtype)


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of the KV cache and activations at ``dtype`` (fp4 keeps them in fp8)."""
    try:
        return DTYPE_BYTES[_KV_DTYPE.get(dtype, dtype)]
    except KeyError:
        raise CostModelError(
            f"unknown LLM dtype {dtype!r}; expected one of {', '.join(WEIGHT_BYTES)}"
        ) from None


def kv_cache_bytes(cfg: LLMConfig, tokens: int, batch: int = 1, dtype: str = "fp16") -> int:
    """KV cache size: 2 · layers · d_model · (kv_heads / heads) · tokens · batch · bytes."""
    if tokens < 0 or batch < 0:
        raise CostModelError(f"tokens and batch must be ≥ 0, found tokens={tokens}, batch={batch}")
    return (
        2
        * cfg.layers
        * cfg.d_model
        * cfg.kv_heads
        * tokens
        * batch
        * dtype_bytes(dtype)
        // cfg.heads
    )
