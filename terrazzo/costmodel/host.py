"""Host probing: this machine's CPU as a cost-model DeviceSpec (peak from cores × clock × SIMD, measured bandwidth).

Sits at the bottom of the cost model, below calibration and codegen: codegen's schedule search
ranks kernels with these figures, and the calibration harness fits efficiencies against them.
Reads /proc/cpuinfo and times one numpy copy; imports no TVM.
"""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path
from types import MappingProxyType

import numpy as np

from terrazzo.costmodel.catalog import HOST_FALLBACK_TARGET, DeviceSpec

LOCAL_DEVICE = "local-cpu"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_ghz() -> float:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) / 1000.0
    except (OSError, ValueError):
        pass
    return 2.0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def measure_copy_bw_bytes_per_s(nbytes: int = 64 << 20) -> float:
    """DRAM bandwidth seen by one copy of ``nbytes`` (read + write counted), best of 5."""
    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def local_cpu_spec(bw_bytes_per_s: float | None = None) -> DeviceSpec:
    """A DeviceSpec for this machine's CPU: peak from cores × clock × SIMD width, measured bandwidth."""
    flags = _cpu_flags()
    cores = os.cpu_count() or 1
    ghz = _cpu_ghz()
    if "avx512f" in flags:
        fp32_per_cycle, isa = 64, "AVX-512"
    elif "avx2" in flags and "fma" in flags:
        fp32_per_cycle, isa = 32, "AVX2+FMA"
    else:
        fp32_per_cycle, isa = 8, "SSE"
    fp32 = cores * ghz * 1e9 * fp32_per_cycle / 1e12
    bw = bw_bytes_per_s or measure_copy_bw_bytes_per_s()
    mem_bytes = (
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if hasattr(os, "sysconf")
        else 8 << 30
    )
    return DeviceSpec(
        name=LOCAL_DEVICE,
        vendor="local",
        kind="cpu",
        year=2024,
        peak_tflops=MappingProxyType(
            {"fp32": fp32, "tf32": 0.0, "fp16": 0.0, "bf16": 0.0, "fp8": 0.0, "int8": 0.0}
        ),
        mem_bytes=int(mem_bytes),
        mem_bw_bytes_per_s=bw,
        tdp_w=0.0,
        capex_usd=None,
        cloud_usd_per_hour=None,
        cloud_provider="",
        cloud_price_date="",
        chassis_size=1,
        scaleup_bw_bytes_per_s=bw,
        scaleout_bw_bits_per_s=10e9,
        tvm_target=MappingProxyType({"kind": "llvm"}),
        fallback_target=HOST_FALLBACK_TARGET,
        sources=MappingProxyType(
            {
                "peak_tflops": f"detected: {cores} cores x {ghz:.2f} GHz x {fp32_per_cycle} fp32 FLOP/cycle ({isa})",
                "mem": "measured: numpy copy of 64 MiB, best of 5",
            }
        ),
        model=f"{_cpu_model()} ({cores} vCPU, this machine)",
        host_link_bw_bytes_per_s=bw,
    )
