"""LLM phase latencies for the fleet study and agent placement: one adapter over the cost model's LLM model.

Prefill is compute-bound, decode bandwidth-bound; tensor parallelism (TP) inside a chassis
divides weights, KV and FLOPs by the TP degree and adds two all-reduces per layer over the
scale-up link. FP8 on a device without native FP8 tensor cores is *weights-only* FP8: weights
and KV are stored in one byte, matmuls run at the FP16 rate (see :func:`fp8_mode`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from terrazzo.costmodel import llm
from terrazzo.costmodel.catalog import DeviceSpec
from terrazzo.costmodel.efficiency import LINK_LATENCY_S


@dataclass(frozen=True, slots=True)
class PhaseDevice:
    """A device as the phase model sees it: the catalog entry with the study's FP8 rate applied.

    ``spec.peak_tflops["fp8"]`` is replaced by the FP8 rule of :func:`phase_device`, so the cost
    model's own functions see it; ``catalog_spec`` is the entry as loaded.
    """

    spec: DeviceSpec
    catalog_spec: DeviceSpec
    fp8_peak_flops_per_s: float  # 0 when FP8 runs weights-only at the FP16 rate

    @property
    def name(self) -> str:
        return self.spec.name

    def peak_flops_per_s(self, precision: str) -> float:
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
    fp16_here = spec.peak_flops_per_s("fp16")
    native = fp8 / fp16 * fp16_here if fp8 > 0 and fp16 > 0 else 0.0
    tflops = dict(spec.peak_tflops)
    tflops["fp8"] = (native or fp16_here) / 1e12
    return PhaseDevice(replace(spec, peak_tflops=MappingProxyType(tflops)), spec, native)


def llm_config(arch: llm.LLMConfig, name: str = "custom") -> llm.LLMConfig:
    """``arch`` under ``name``; a preset's name gives the preset (``llm.PRESETS``, exact params)."""
    if name in llm.PRESETS:
        return llm.PRESETS[name]
    return replace(arch, name=name)


def weights_bytes(arch: llm.LLMConfig, precision: str) -> int:
    return arch.weight_bytes(precision)


def kv_cache_bytes(arch: llm.LLMConfig, tokens: int, batch: int, precision: str) -> int:
    """2 · layers · d_model · (kv_heads / heads) · tokens · batch · bytes (``costmodel.llm``)."""
    return llm.kv_cache_bytes(arch, tokens, batch, precision)


def prefill_latency_s(
    arch: llm.LLMConfig, dev: PhaseDevice, isl: int, batch: int, tp: int, precision: str
) -> float:
    """Seconds to prefill ``batch`` prompts of ``isl`` tokens (``costmodel.llm.prefill_latency_s``)."""
    return llm.prefill_latency_s(arch, dev.spec, isl, batch, precision, tp)


def decode_step_latency_s(
    arch: llm.LLMConfig,
    dev: PhaseDevice,
    context: int,
    batch: int,
    tp: int,
    precision: str,
) -> float:
    """Seconds for one decode step of ``batch`` sequences at ``context`` tokens (``costmodel.llm``)."""
    return llm.decode_step_latency_s(arch, dev.spec, context, batch, precision, tp)


def max_batch(arch: llm.LLMConfig, dev: PhaseDevice, tokens: int, tp: int, precision: str) -> int:
    """Most sequences of ``tokens`` whose KV fits beside the weights on ``tp`` devices (0 = none)."""
    free = tp * dev.spec.mem_bytes * llm.MEM_UTILISATION - arch.weight_bytes(precision)
    per_seq = llm.kv_cache_bytes(arch, tokens, 1, precision)
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
        "memory_utilisation": llm.MEM_UTILISATION,
        "phase_model": "terrazzo.costmodel.llm (roofline, TP all-reduce on scale-up, one launch per layer)",
        "fp8_without_native_support": "weights-only FP8: 1-byte weights and KV, FP16 matmul rate",
        "kv_transfer": "network between chassis: min(tp·NIC) per side",
    }
