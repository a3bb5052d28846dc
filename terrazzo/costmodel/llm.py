"""LLM phase model: prefill (compute-bound), decode (bandwidth-bound), KV cache, TTFT/TBT, tensor parallelism.

Placement prices ``llm_prefill``/``llm_decode`` ops and P::D device pairs with these
functions. Formulas follow arXiv 2507.19635: KV cache =
2 · layers · d_model · (kv_heads / heads) · tokens · batch · bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from terrazzo.costmodel.catalog import DeviceSpec
from terrazzo.costmodel.efficiency import (
    DEFAULT_LAUNCH_OVERHEAD_S,
    LINK_LATENCY_S,
    ONESHOT_ALLREDUCE_LATENCY_S,
    ONESHOT_ALLREDUCE_MIN_SCALEUP_BW,
    Efficiency,
    default_efficiency,
)
from terrazzo.costmodel.transfer import link_between
from terrazzo.errors import CostModelError

# The LLM description lives in the IR layer (the frontend reads it too); re-exported here.
from terrazzo.ir.llm import (  # noqa: F401
    DTYPE_BYTES,
    WEIGHT_BYTES,
    LLMConfig,
    dtype_bytes,
    kv_cache_bytes,
)

# Fraction of device memory usable for weights + KV cache (the rest: activations, workspace).
MEM_UTILISATION = 0.90


PRESETS: Mapping[str, LLMConfig] = MappingProxyType(
    {
        # Meta Llama 3 model card / config.json (hf meta-llama/Meta-Llama-3-8B, -70B).
        "llama3-8b": LLMConfig("llama3-8b", 32, 4096, 32, 8, 14336, 128256, 8_030_261_248),
        "llama3-70b": LLMConfig("llama3-70b", 80, 8192, 64, 8, 28672, 128256, 70_553_706_496),
        # Same shapes as Llama 3 (hf meta-llama/Llama-3.1-8B, -70B config.json).
        "llama3.1-8b": LLMConfig("llama3.1-8b", 32, 4096, 32, 8, 14336, 128256, 8_030_261_248),
        "llama3.1-70b": LLMConfig("llama3.1-70b", 80, 8192, 64, 8, 28672, 128256, 70_553_706_496),
        # hf meta-llama/Llama-3.1-405B config.json: 126 layers, d 16384, 128 heads, 8 KV heads.
        "llama3.1-405b": LLMConfig.llama("llama3.1-405b", 126, 16384, 128, 8, 53248, 128256),
        # hf meta-llama/Llama-2-70b-hf config.json (the MLPerf Inference LLM since v4.0).
        "llama2-70b": LLMConfig.llama("llama2-70b", 80, 8192, 64, 8, 28672, 32000),
        "llama2-7b": LLMConfig.llama("llama2-7b", 32, 4096, 32, 32, 11008, 32000),
    }
)


def get_preset(name: str) -> LLMConfig:
    """A preset config by name; raises CostModelError naming the known presets."""
    try:
        return PRESETS[name]
    except KeyError:
        raise CostModelError(f"unknown LLM preset {name!r}; known: {', '.join(PRESETS)}") from None


def prefill_flops(cfg: LLMConfig, tokens: int, batch: int = 1) -> float:
    """FLOPs of a prefill: 2·params per token plus causal attention (QKᵀ and AV, half masked)."""
    return (
        2.0 * cfg.params * tokens * batch + 2.0 * cfg.layers * tokens * tokens * cfg.d_model * batch
    )


def decode_step_flops(cfg: LLMConfig, context_tokens: int, batch: int = 1) -> float:
    """FLOPs of one decode step: 2·params per sequence plus attention over the context."""
    return 2.0 * cfg.params * batch + 4.0 * cfg.layers * context_tokens * cfg.d_model * batch


def _check_tp(dev: DeviceSpec, tp: int) -> None:
    if tp < 1:
        raise CostModelError(f"tensor parallel degree must be ≥ 1, found {tp}")
    if tp > dev.chassis_size:
        raise CostModelError(
            f"tensor parallel degree {tp} exceeds {dev.name}'s chassis_size {dev.chassis_size}"
        )


def allreduce_latency_s(nbytes: float, tp: int, dev: DeviceSpec) -> float:
    """All-reduce of ``nbytes`` over ``tp`` devices on the scale-up link, as NCCL would pick it.

    Ring: 2(p−1)/p · n / bw + 2(p−1)·α (bandwidth-optimal, for large messages). Tree
    (NCCL's double binary tree): 2·n / bw + 2·⌈log2 p⌉·α (latency-optimal, for the small
    per-token activations of decode). On NVIDIA GPUs with NVLink, LLM servers use a one-shot
    custom all-reduce for small messages: every GPU reads its ``p−1`` peers' buffers and
    reduces locally, ``(p−1)·n / bw + α₁`` with α₁ = ``ONESHOT_ALLREDUCE_LATENCY_S`` (measured,
    see ``efficiency``). The model takes the fastest available algorithm, as the libraries do
    by message size. α is the scale-up link's latency per ring/tree step.
    """
    if tp <= 1:
        return 0.0
    bw = dev.scaleup_bw_bytes_per_s
    alpha = LINK_LATENCY_S["scaleup"]
    ring = 2.0 * (tp - 1) / tp * nbytes / bw + 2.0 * (tp - 1) * alpha
    tree = 2.0 * nbytes / bw + 2.0 * math.ceil(math.log2(tp)) * alpha
    best = min(ring, tree)
    if dev.vendor == "nvidia" and dev.kind == "gpu" and bw >= ONESHOT_ALLREDUCE_MIN_SCALEUP_BW:
        best = min(best, (tp - 1) * nbytes / bw + ONESHOT_ALLREDUCE_LATENCY_S)
    return best


def _tp_comm_s(
    cfg: LLMConfig, dev: DeviceSpec, tokens: int, batch: int, dtype: str, tp: int
) -> float:
    # Megatron-style TP: two all-reduces of the activations (tokens × d_model) per layer.
    act = tokens * batch * cfg.d_model * dtype_bytes(dtype)
    return 2 * cfg.layers * allreduce_latency_s(act, tp, dev)


def prefill_latency_s(
    cfg: LLMConfig,
    dev: DeviceSpec,
    tokens: int,
    batch: int = 1,
    dtype: str = "fp16",
    tp: int = 1,
    efficiency: Efficiency | None = None,
) -> float:
    """Prefill time of ``batch`` prompts of ``tokens`` tokens on ``tp`` devices of class ``dev``.

    Roofline over compute (FLOPs / tp) and memory (weights + KV written, / tp), plus TP
    all-reduces and one kernel launch per layer.
    """
    _check_tp(dev, tp)
    eff = efficiency or default_efficiency(dev.kind, "llm_prefill")
    compute_s = prefill_flops(cfg, tokens, batch) / tp / (dev.peak_flops_per_s(dtype) * eff.compute)
    nbytes = (cfg.weight_bytes(dtype) + kv_cache_bytes(cfg, tokens, batch, dtype)) / tp
    memory_s = nbytes / (dev.mem_bw_bytes_per_s * eff.memory)
    launch_s = cfg.layers * DEFAULT_LAUNCH_OVERHEAD_S[dev.kind]
    return max(compute_s, memory_s) + _tp_comm_s(cfg, dev, tokens, batch, dtype, tp) + launch_s


def decode_step_latency_s(
    cfg: LLMConfig,
    dev: DeviceSpec,
    context_tokens: int,
    batch: int = 1,
    dtype: str = "fp16",
    tp: int = 1,
    efficiency: Efficiency | None = None,
) -> float:
    """One decode step (one token for each of ``batch`` sequences at ``context_tokens`` of context).

    Bandwidth-bound: reads all weights and the whole KV cache once per step.
    """
    _check_tp(dev, tp)
    eff = efficiency or default_efficiency(dev.kind, "llm_decode")
    compute_s = (
        decode_step_flops(cfg, context_tokens, batch)
        / tp
        / (dev.peak_flops_per_s(dtype) * eff.compute)
    )
    nbytes = (cfg.weight_bytes(dtype) + kv_cache_bytes(cfg, context_tokens, batch, dtype)) / tp
    memory_s = nbytes / (dev.mem_bw_bytes_per_s * eff.memory)
    launch_s = cfg.layers * DEFAULT_LAUNCH_OVERHEAD_S[dev.kind]
    return max(compute_s, memory_s) + _tp_comm_s(cfg, dev, 1, batch, dtype, tp) + launch_s


def memory_bytes_per_device(
    cfg: LLMConfig, context_tokens: int, batch: int, dtype: str = "fp16", tp: int = 1
) -> int:
    """Weights and KV cache held by each of ``tp`` devices."""
    return math.ceil(
        (cfg.weight_bytes(dtype) + kv_cache_bytes(cfg, context_tokens, batch, dtype)) / tp
    )


def fits(
    cfg: LLMConfig,
    dev: DeviceSpec,
    context_tokens: int,
    batch: int,
    dtype: str = "fp16",
    tp: int = 1,
) -> bool:
    """Whether weights + KV cache fit in ``MEM_UTILISATION`` of each device's memory."""
    return (
        memory_bytes_per_device(cfg, context_tokens, batch, dtype, tp)
        <= dev.mem_bytes * MEM_UTILISATION
    )


def min_tp(
    cfg: LLMConfig, dev: DeviceSpec, context_tokens: int, batch: int = 1, dtype: str = "fp16"
) -> int:
    """Smallest power-of-two TP degree (≤ chassis) at which the model fits.

    Raises:
        CostModelError: it fits no TP degree inside one chassis.
    """
    tp = 1
    while tp <= dev.chassis_size:
        if fits(cfg, dev, context_tokens, batch, dtype, tp):
            return tp
        tp *= 2
    need = memory_bytes_per_device(cfg, context_tokens, batch, dtype, 1)
    raise CostModelError(
        f"{cfg.name} {dtype} needs {need / 1e9:.1f} GB (weights + KV for {context_tokens} tokens x "
        f"batch {batch}); it does not fit {dev.name} even at tp={dev.chassis_size} "
        f"({dev.chassis_size} x {dev.mem_bytes / 1e9:.0f} GB x {MEM_UTILISATION:.0%})"
    )


def devices_that_fit(
    cfg: LLMConfig,
    devices: Mapping[str, DeviceSpec],
    context_tokens: int,
    batch: int = 1,
    dtype: str = "fp16",
) -> dict[str, int]:
    """Device name → smallest TP degree that fits, over ``devices``.

    Raises:
        CostModelError: the model fits no device at all (names the model, dtype and size).
    """
    out: dict[str, int] = {}
    for name, dev in devices.items():
        try:
            out[name] = min_tp(cfg, dev, context_tokens, batch, dtype)
        except CostModelError:
            continue
    if not out:
        need = memory_bytes_per_device(cfg, context_tokens, batch, dtype, 1)
        raise CostModelError(
            f"{cfg.name} {dtype} ({need / 1e9:.1f} GB with KV cache) fits no device in the catalog, "
            "even with tensor parallelism across a full chassis"
        )
    return out


def max_batch(
    cfg: LLMConfig,
    dev: DeviceSpec,
    input_tokens: int,
    output_tokens: int,
    dtype: str = "fp16",
    tp: int = 1,
    ttft_s: float | None = None,
    tbt_s: float | None = None,
    limit: int = 4096,
) -> int:
    """Largest batch that fits memory (KV for input + output tokens) and meets the TTFT/TBT bounds.

    TTFT is the batched prefill time; TBT is the decode step at the final context length
    (the slowest step). Returns 0 when even batch 1 fails.
    """
    _check_tp(dev, tp)
    ctx = input_tokens + output_tokens

    def ok(b: int) -> bool:
        if not fits(cfg, dev, ctx, b, dtype, tp):
            return False
        if ttft_s is not None and prefill_latency_s(cfg, dev, input_tokens, b, dtype, tp) > ttft_s:
            return False
        return not (
            tbt_s is not None and decode_step_latency_s(cfg, dev, ctx, b, dtype, tp) > tbt_s
        )

    if not ok(1):
        return 0
    lo, hi = 1, limit  # every constraint is monotone in batch: binary search
    if ok(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def kv_transfer_latency_s(
    cfg: LLMConfig, tokens: int, batch: int, dtype: str, src: DeviceSpec, dst: DeviceSpec
) -> float:
    """Time to move a prefill's KV cache from ``src`` to ``dst`` (0 when they are the same class)."""
    return link_between(src, dst).transfer_latency_s(kv_cache_bytes(cfg, tokens, batch, dtype))


@dataclass(frozen=True, slots=True)
class LLMEstimate:
    """Serving figures of one P::D pair at one batch size."""

    model: str
    dtype: str
    prefill_device: str
    decode_device: str
    tp_prefill: int
    tp_decode: int
    batch: int
    input_tokens: int
    output_tokens: int
    prefill_s: float
    kv_transfer_s: float
    ttft_s: float
    tbt_s: float
    tbt_max_s: float
    tokens_per_s: float
    e2e_s: float
    kv_bytes: int
    prefill_mem_bytes: int
    decode_mem_bytes: int


def estimate(
    cfg: LLMConfig,
    prefill_dev: DeviceSpec,
    decode_dev: DeviceSpec | None = None,
    input_tokens: int = 512,
    output_tokens: int = 512,
    batch: int = 1,
    dtype: str = "fp16",
    tp_prefill: int = 1,
    tp_decode: int = 1,
) -> LLMEstimate:
    """TTFT, TBT and tokens/s of ``batch`` requests on a prefill device and a decode device.

    TTFT = batched prefill + KV transfer to the decode device; TBT = decode step at the mean
    context (input + output / 2); tokens/s = batch / TBT per decode replica.

    Raises:
        CostModelError: the model does not fit a device at the given TP degree.
    """
    decode_dev = decode_dev or prefill_dev
    ctx = input_tokens + output_tokens
    for dev, tokens, tp, phase in (
        (prefill_dev, input_tokens, tp_prefill, "prefill"),
        (decode_dev, ctx, tp_decode, "decode"),
    ):
        _check_tp(dev, tp)
        if not fits(cfg, dev, tokens, batch, dtype, tp):
            need = memory_bytes_per_device(cfg, tokens, batch, dtype, tp)
            raise CostModelError(
                f"{cfg.name} {dtype} {phase} needs {need / 1e9:.1f} GB per device at tp={tp}, batch={batch}; "
                f"{dev.name} has {dev.mem_bytes / 1e9:.0f} GB"
            )
    prefill_s = prefill_latency_s(cfg, prefill_dev, input_tokens, batch, dtype, tp_prefill)
    kv_s = kv_transfer_latency_s(cfg, input_tokens, batch, dtype, prefill_dev, decode_dev)
    tbt = decode_step_latency_s(
        cfg, decode_dev, input_tokens + output_tokens // 2, batch, dtype, tp_decode
    )
    tbt_max = decode_step_latency_s(cfg, decode_dev, ctx, batch, dtype, tp_decode)
    ttft = prefill_s + kv_s
    return LLMEstimate(
        model=cfg.name,
        dtype=dtype,
        prefill_device=prefill_dev.name,
        decode_device=decode_dev.name,
        tp_prefill=tp_prefill,
        tp_decode=tp_decode,
        batch=batch,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        prefill_s=prefill_s,
        kv_transfer_s=kv_s,
        ttft_s=ttft,
        tbt_s=tbt,
        tbt_max_s=tbt_max,
        tokens_per_s=batch / tbt,
        e2e_s=ttft + output_tokens * tbt,
        kv_bytes=kv_cache_bytes(cfg, input_tokens, batch, dtype),
        prefill_mem_bytes=memory_bytes_per_device(cfg, input_tokens, batch, dtype, tp_prefill),
        decode_mem_bytes=memory_bytes_per_device(cfg, ctx, batch, dtype, tp_decode),
    )
