"""LLM phase latencies for the fleet study and agent placement: one adapter over the cost model's LLM model.

Prefill is compute-bound, decode bandwidth-bound; tensor parallelism (TP) inside a chassis
divides weights, KV and FLOPs by the TP degree and adds two all-reduces per layer over the
scale-up link. FP8 on a device without native FP8 tensor cores is *weights-only* FP8: weights
and KV are stored in one byte, matmuls run at the FP16 rate (see :func:`fp8_mode`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from terrazzo.costmodel.catalog import DeviceSpec
from terrazzo.costmodel.efficiency import (
    DEFAULT_LAUNCH_OVERHEAD_S,
    LINK_LATENCY_S,
    default_efficiency,
)
from terrazzo.frontend.agent import LLMArch

PRECISION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
# Activations of an FP8 model stay in 16 bits between layers (all-reduce payloads).
_ACT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 2, "int8": 2}
# Fraction of device memory usable for weights + KV (runtime, activations and fragmentation
# take the rest; vLLM's default gpu_memory_utilization is 0.9).
MEMORY_HEADROOM = 0.9


@dataclass(frozen=True, slots=True)
class PhaseDevice:
    """A device as the phase model sees it: the catalog entry plus the study's FP8 rule."""

    spec: DeviceSpec
    fp8_peak_flops_per_s: float  # 0 when FP8 runs weights-only at the FP16 rate

    @property
    def name(self) -> str:
        return self.spec.name

    def peak_flops_per_s(self, precision: str) -> float:
        if precision in ("fp8", "int8"):
            return self.fp8_peak_flops_per_s or self.spec.peak_flops_per_s("fp16")
        return self.spec.peak_flops_per_s(precision)


def fp8_mode(dev: PhaseDevice) -> str:
    """``native`` when the device has FP8 tensor rates, else ``weights-only``."""
    return "native" if dev.fp8_peak_flops_per_s > 0 else "weights-only"


def phase_device(spec: DeviceSpec, datasheet: DeviceSpec | None = None) -> PhaseDevice:
    """Build the phase model's view of ``spec``.

    The FP8 rate is the profile's FP16 rate scaled by the vendor's FP8:FP16 ratio (taken from
    the datasheet entry of the same device when given). For the paper-2025 profile this keeps
    the paper's FP16 figures and doubles them for FP8 where the hardware doubles; devices with
    no FP8 (A40, A100, T4, V100, CPUs) get 0 → weights-only FP8.
    """
    ref = datasheet or spec
    fp16 = ref.peak_tflops.get("fp16", 0.0) or ref.peak_tflops.get("bf16", 0.0)
    fp8 = ref.peak_tflops.get("fp8", 0.0)
    if fp8 <= 0 or fp16 <= 0:
        return PhaseDevice(spec, 0.0)
    return PhaseDevice(spec, spec.peak_flops_per_s("fp16") * fp8 / fp16)


def weights_bytes(arch: LLMArch, precision: str) -> int:
    return arch.param_count * PRECISION_BYTES[precision]


def kv_cache_bytes(arch: LLMArch, tokens: int, batch: int, precision: str) -> int:
    """2 · layers · d_model · (kv_heads / heads) · tokens · batch · bytes."""
    return arch.kv_bytes_per_token(precision) * tokens * batch


def _allreduce_s(dev: PhaseDevice, tp: int, nbytes: float) -> float:
    if tp <= 1:
        return 0.0
    ring = 2.0 * (tp - 1) / tp * nbytes / dev.spec.scaleup_bw_bytes_per_s
    return LINK_LATENCY_S["scaleup"] * 2 + ring


def _matmul_params(arch: LLMArch) -> int:
    # Input embeddings are a lookup; the LM head runs for the last position only.
    return arch.param_count - 2 * arch.vocab * arch.d_model


def prefill_latency_s(
    arch: LLMArch, dev: PhaseDevice, isl: int, batch: int, tp: int, precision: str
) -> float:
    """Seconds to prefill ``batch`` prompts of ``isl`` tokens (until the first token)."""
    tokens = isl * batch
    flops = 2 * _matmul_params(arch) * tokens + 2 * arch.layers * arch.d_model * isl * isl * batch
    flops += 2 * arch.vocab * arch.d_model * batch
    eff = default_efficiency(dev.spec.kind, "llm_prefill")
    compute = flops / (tp * dev.peak_flops_per_s(precision) * eff.compute)
    moved = weights_bytes(arch, precision) + kv_cache_bytes(arch, isl, batch, precision)
    memory = moved / (tp * dev.spec.mem_bw_bytes_per_s * eff.memory)
    comm = 2 * arch.layers * _allreduce_s(dev, tp, tokens * arch.d_model * _ACT_BYTES[precision])
    return max(compute, memory) + comm + _launch_s(arch, dev)


def _launch_s(arch: LLMArch, dev: PhaseDevice) -> float:
    # Serving stacks capture a step as a graph (CUDA/HIP/HPU graphs), so the fixed cost is one
    # fused dispatch per layer rather than one per kernel.
    return arch.layers * DEFAULT_LAUNCH_OVERHEAD_S[dev.spec.kind]


def decode_step_latency_s(
    arch: LLMArch, dev: PhaseDevice, context: int, batch: int, tp: int, precision: str
) -> float:
    """Seconds for one decode step of ``batch`` sequences whose KV holds ``context`` tokens."""
    flops = 2 * (_matmul_params(arch) + arch.vocab * arch.d_model) * batch
    flops += (
        4
        * arch.layers
        * arch.kv_heads
        * arch.head_dim
        * context
        * batch
        * (arch.heads // arch.kv_heads)
    )
    eff = default_efficiency(dev.spec.kind, "llm_decode")
    compute = flops / (tp * dev.peak_flops_per_s(precision) * eff.compute)
    moved = weights_bytes(arch, precision) + kv_cache_bytes(arch, context, batch, precision)
    memory = moved / (tp * dev.spec.mem_bw_bytes_per_s * eff.memory)
    comm = 2 * arch.layers * _allreduce_s(dev, tp, batch * arch.d_model * _ACT_BYTES[precision])
    return max(compute, memory) + comm + _launch_s(arch, dev)


def max_batch(arch: LLMArch, dev: PhaseDevice, tokens: int, tp: int, precision: str) -> int:
    """Most sequences of ``tokens`` whose KV fits beside the weights on ``tp`` devices (0 = none)."""
    free = tp * dev.spec.mem_bytes * MEMORY_HEADROOM - weights_bytes(arch, precision)
    per_seq = kv_cache_bytes(arch, tokens, 1, precision)
    return max(0, int(free // per_seq)) if per_seq > 0 else 0


def kv_link(src: PhaseDevice, dst: PhaseDevice, tp_src: int, tp_dst: int) -> tuple[float, float]:
    """(bandwidth bytes/s, latency s) for moving a KV cache from a prefill to a decode instance.

    Disaggregated instances sit in different chassis, so the KV crosses the network; every
    device has its own NIC, so the slower side's TP degree × its per-device scale-out bandwidth
    bounds the transfer. CPUs and accelerators use the same rule with their NIC figures.
    """
    bw = min(tp_src * src.spec.scaleout_bw_bytes_per_s, tp_dst * dst.spec.scaleout_bw_bytes_per_s)
    return bw, LINK_LATENCY_S["network"]


def describe() -> dict[str, Any]:
    """The modelling assumptions, for reports and JSON output."""
    return {
        "prefill": "compute-bound roofline over matmul FLOPs + causal attention, TP all-reduces on scale-up",
        "decode": "max(weights + KV bytes / bandwidth, FLOPs / peak) per step, TP all-reduces",
        "memory_headroom": MEMORY_HEADROOM,
        "fp8_without_native_support": "weights-only FP8: 1-byte weights and KV, FP16 matmul rate",
        "kv_transfer": "network between chassis: min(tp·NIC) per side",
    }
