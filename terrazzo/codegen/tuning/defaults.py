"""Default CPU schedules: every kernel without a tuning record gets a sane schedule, no search.

Sits in codegen's Relax → VM pipeline after the tuning database (``_build._pipeline``): a
PrimFunc that no record scheduled is given the offline proposer's first template seed that
applies (:func:`default_decisions`): register-tiled, packed micro-kernels for matmul/dense
and batch matmul, the NHWC direct-convolution template (regular and depthwise) for
convolutions, row-parallel vectorized schedules for reductions (softmax, layer norm,
pooling) and elementwise/injective kernels. Elementwise epilogues (bias, residual add,
GELU, ReLU) fused into a GEMM/conv are computed per register tile inside the micro-kernel
(``reverse_compute_at``) and vectorized, not in a separate pass over the output.

The decisions are the ones tuning starts from, so tuning can only improve on them (the
tuning loop's baseline is the untuned kernel; a record is kept only when faster).
Small kernels (under :data:`SERIAL_FLOPS`) stay on one thread: a parallel launch of TVM's
thread pool costs more than they take.

Every step is a TVM schedule primitive, which TVM checks for legality, so a default
schedule computes what the unscheduled kernel computes; a kernel whose template TVM
refuses, or whose shapes are symbolic, is left unscheduled (TVM's plain loops).
``TERRAZZO_DEFAULT_SCHEDULES=0`` turns the defaults off (a diagnostic switch for comparing
with the plain loop nests).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from terrazzo.codegen.tuning.kernel import Kernel, analyse
from terrazzo.codegen.tuning.offline import OfflineProposer, build_program, is_gpu_target
from terrazzo.codegen.tuning.program import ScheduleProgram, ScheduleProgramError, apply_program

#: Environment switch: ``0`` builds kernels without records as plain loop nests.
DEFAULT_SCHEDULES_ENV = "TERRAZZO_DEFAULT_SCHEDULES"

#: Kernels below this many FLOPs (or, for data movement, elements × 4) run on one thread: a
#: fork-join of TVM's thread pool costs 5-20 µs on an idle machine, and on a loaded one a
#: descheduled worker stalls the barrier for a time slice (the 1×3×32×32 convnet took 36 ms at
#: 2 threads under load 11 with a 2e5 threshold, vs 0.05 ms serial). The offline proposer
#: also starts kernels under 4e6 FLOPs single-threaded.
SERIAL_FLOPS = 4e6

#: How many seeds are tried (in order) before a kernel is left unscheduled.
_MAX_SEEDS = 6


def enabled() -> bool:
    """Whether default schedules are on (``TERRAZZO_DEFAULT_SCHEDULES`` is not ``0``)."""
    return os.environ.get(DEFAULT_SCHEDULES_ENV, "1") != "0"


def vector_lanes(target: Any) -> int:
    """fp32 lanes of the target's widest vector (LLVM's view of its ``-mcpu``/``-mattr``)."""
    try:
        from tvm.target import codegen

        bits = int(codegen.llvm_get_vector_width(target))
    except Exception:  # not an llvm target, or an LLVM without that query
        bits = 128
    return max(4, bits // 32)


def _static(func: Any) -> bool:
    from tvm import tirx

    for buf in func.params:  # TVM 0.27: PrimFunc parameters are the buffers
        if not all(isinstance(d, tirx.IntImm) for d in getattr(buf, "shape", ())):
            return False
    return True


def default_decisions(kernel: Kernel, lanes: int) -> list[dict[str, Any]]:
    """The offline proposer's seeds for ``kernel``, first choice first, with the thread
    decision made by size (small kernels serial)."""
    seeds = OfflineProposer()._seeds(kernel, lanes)
    small = max(kernel.flops, kernel.bytes_accessed / 4) < SERIAL_FLOPS
    out: list[dict[str, Any]] = []
    for s in seeds:
        d = {**s, "parallel": 0 if small else s.get("parallel", 1)}
        if d not in out:
            out.append(d)
    return out


def default_program(kernel: Kernel, lanes: int) -> ScheduleProgram | None:
    """The first seed's program that applies to ``kernel``, or None."""
    for d in default_decisions(kernel, lanes)[:_MAX_SEEDS]:
        try:
            return build_program(kernel, d, lanes)
        except ScheduleProgramError:
            continue
        except Exception:  # TVM refused a step in a way the template did not foresee
            continue
    return None


def default_schedule(func: Any, target: Any, name: str = "kernel") -> Any | None:
    """``func`` with its default schedule applied (``tirx.is_scheduled`` set), or None when
    it keeps its plain loops (symbolic shapes, no template applies)."""
    if not _static(func):
        return None
    try:
        kernel = analyse(name, func)
    except Exception:
        return None
    prog = default_program(kernel, vector_lanes(target))
    if prog is None:
        return None
    try:
        scheduled = apply_program(func, prog)
    except ScheduleProgramError:
        return None
    return scheduled.with_attr("tirx.is_scheduled", True)


def apply_default_schedules(mod: Any, target: Any) -> Any:
    """Schedule every PrimFunc of ``mod`` that is not yet scheduled, for a CPU ``target``.

    GPU targets and modules with defaults turned off are returned unchanged (GPU kernels get
    dlight's rules in the pipeline).
    """
    from tvm import tirx

    if not enabled() or is_gpu_target(target):
        return mod
    out = mod.clone() if hasattr(mod, "clone") else mod
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc):
            continue
        if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
            continue
        try:
            scheduled = default_schedule(func, target, str(gv.name_hint))
        except Exception as e:  # never fail a build over a default schedule
            warnings.warn(f"no default schedule for {gv.name_hint}: {e}", stacklevel=2)
            scheduled = None
        if scheduled is not None:
            out.update_func(gv, scheduled)
    return out


__all__ = [
    "DEFAULT_SCHEDULES_ENV",
    "SERIAL_FLOPS",
    "apply_default_schedules",
    "default_decisions",
    "default_program",
    "default_schedule",
    "enabled",
    "vector_lanes",
]
