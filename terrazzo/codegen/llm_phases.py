"""Codegen for LLM calls: a Llama-architecture decoder compiled by TVM into two phases.

``prefill`` turns a (padded) prompt into the first token's logits and a KV cache;
``decode`` advances one token given the cache. Both have static shapes so TVM builds them
ahead of time: the cache is ``[layers, kv_heads, max_len, head_dim]`` per K and V, and the
current position arrives as an int64 tensor, so a step writes its K/V row with a mask
(``where(arange == pos)``) instead of dynamic slicing. That keeps every kernel static and
lets the prefill and decode phases live on different workers (device classes) with the
cache travelling between them as two plain tensors — the paper's P::D split.

The model is our own module (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU)
with random weights, or, with ``checkpoint`` set, the weights of a Hugging Face Llama / Qwen2 /
Mistral directory (``terrazzo.frontend.hf``), streamed tensor by tensor from its safetensors
files into the module before export; there are no downloads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from terrazzo.costmodel.llm import LLMConfig


@dataclass(frozen=True, slots=True)
class TinyLlamaConfig:
    """What a decoder is built with: its architecture plus build settings (lengths, rope, seed).

    The architecture is the cost model's :class:`terrazzo.costmodel.llm.LLMConfig` (``arch``;
    build one from it with :meth:`from_arch`). The fields stay flat because they are the
    ``config`` that ``plan.json`` records and the runtime rebuilds this class from. Defaults are
    small enough to build and run in seconds on 2 cores.
    """

    vocab_size: int = 256  # byte-level tokens
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 128
    max_len: int = 64
    prompt_len: int = 32  # prompts are right-padded to this length
    rope_theta: float = 10000.0
    seed: int = 0
    # Checkpoint builds (terrazzo.frontend.hf.read_hf_dir → build_settings); defaults keep
    # the random-weight model exactly as before.
    attn_head_dim: int = 0  # 0: d_model // n_heads
    rms_eps: float = 1e-5
    qkv_bias: bool = False
    tie_embeddings: bool = False
    fused_proj: bool = False  # Phi-3: qkv_proj and gate_up_proj in the checkpoint
    rope_type: str = "default"  # default | linear | llama3
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max: int = 8192
    checkpoint: str = ""  # a Hugging Face directory whose weights replace the random ones
    # GPT-2 / Phi-1/2 (LayerNorm, GELU MLP with biases, learned or partial rotary positions)
    family: str = "llama"  # llama | gpt2 | phi: how checkpoint tensors map onto the module
    norm: str = "rms"  # rms | layer
    mlp: str = "swiglu"  # swiglu | gelu (gelu_new: the tanh approximation)
    o_bias: bool = False  # biases on the attention output and MLP projections
    lm_head_bias: bool = False
    parallel: bool = False  # Phi: h + attn(ln(h)) + mlp(ln(h))
    positions: str = "rope"  # rope | learned (GPT-2's wpe)
    rotary_dim: int = 0  # 0: the whole head; Phi rotates the first rotary_dim dims only

    @staticmethod
    def from_arch(arch: LLMConfig, prompt_len: int = 32, max_len: int = 64) -> TinyLlamaConfig:
        """The build config of ``arch`` for prompts of ``prompt_len`` and ``max_len`` tokens in all."""
        return TinyLlamaConfig(
            vocab_size=arch.vocab,
            d_model=arch.d_model,
            n_layers=arch.layers,
            n_heads=arch.heads,
            n_kv_heads=arch.kv_heads,
            d_ff=arch.intermediate,
            max_len=max_len,
            prompt_len=prompt_len,
        )

    @property
    def arch(self) -> LLMConfig:
        """The architecture, as the cost model prices it."""
        from terrazzo.costmodel import llm  # lazily: runtime workers import this module

        return llm.LLMConfig.llama(
            "tiny-llama",
            self.n_layers,
            self.d_model,
            self.n_heads,
            self.n_kv_heads,
            self.d_ff,
            self.vocab_size,
        )

    @property
    def head_dim(self) -> int:
        return self.attn_head_dim or self.d_model // self.n_heads

    @property
    def cache_shape(self) -> tuple[int, int, int, int]:
        return (self.n_layers, self.n_kv_heads, self.max_len, self.head_dim)

    def kv_cache_bytes(self) -> int:
        """K and V for every layer at max_len in fp32 (the cost model's formula)."""
        from terrazzo.costmodel import llm

        return llm.kv_cache_bytes(self.arch, self.max_len, 1, "fp32")


def _build_torch_modules(cfg: TinyLlamaConfig) -> tuple[Any, Any]:
    """Two torch modules sharing one set of random weights: prefill and one decode step."""
    import torch
    from torch import nn

    torch.manual_seed(cfg.seed)
    hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    group = nh // nkv

    class RMSNorm(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(1.0 + 0.1 * torch.randn(d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_eps) * self.weight

    def norm(d: int) -> nn.Module:
        return RMSNorm(d) if cfg.norm == "rms" else nn.LayerNorm(d, eps=cfg.rms_eps)

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn_norm = norm(cfg.d_model)
            self.q = nn.Linear(cfg.d_model, nh * hd, bias=cfg.qkv_bias)
            self.k = nn.Linear(cfg.d_model, nkv * hd, bias=cfg.qkv_bias)
            self.v = nn.Linear(cfg.d_model, nkv * hd, bias=cfg.qkv_bias)
            self.o = nn.Linear(nh * hd, cfg.d_model, bias=cfg.o_bias)
            self.mlp_norm = norm(cfg.d_model)
            self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.o_bias)
            self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
            self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.o_bias)

        def mlp(self, x: torch.Tensor) -> torch.Tensor:
            if cfg.mlp == "gelu":  # fc1 = gate, fc2 = down
                return self.down(torch.nn.functional.gelu(self.gate(x), approximate="tanh"))
            return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))

        def finish(self, h: torch.Tensor, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
            """The residual after attention (``att``, before ``o``) of the normed ``x``."""
            a = self.o(att)
            if cfg.parallel:
                return h + a + self.mlp(x)
            h = h + a
            return h + self.mlp(self.mlp_norm(h))

    class Core(nn.Module):
        cos: torch.Tensor  # registered buffers, [max_len, hd/2]
        sin: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.layers = nn.ModuleList([Layer() for _ in range(cfg.n_layers)])
            self.norm = norm(cfg.d_model)
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias)
            if cfg.positions == "learned":
                self.wpe = nn.Embedding(cfg.max_len, cfg.d_model)
            inv = _rope_inv_freq(cfg)
            ang = torch.arange(cfg.max_len, dtype=torch.float32)[:, None] * inv[None, :]
            self.register_buffer("cos", torch.cos(ang), persistent=False)
            self.register_buffer("sin", torch.sin(ang), persistent=False)

        def embed_at(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            h = self.embed(tokens)
            return h + self.wpe(pos) if cfg.positions == "learned" else h

        @staticmethod
        def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
            # x: [heads, T, hd]; rotate pairs (even, odd) as in Llama's rotate_half layout,
            # on the first rotary_dim dims (Phi) or none (learned positions)
            if cfg.positions == "learned":
                return x
            rot = cfg.rotary_dim or hd
            x1, x2, rest = x[..., : rot // 2], x[..., rot // 2 : rot], x[..., rot:]
            parts = [x1 * cos - x2 * sin, x1 * sin + x2 * cos]
            return torch.cat(parts + ([rest] if rot < hd else []), dim=-1)

        def step(
            self,
            h: torch.Tensor,  # [T, d]
            positions: torch.Tensor,  # [T] int64
            k_cache: torch.Tensor,  # [L, kv, S, hd]
            v_cache: torch.Tensor,
            key_mask: torch.Tensor,  # [T, S] bool: which cached keys each query may see
            write: torch.Tensor,  # [T, S] float one-hot: cache row each new token writes
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            cos, sin = self.cos[positions], self.sin[positions]  # [T, hd/2]
            new_k, new_v = [], []
            neg = torch.finfo(torch.float32).min
            for li, layer in enumerate(cast("Iterable[Layer]", self.layers)):
                x = layer.attn_norm(h)
                t = x.shape[0]
                q = layer.q(x).reshape(t, nh, hd).transpose(0, 1)
                k = layer.k(x).reshape(t, nkv, hd).transpose(0, 1)
                v = layer.v(x).reshape(t, nkv, hd).transpose(0, 1)
                q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
                # scatter new rows into the static cache: cache*(1-any) + write^T @ new
                keep = 1.0 - write.sum(0)[None, :, None]  # [1, S, 1]
                kc = k_cache[li] * keep + torch.matmul(write.t()[None], k)  # [kv, S, hd]
                vc = v_cache[li] * keep + torch.matmul(write.t()[None], v)
                new_k.append(kc)
                new_v.append(vc)
                kr = kc.repeat_interleave(group, dim=0)  # [nh, S, hd]
                vr = vc.repeat_interleave(group, dim=0)
                scores = torch.matmul(q, kr.transpose(1, 2)) / math.sqrt(hd)  # [nh, T, S]
                scores = torch.where(key_mask[None], scores, torch.full_like(scores, neg))
                att = torch.matmul(torch.softmax(scores, dim=-1), vr)  # [nh, T, hd]
                h = layer.finish(h, x, att.transpose(0, 1).reshape(t, nh * hd))
            return self.norm(h), torch.stack(new_k), torch.stack(new_v)

    core = Core().eval()
    if cfg.checkpoint:
        _load_checkpoint(core, cfg)
    s = cfg.max_len

    class Prefill(nn.Module):
        """tokens [1, P] int64, length [1] int64 → logits of the last real token, K, V."""

        def __init__(self) -> None:
            super().__init__()
            self.core = core

        def forward(self, tokens: torch.Tensor, length: torch.Tensor):  # type: ignore[no-untyped-def]
            p = tokens.shape[1]
            pos = torch.arange(p, dtype=torch.int64)
            keys = torch.arange(s, dtype=torch.int64)
            valid_q = pos < length  # padded queries write nothing
            key_mask = (keys[None, :] <= pos[:, None]) & (keys[None, :] < length)
            write = ((keys[None, :] == pos[:, None]) & valid_q[:, None]).to(torch.float32)
            zeros = torch.zeros((cfg.n_layers, nkv, s, hd), dtype=torch.float32)
            h = self.core.embed_at(tokens[0], pos)
            h, k, v = self.core.step(h, pos, zeros, zeros, key_mask, write)
            last = (pos == (length - 1)).to(torch.float32)  # [P] one-hot of the last real token
            logits = self.core.lm_head(torch.matmul(last[None], h))  # [1, vocab]
            return logits, k, v

    class Decode(nn.Module):
        """token [1, 1] int64, pos [1] int64, K, V → logits [1, vocab], K', V'."""

        def __init__(self) -> None:
            super().__init__()
            self.core = core

        def forward(self, token, pos, k_cache, v_cache):  # type: ignore[no-untyped-def]
            keys = torch.arange(s, dtype=torch.int64)
            key_mask = (keys <= pos)[None, :]
            write = (keys == pos).to(torch.float32)[None, :]
            h = self.core.embed_at(token[0], pos)
            h, k, v = self.core.step(h, pos, k_cache, v_cache, key_mask, write)
            return self.core.lm_head(h), k, v

    return Prefill().eval(), Decode().eval()


def _decode_batch_module(core: Any, cfg: TinyLlamaConfig, kv: KVLayout) -> Any:
    """One decode step for ``B`` sequences over a paged KV pool (see :class:`KVLayout`).

    ``tokens [B]``, ``pos [B]`` (each sequence's position = its cached tokens), ``k_pool``,
    ``v_pool [n_blocks, L, kv, block, hd]`` and ``block_table [B, max_len/block]`` (the pool
    blocks holding each sequence's cache, in order) → ``logits [B, vocab]`` and the step's new
    K/V rows ``[B, L, kv, hd]``, which the engine writes into the pool (nothing else moves).
    Each sequence attends to its cached keys below ``pos`` and to itself.
    """
    import torch
    from torch import nn

    hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    group = nh // nkv
    s = cfg.max_len

    class DecodeBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.core = core

        def forward(self, tokens, pos, k_pool, v_pool, block_table):  # type: ignore[no-untyped-def]
            c = self.core
            b = tokens.shape[0]
            mb = block_table.shape[1]

            def gather(pool: torch.Tensor) -> torch.Tensor:
                g = pool[block_table]  # [B, MB, L, kv, BS, hd]
                g = g.permute(0, 2, 3, 1, 4, 5).reshape(b, cfg.n_layers, nkv, mb * kv.block, hd)
                return g.to(torch.float32)

            kall, vall = gather(k_pool), gather(v_pool)
            keys = torch.arange(s, dtype=torch.int64)
            mask = keys[None, :] < pos[:, None]  # [B, S]: cached rows only
            neg = torch.finfo(torch.float32).min
            cos, sin = c.cos[pos][:, None, :], c.sin[pos][:, None, :]  # [B, 1, hd/2]
            h = c.embed_at(tokens, pos)  # [B, d]
            new_k, new_v = [], []
            for li, layer in enumerate(cast("Iterable[Any]", c.layers)):
                x = layer.attn_norm(h)
                q = layer.q(x).reshape(b, nh, hd)
                k = layer.k(x).reshape(b, nkv, hd)
                v = layer.v(x).reshape(b, nkv, hd)
                q, k = c.rope(q, cos, sin), c.rope(k, cos, sin)
                new_k.append(k)
                new_v.append(v)
                # grouped-query attention without copying K/V per head: [B, kv, group, ...]
                qg = q.reshape(b, nkv, group, hd)
                sc = torch.matmul(qg, kall[:, li].transpose(2, 3))  # [B, kv, group, S]
                sc = torch.where(mask[:, None, None, :], sc, torch.full_like(sc, neg))
                ss = (qg * k[:, :, None, :]).sum(-1, keepdim=True)  # [B, kv, group, 1]
                p = torch.softmax(torch.cat([sc, ss], dim=-1) / math.sqrt(hd), dim=-1)
                att = torch.matmul(p[..., :s], vall[:, li]) + p[..., s:] * v[:, :, None, :]
                h = layer.finish(h, x, att.reshape(b, nh * hd))
            logits = c.lm_head(c.norm(h))
            return logits, torch.stack(new_k, 1), torch.stack(new_v, 1)

    return DecodeBatch().eval()


@dataclass(frozen=True, slots=True)
class KVLayout:
    """The paged KV pool the batched decode phases read: ``n_blocks`` blocks of ``block``
    tokens each (block 0 is the engine's scratch block for padded batch slots), stored as
    ``dtype`` (``float16`` halves the pool; compute stays fp32)."""

    block: int = 16
    n_blocks: int = 64
    dtype: str = "float32"

    def pool_shape(self, cfg: TinyLlamaConfig) -> tuple[int, int, int, int, int]:
        return (self.n_blocks, cfg.n_layers, cfg.n_kv_heads, self.block, cfg.head_dim)

    def blocks_per_seq(self, cfg: TinyLlamaConfig) -> int:
        return -(-cfg.max_len // self.block)


def decode_batch_inputs(cfg: TinyLlamaConfig, kv: KVLayout, batch: int) -> dict[str, np.ndarray]:
    """Example inputs of the batched decode phase for ``batch`` sequences."""
    pool = np.zeros(kv.pool_shape(cfg), kv.dtype)
    return {
        "tokens": np.ones((batch,), np.int64),
        "pos": np.full((batch,), 1, np.int64),
        "k_pool": pool,
        "v_pool": pool.copy(),
        "block_table": np.zeros((batch, kv.blocks_per_seq(cfg)), np.int64),
    }


DECODE_BATCH_OUTPUTS = ("logits", "k_new", "v_new")


def _rope_inv_freq(cfg: TinyLlamaConfig) -> Any:
    """Rotary inverse frequencies as transformers computes them (default, linear, llama3)."""
    import torch

    hd = cfg.rotary_dim or cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    if cfg.rope_type == "linear":
        return inv / cfg.rope_factor
    if cfg.rope_type == "llama3":
        low_wl = cfg.rope_original_max / cfg.rope_low_freq_factor
        high_wl = cfg.rope_original_max / cfg.rope_high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wl, inv / cfg.rope_factor, inv)
        smooth = (cfg.rope_original_max / wavelen - cfg.rope_low_freq_factor) / (
            cfg.rope_high_freq_factor - cfg.rope_low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
        medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        return torch.where(medium, smoothed, scaled)
    if cfg.rope_type != "default":
        from terrazzo.errors import CodegenError

        raise CodegenError(f"rope_type {cfg.rope_type!r} is not supported")
    return inv


def _checkpoint_targets(core: Any, cfg: TinyLlamaConfig) -> dict[str, tuple[list[Any], bool]]:
    """Checkpoint tensor name → (module parameters it fills, split in order along rows;
    whether it is stored transposed, as GPT-2's Conv1D is)."""
    t: dict[str, tuple[list[Any], bool]] = {}
    if cfg.family == "gpt2":
        t["transformer.wte.weight"] = ([core.embed.weight], False)
        t["transformer.wpe.weight"] = ([core.wpe.weight], False)
        t["transformer.ln_f.weight"] = ([core.norm.weight], False)
        t["transformer.ln_f.bias"] = ([core.norm.bias], False)
        t["lm_head.weight"] = ([core.lm_head.weight], False)  # untied checkpoints only
        for i, ly in enumerate(core.layers):
            p = f"transformer.h.{i}."
            for n, m in (("ln_1", ly.attn_norm), ("ln_2", ly.mlp_norm)):
                t[p + n + ".weight"], t[p + n + ".bias"] = ([m.weight], False), ([m.bias], False)
            t[p + "attn.c_attn.weight"] = ([ly.q.weight, ly.k.weight, ly.v.weight], True)
            t[p + "attn.c_attn.bias"] = ([ly.q.bias, ly.k.bias, ly.v.bias], False)
            for n, m in (("attn.c_proj", ly.o), ("mlp.c_fc", ly.gate), ("mlp.c_proj", ly.down)):
                t[p + n + ".weight"], t[p + n + ".bias"] = ([m.weight], True), ([m.bias], False)
        return t
    if cfg.family == "phi":
        t["model.embed_tokens.weight"] = ([core.embed.weight], False)
        t["model.final_layernorm.weight"] = ([core.norm.weight], False)
        t["model.final_layernorm.bias"] = ([core.norm.bias], False)
        t["lm_head.weight"], t["lm_head.bias"] = (
            ([core.lm_head.weight], False),
            ([core.lm_head.bias], False),
        )
        for i, ly in enumerate(core.layers):
            p = f"model.layers.{i}."
            pairs = (("input_layernorm", ly.attn_norm), ("self_attn.q_proj", ly.q),
                     ("self_attn.k_proj", ly.k), ("self_attn.v_proj", ly.v),
                     ("self_attn.dense", ly.o), ("mlp.fc1", ly.gate), ("mlp.fc2", ly.down))  # fmt: skip
            for n, m in pairs:
                t[p + n + ".weight"], t[p + n + ".bias"] = ([m.weight], False), ([m.bias], False)
        return t
    t["model.embed_tokens.weight"] = ([core.embed.weight], False)
    t["model.norm.weight"] = ([core.norm.weight], False)
    t["lm_head.weight"] = ([core.lm_head.weight], False)
    for i, ly in enumerate(core.layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = ([ly.attn_norm.weight], False)
        t[p + "post_attention_layernorm.weight"] = ([ly.mlp_norm.weight], False)
        for x, mod in (("q", ly.q), ("k", ly.k), ("v", ly.v), ("o", ly.o)):
            t[p + f"self_attn.{x}_proj.weight"] = ([mod.weight], False)
            if cfg.qkv_bias and x != "o":
                t[p + f"self_attn.{x}_proj.bias"] = ([mod.bias], False)
        for x, mod in (("gate", ly.gate), ("up", ly.up), ("down", ly.down)):
            t[p + f"mlp.{x}_proj.weight"] = ([mod.weight], False)
        # fused (Phi-3): rows split in order q|k|v and gate|up
        t[p + "self_attn.qkv_proj.weight"] = ([ly.q.weight, ly.k.weight, ly.v.weight], False)
        t[p + "mlp.gate_up_proj.weight"] = ([ly.gate.weight, ly.up.weight], False)
    return t


def _load_checkpoint(core: Any, cfg: TinyLlamaConfig) -> None:
    """Copy a Hugging Face checkpoint's tensors into ``core``, streamed one tensor at a time."""
    import torch

    from terrazzo.errors import CodegenError
    from terrazzo.frontend.hf import expected_weights, iter_tensors

    settings = {"n_layers": cfg.n_layers, "qkv_bias": cfg.qkv_bias, "family": cfg.family,
                "tie_embeddings": cfg.tie_embeddings, "fused_proj": cfg.fused_proj}  # fmt: skip
    targets = _checkpoint_targets(core, cfg)
    with torch.no_grad():
        for name, t in iter_tensors(cfg.checkpoint, expected_weights(settings)):
            parts, transposed = targets[name]
            t = t.to(torch.float32)
            if transposed:
                t = t.t()
            if name.endswith("wpe.weight"):  # learned positions: the compiled context's rows
                t = t[: parts[0].shape[0]]
            want = [sum(int(p.shape[0]) for p in parts), *parts[0].shape[1:]]
            if list(t.shape) != want:
                raise CodegenError(
                    f"{cfg.checkpoint}: weight tensor {name!r} has shape {list(t.shape)}; "
                    f"config.json implies {want}"
                )
            rows = 0
            for part in parts:
                part.copy_(t[rows : rows + part.shape[0]])
                rows += part.shape[0]
        if cfg.tie_embeddings:
            core.lm_head.weight.copy_(core.embed.weight)


def example_inputs(cfg: TinyLlamaConfig) -> dict[str, dict[str, np.ndarray]]:
    """Inputs with the phase signatures (used for export and for random test data)."""
    rng = np.random.default_rng(cfg.seed)
    cache = np.zeros(cfg.cache_shape, np.float32)
    return {
        "prefill": {
            "tokens": rng.integers(0, cfg.vocab_size, (1, cfg.prompt_len)).astype(np.int64),
            "length": np.array([cfg.prompt_len // 2], np.int64),
        },
        "decode": {
            "token": np.array([[1]], np.int64),
            "pos": np.array([cfg.prompt_len // 2], np.int64),
            "k_cache": cache,
            "v_cache": cache.copy(),
        },
    }


@dataclass(frozen=True, slots=True)
class CompiledPhase:
    """One phase built by TVM: call with numpy arrays in signature order."""

    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    vm: Any = None

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tvm

        dev = tvm.cpu()
        args = [tvm.runtime.tensor(np.asarray(inputs[n], order="C"), dev) for n in self.input_names]
        out = self.vm["main"](*args)
        arrays = [o.numpy() for o in out] if not hasattr(out, "numpy") else [out.numpy()]
        return dict(zip(self.output_names, arrays, strict=True))


PHASE_OUTPUTS = {
    "prefill": ("logits", "k_cache", "v_cache"),
    "decode": ("logits", "k_cache", "v_cache"),
}


def export_relax(
    cfg: TinyLlamaConfig, decode_batches: tuple[int, ...] = (), kv: KVLayout | None = None
) -> dict[str, Any]:
    """torch.export each phase and import it into a Relax IRModule (weights as constants).

    With ``decode_batches``, also the batched paged decode phase at each batch size
    (``decode_b{B}``, see :func:`_decode_batch_module`), all sharing one set of weights.
    """
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    prefill, decode = _build_torch_modules(cfg)
    ex: dict[str, dict[str, np.ndarray]] = dict(example_inputs(cfg))
    todo: list[tuple[str, Any]] = [("prefill", prefill), ("decode", decode)]
    if decode_batches:
        kv = kv or KVLayout()
        batch_mod = _decode_batch_module(prefill.core, cfg, kv)
        for b in decode_batches:
            ex[f"decode_b{b}"] = decode_batch_inputs(cfg, kv, b)
            todo.append((f"decode_b{b}", batch_mod))
    mods = {}
    for name, module in todo:
        args = tuple(torch.from_numpy(a) for a in ex[name].values())
        with torch.no_grad():
            ep = torch.export.export(module, args)
        mods[name] = from_exported_program(ep, keep_params_as_input=False)
    return mods


def build_phases(cfg: TinyLlamaConfig, target: Any = None) -> dict[str, CompiledPhase]:
    """Compile prefill and decode for ``target`` (default: this CPU) and load them in a VM."""
    import tvm
    from tvm import relax

    target = target or tvm.target.Target({"kind": "llvm"})
    ex = example_inputs(cfg)
    phases = {}
    for name, mod in export_relax(cfg).items():
        exe = tvm.compile(mod, target=target)
        vm = relax.VirtualMachine(exe, tvm.cpu())
        phases[name] = CompiledPhase(name, tuple(ex[name]), PHASE_OUTPUTS[name], vm)
    return phases


def greedy_generate(
    phases: dict[str, Any], prompt: np.ndarray, max_new_tokens: int, cfg: TinyLlamaConfig
) -> np.ndarray:
    """Greedy decoding: one prefill, then ``max_new_tokens - 1`` decode steps; returns token ids.

    ``phases`` maps ``prefill``/``decode`` to callables over dicts of arrays (a CompiledPhase,
    the torch reference, or a remote worker), so the same loop runs everywhere.
    """
    prompt = np.asarray(prompt, np.int64).reshape(-1)
    n = int(prompt.shape[0])
    if not 0 < n <= cfg.prompt_len:
        raise ValueError(f"prompt has {n} tokens; expected 1..{cfg.prompt_len}")
    if n + max_new_tokens > cfg.max_len:
        raise ValueError(
            f"prompt ({n}) + max_new_tokens ({max_new_tokens}) exceeds max_len {cfg.max_len}"
        )
    padded = np.zeros((1, cfg.prompt_len), np.int64)
    padded[0, :n] = prompt
    state = phases["prefill"]({"tokens": padded, "length": np.array([n], np.int64)})
    return decode_loop(phases["decode"], state, n, max_new_tokens)


def decode_loop(
    decode: Any, state: dict[str, np.ndarray], prompt_len: int, max_new_tokens: int
) -> np.ndarray:
    """Run decode steps from a prefill result (``logits``, ``k_cache``, ``v_cache``)."""
    tokens = [int(np.argmax(state["logits"][0]))]
    k, v = state["k_cache"], state["v_cache"]
    for i in range(max_new_tokens - 1):
        step = decode(
            {
                "token": np.array([[tokens[-1]]], np.int64),
                "pos": np.array([prompt_len + i], np.int64),
                "k_cache": k,
                "v_cache": v,
            }
        )
        k, v = step["k_cache"], step["v_cache"]
        tokens.append(int(np.argmax(step["logits"][0])))
    return np.array(tokens, np.int64)


def torch_reference(cfg: TinyLlamaConfig) -> dict[str, Any]:
    """The same phases run in torch eager, for differential tests."""
    import torch

    prefill, decode = _build_torch_modules(cfg)

    def wrap(name: str, module: Any, inputs_order: tuple[str, ...]) -> Any:
        def call(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            with torch.no_grad():
                out = module(*(torch.from_numpy(np.asarray(inputs[n])) for n in inputs_order))
            return dict(zip(PHASE_OUTPUTS[name], (o.numpy() for o in out), strict=True))

        return call

    ex = example_inputs(cfg)
    return {
        "prefill": wrap("prefill", prefill, tuple(ex["prefill"])),
        "decode": wrap("decode", decode, tuple(ex["decode"])),
    }


def torch_batch_reference(
    cfg: TinyLlamaConfig, kv: KVLayout, batches: tuple[int, ...]
) -> dict[int, Any]:
    """The batched paged decode phase in torch eager, per batch size (engine tests)."""
    import torch

    prefill, _ = _build_torch_modules(cfg)
    module = _decode_batch_module(prefill.core, cfg, kv)
    order = tuple(decode_batch_inputs(cfg, kv, 1))

    def call(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = module(*(torch.from_numpy(np.asarray(inputs[n])) for n in order))
        return dict(zip(DECODE_BATCH_OUTPUTS, (o.numpy() for o in out), strict=True))

    return dict.fromkeys(batches, call)
