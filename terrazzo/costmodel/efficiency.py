"""Default roofline efficiencies and launch overheads per device kind and op class (before calibration).

The numbers are priors: the fraction of datasheet peak compute and memory bandwidth that
reasonably scheduled kernels reach. Calibration profiles replace them per device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from terrazzo.errors import CostModelError

MAX_MEMORY_EFFICIENCY = 8.0


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Fractions of peak compute (0 < c ≤ 1) and of DRAM bandwidth (0 < m ≤ 8) an op class reaches.

    ``memory`` may exceed 1 because a small op's working set stays in cache, which is faster
    than the DRAM bandwidth the catalog lists; calibration fits such values on CPUs.
    """

    compute: float
    memory: float

    def __post_init__(self) -> None:
        if not (0.0 < self.compute <= 1.0):
            raise CostModelError(f"efficiency.compute must be in (0, 1], found {self.compute!r}")
        if not (0.0 < self.memory <= MAX_MEMORY_EFFICIENCY):
            raise CostModelError(
                f"efficiency.memory must be in (0, {MAX_MEMORY_EFFICIENCY:g}], found {self.memory!r}"
            )


# Why these priors: dense GEMM reaches 60-80% of tensor peak on GPUs (cuBLAS) and ~50-70% of
# AMX/AVX-512 peak on CPUs (oneDNN); convolutions somewhat less; pointwise and reduction ops
# are bandwidth-bound at 60-85% of STREAM-like bandwidth; compute efficiency of those classes
# only matters when they are unusually compute-heavy.
_E = Efficiency
_GPU = {
    "matmul": _E(0.65, 0.80),
    "conv": _E(0.50, 0.70),
    "elementwise": _E(0.20, 0.80),
    "reduction": _E(0.15, 0.70),
    "softmax": _E(0.15, 0.70),
    "norm": _E(0.15, 0.70),
    "data_movement": _E(0.20, 0.75),
    "llm_prefill": _E(0.55, 0.80),
    "llm_decode": _E(0.40, 0.80),
    "kv_transfer": _E(0.20, 0.80),
    "other": _E(0.30, 0.60),
}
_CPU = {
    "matmul": _E(0.55, 0.70),
    "conv": _E(0.40, 0.60),
    "elementwise": _E(0.25, 0.65),
    "reduction": _E(0.20, 0.60),
    "softmax": _E(0.15, 0.55),
    "norm": _E(0.15, 0.55),
    "data_movement": _E(0.25, 0.60),
    "llm_prefill": _E(0.45, 0.70),
    "llm_decode": _E(0.40, 0.70),
    "kv_transfer": _E(0.20, 0.70),
    "other": _E(0.25, 0.50),
}
_ACCEL = {
    "matmul": _E(0.60, 0.75),
    "conv": _E(0.40, 0.65),
    "elementwise": _E(0.15, 0.70),
    "reduction": _E(0.10, 0.60),
    "softmax": _E(0.10, 0.60),
    "norm": _E(0.10, 0.60),
    "data_movement": _E(0.15, 0.65),
    "llm_prefill": _E(0.50, 0.75),
    "llm_decode": _E(0.35, 0.75),
    "kv_transfer": _E(0.20, 0.75),
    "other": _E(0.20, 0.50),
}

DEFAULT_EFFICIENCY: Mapping[str, Mapping[str, Efficiency]] = MappingProxyType(
    {
        "gpu": MappingProxyType(_GPU),
        "cpu": MappingProxyType(_CPU),
        "accelerator": MappingProxyType(_ACCEL),
    }
)

# Per-kernel fixed cost: CUDA/HIP launch ~5 µs; graph-compiled accelerators dispatch in
# ~10-20 µs per op when not fused; a CPU function call through the TVM VM ~2 µs.
DEFAULT_LAUNCH_OVERHEAD_S: Mapping[str, float] = MappingProxyType(
    {"cpu": 2e-6, "gpu": 5e-6, "accelerator": 15e-6}
)

# Fixed latency of one transfer over each kind of link (DMA setup, NIC and switch hops).
LINK_LATENCY_S: Mapping[str, float] = MappingProxyType(
    {"same": 0.0, "pcie": 10e-6, "scaleup": 5e-6, "network": 25e-6}
)

# A stage boundary in the serving runtime is a gRPC hop between two stage workers, whatever
# the link: serialise, send, deserialise. Measured on loopback with a 4 KiB tensor
# (benchmarks/results/serving_overhead.json, 1-hop p50 0.65 ms; 1.2 ms beside a GPU in
# gpu_serving.json). Both workers' host CPUs are busy for about that long, so a hop also costs
# 2 x 0.65 ms of vCPU time, priced at AWS m7i.24xlarge $4.8384/h / 96 vCPU (2025-06).
RUNTIME_HOP_LATENCY_S = 0.65e-3
RUNTIME_HOP_CPU_S = 2 * 0.65e-3
VCPU_USD_PER_HOUR = 4.8384 / 96


# Fixed cost of a latency-optimised one-shot all-reduce (each GPU reads its peers' buffers over
# NVLink and reduces locally: TensorRT-LLM / vLLM / SGLang "custom all-reduce", used for decode
# activations up to a few MB). Measured on 8x H100 NVSwitch (sglang PR #2904, 2025-01): 5.7-5.9 us
# for <= 4 KB and 7.8 us for 32 KB at TP8 (vLLM's variant 9-12 us); ai-dynamo/aiconfigurator
# PR #1062 found a 15 us floor too high for the same kernels. Only NVLink GPUs: no published
# small-message figures were found for RCCL/HCCL, which keep NCCL-style ring/tree.
ONESHOT_ALLREDUCE_LATENCY_S = 6e-6
ONESHOT_ALLREDUCE_MIN_SCALEUP_BW = 100e9  # NVLink-class peer links (not PCIe)


def default_efficiency(kind: str, op_class: str) -> Efficiency:
    """The prior efficiency for a device kind and op class (``other`` when the class is unlisted)."""
    table = DEFAULT_EFFICIENCY.get(kind)
    if table is None:
        raise CostModelError(f"unknown device kind {kind!r}; expected cpu, gpu or accelerator")
    return table.get(op_class, table["other"])
