"""Kernels to tune: PrimFuncs extracted from a lowered Relax module, analysed and ranked.

Sits at the start of the schedule search: a stage's Relax module is lowered with the same
passes codegen uses (LegalizeOps, FuseOps, FuseTIR), each PrimFunc becomes a :class:`Kernel`
with a structural workload hash, a kernel class (matmul, conv, reduction, elementwise, other),
FLOPs and bytes, and kernels are ranked by their roofline share of the stage's time.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: Last-resort machine figures when neither a cost model nor the cost model's local CPU
#: description can be had (this machine, DESIGN.md Facts).
DEFAULT_PEAK_FLOPS = 85e9
DEFAULT_MEM_BW_BYTES_PER_S = 20e9


@functools.lru_cache(maxsize=1)
def local_roofline() -> tuple[float, float]:
    """Roofline figures ``(peak_flops, mem_bw_bytes_per_s)`` for ranking without a cost model.

    Taken from the cost model's description of this CPU: the device spec of a saved
    calibration profile (``$TERRAZZO_CALIBRATION``, else ``$TERRAZZO_CACHE`` or
    ``~/.cache/terrazzo`` ``/calibration/local-cpu.json``, as ``terrazzo calibrate`` writes it)
    when one exists, else ``terrazzo.costmodel.local_cpu_spec`` (peak from cores ×
    clock × SIMD width) with :data:`DEFAULT_MEM_BW_BYTES_PER_S` — no bandwidth is measured.
    Falls back to the module constants if neither can be read. Cached per process.
    """
    import os
    from pathlib import Path

    env = os.environ.get("TERRAZZO_CALIBRATION")
    cache = Path(os.environ.get("TERRAZZO_CACHE", Path.home() / ".cache" / "terrazzo"))
    for path in [Path(env)] if env else [cache / "calibration" / "local-cpu.json"]:
        if not path.is_file():
            continue
        try:
            from terrazzo.costmodel import CalibrationProfile

            spec = CalibrationProfile.load(path).device_spec
        except Exception:  # an unreadable profile only loses the better figures
            spec = None
        if spec is not None:
            peak = float(spec.peak_tflops.get("fp32", 0.0)) * 1e12
            bw = float(spec.mem_bw_bytes_per_s)
            if peak > 0 and bw > 0:
                return peak, bw
    try:
        from terrazzo.costmodel import local_cpu_spec

        spec = local_cpu_spec(bw_bytes_per_s=DEFAULT_MEM_BW_BYTES_PER_S)
        peak = float(spec.peak_tflops["fp32"]) * 1e12
        if peak > 0:
            return peak, float(spec.mem_bw_bytes_per_s)
    except Exception:
        pass
    return DEFAULT_PEAK_FLOPS, DEFAULT_MEM_BW_BYTES_PER_S


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """One schedulable block: its name, loops (outermost first) and iterator kinds."""

    name: str
    loop_extents: tuple[int, ...]
    #: per loop: "S" (spatial), "R" (reduction) or "O" (other/mixed/none)
    loop_kinds: tuple[str, ...]
    has_init: bool
    writes_param: bool
    n_reads: int


@dataclass(frozen=True, slots=True)
class Kernel:
    """A PrimFunc to tune, with what the proposers and the ranking need to know about it."""

    name: str
    func: Any = field(repr=False, compare=False)
    workload_hash: str
    kernel_class: str
    blocks: tuple[BlockInfo, ...]
    flops: float
    bytes_accessed: int
    calls: int = 1

    def predicted_latency_s(
        self,
        peak_flops: float = DEFAULT_PEAK_FLOPS,
        mem_bw_bytes_per_s: float = DEFAULT_MEM_BW_BYTES_PER_S,
    ) -> float:
        """Roofline time of all calls of this kernel: max(compute, memory)."""
        return self.calls * max(self.flops / peak_flops, self.bytes_accessed / mem_bw_bytes_per_s)

    def script(self) -> str:
        """TVMScript text of the kernel (the LLM prompt form)."""
        return str(self.func.script())

    @property
    def main_block(self) -> BlockInfo:
        """The block that dominates the work: the reduction with the most iterations, or the last."""
        reductions = [b for b in self.blocks if "R" in b.loop_kinds]
        pool = reductions or list(self.blocks)
        return max(pool, key=lambda b: (math.prod(b.loop_extents), pool.index(b)))


def workload_hash(func: Any) -> str:
    """Structural hash of a PrimFunc, independent of its symbol and parameter names."""
    import tvm_ffi

    f = func
    for attr in ("global_symbol",):
        if f.attrs is not None and attr in f.attrs:
            f = f.without_attr(attr)
    h = int(tvm_ffi.structural_hash(f)) & ((1 << 64) - 1)
    return hashlib.sha256(str(h).encode()).hexdigest()[:16]


def _blocks(func: Any) -> tuple[BlockInfo, ...]:
    import tvm_ffi
    from tvm import s_tir, tirx

    params = list(func.params)
    realizes: list[Any] = []
    loops_stack: list[Any] = []

    def visit(node: Any, visitor: Any) -> None:
        if isinstance(node, tirx.For):
            loops_stack.append(node)
            visitor.default_visit(node)
            loops_stack.pop()
            return
        if isinstance(node, s_tir.SBlockRealize):
            if node.block.name_hint != "root":
                realizes.append((node, list(loops_stack)))
        visitor.default_visit(node)

    tvm_ffi.structural_visit(func.body, [((tirx.For, s_tir.SBlockRealize), visit)])
    out = []
    for realize, loops in realizes:
        block = realize.block
        kinds = []
        for loop in loops:
            kind = "O"
            for iv, val in zip(block.iter_vars, realize.iter_values, strict=True):
                uses = _uses_var(val, loop.loop_var)
                if uses:
                    k = "S" if int(iv.iter_type) == 0 else ("R" if int(iv.iter_type) == 2 else "O")
                    kind = k if kind in ("O", k) else "O"
            kinds.append(kind)
        extents = tuple(int(lp.extent) if _is_int(lp.extent) else 1 for lp in loops)
        writes_param = any(w.source.same_as(p) for w in block.writes for p in params)
        out.append(
            BlockInfo(
                name=str(block.name_hint),
                loop_extents=extents,
                loop_kinds=tuple(kinds),
                has_init=block.init is not None,
                writes_param=writes_param,
                n_reads=len(block.reads),
            )
        )
    return tuple(out)


def _is_int(x: Any) -> bool:
    try:
        int(x)
    except (TypeError, ValueError):
        return False
    return True


def _uses_var(expr: Any, var: Any) -> bool:
    import tvm_ffi
    from tvm import tirx

    found = []

    def cb(v: Any) -> None:
        if v.same_as(var):
            found.append(v)

    tvm_ffi.structural_walk(expr, [(tirx.Var, cb)])
    return bool(found)


def classify(blocks: tuple[BlockInfo, ...]) -> str:
    """Kernel class from block structure: matmul, conv, reduction, elementwise or other."""
    reductions = [b for b in blocks if "R" in b.loop_kinds]
    if not reductions:
        return "elementwise"
    main = max(reductions, key=lambda b: math.prod(b.loop_extents))
    n_s = main.loop_kinds.count("S")
    n_r = main.loop_kinds.count("R")
    if n_r >= 3 and n_s >= 3:
        return "conv"
    if n_s >= 2 and n_r >= 1 and main.n_reads >= 2 and len(reductions) == 1:
        return "matmul"
    return "reduction"


def _param_bytes(func: Any) -> int:
    total = 0
    for buf in func.params:
        n = 1
        for d in buf.shape:
            n *= int(d) if _is_int(d) else 1
        total += n * _dtype_bytes(str(buf.dtype))
    return total


def _dtype_bytes(dtype: str) -> int:
    digits = "".join(c for c in dtype if c.isdigit())
    return max(1, int(digits or 32) // 8)


def analyse(name: str, func: Any, calls: int = 1) -> Kernel:
    """Build a :class:`Kernel` for one PrimFunc (adds ``global_symbol = main``)."""
    import tvm
    from tvm.s_tir.analysis import estimate_tir_flops

    func = func.with_attr("global_symbol", "main")
    blocks = _blocks(func)
    try:
        flops = float(estimate_tir_flops(tvm.IRModule({"main": func})))
    except Exception:
        flops = 0.0
    return Kernel(
        name=name,
        func=func,
        workload_hash=workload_hash(func),
        kernel_class=classify(blocks),
        blocks=blocks,
        flops=flops,
        bytes_accessed=_param_bytes(func),
        calls=calls,
    )


def lower_for_tuning(mod: Any, target: Any) -> Any:
    """LegalizeOps + FuseOps + FuseTIR (Relax's ``zero`` pipeline) under ``target``."""
    from tvm import relax

    with target:
        return relax.get_pipeline("zero")(mod)


def _call_counts(mod: Any) -> Counter[str]:
    import tvm_ffi
    from tvm import relax

    counts: Counter[str] = Counter()
    call_tir = {"relax.call_tir", "relax.call_tir_inplace"}

    def cb(call: Any) -> None:
        op = getattr(call, "op", None)
        if op is not None and getattr(op, "name", None) in call_tir and call.args:
            gv = call.args[0]
            if isinstance(gv, relax.GlobalVar) or hasattr(gv, "name_hint"):
                counts[str(gv.name_hint)] += 1

    for _gv, fn in mod.functions.items():
        if isinstance(fn, relax.Function):
            tvm_ffi.structural_walk(fn.body, [(relax.Call, cb)])
    return counts


def extract_kernels(mod: Any, target: Any, lowered: bool = False) -> list[Kernel]:
    """Every PrimFunc of a Relax module after the normal lowering, as analysed Kernels.

    Args:
        mod: a Relax IRModule (a model or stage).
        target: a ``tvm.target.Target``.
        lowered: True when ``mod`` already went through LegalizeOps/FuseOps/FuseTIR.

    Returns:
        Kernels in module order; ``calls`` counts the call sites in Relax functions.
    """
    from tvm import tirx

    lowered_mod = mod if lowered else lower_for_tuning(mod, target)
    counts = _call_counts(lowered_mod)
    kernels = []
    for gv, fn in lowered_mod.functions.items():
        if isinstance(fn, tirx.PrimFunc):
            kernels.append(analyse(str(gv.name_hint), fn, calls=max(1, counts[str(gv.name_hint)])))
    return kernels


def kernel_op(kernel: Kernel) -> Any:
    """The kernel as an ``ir.Op`` the cost model can price (one call)."""
    from terrazzo.ir import Op

    op_class = (
        kernel.kernel_class
        if kernel.kernel_class in ("matmul", "conv", "reduction", "elementwise")
        else "other"
    )
    out_bytes = 0
    try:
        import tvm_ffi  # noqa: F401

        from terrazzo.codegen.tuning.measure import output_indices

        params = list(kernel.func.params)
        for i in output_indices(kernel.func):
            n = 1
            for d in params[i].shape:
                n *= int(d) if _is_int(d) else 1
            out_bytes += n * _dtype_bytes(str(params[i].dtype))
    except Exception:
        out_bytes = 0
    return Op(
        name=kernel.name,
        kind=kernel.kernel_class,
        inputs=(),
        outputs=(),
        op_class=op_class,
        flops=int(kernel.flops),
        bytes_read=max(0, kernel.bytes_accessed - out_bytes),
        bytes_written=out_bytes,
    )


def rank_kernels(
    kernels: list[Kernel],
    peak_flops: float | None = None,
    mem_bw_bytes_per_s: float | None = None,
    cost_model: Any = None,
    device: str = "local-cpu",
) -> list[tuple[Kernel, float]]:
    """Kernels with their predicted share of total time, largest first (one per workload).

    Args:
        kernels: analysed kernels (several with the same workload hash are merged).
        peak_flops: roofline compute peak, used without a cost model (default: this CPU's,
            from :func:`local_roofline`).
        mem_bw_bytes_per_s: roofline bandwidth, used without a cost model (default: from
            :func:`local_roofline`).
        cost_model: a ``terrazzo.costmodel.CostModel``; when given, each kernel's time is its
            ``op_latency_s`` on ``device`` (the calibrated CPU profile's efficiencies and
            launch overhead) times its call count.
        device: the cost model device to price kernels on.
    """
    merged: dict[str, Kernel] = {}
    for k in kernels:
        if k.workload_hash in merged:
            prev = merged[k.workload_hash]
            merged[k.workload_hash] = Kernel(
                prev.name,
                prev.func,
                prev.workload_hash,
                prev.kernel_class,
                prev.blocks,
                prev.flops,
                prev.bytes_accessed,
                prev.calls + k.calls,
            )
        else:
            merged[k.workload_hash] = k
    if cost_model is not None:
        times = {
            h: k.calls * cost_model.op_latency_s(kernel_op(k), device) for h, k in merged.items()
        }
    else:
        if peak_flops is None or mem_bw_bytes_per_s is None:
            local_peak, local_bw = local_roofline()
            peak_flops = peak_flops or local_peak
            mem_bw_bytes_per_s = mem_bw_bytes_per_s or local_bw
        times = {
            h: k.predicted_latency_s(peak_flops, mem_bw_bytes_per_s) for h, k in merged.items()
        }
    total = sum(times.values()) or 1.0
    ranked = sorted(merged.values(), key=lambda k: -times[k.workload_hash])
    return [(k, times[k.workload_hash] / total) for k in ranked]


__all__ = [
    "BlockInfo",
    "Kernel",
    "analyse",
    "classify",
    "extract_kernels",
    "kernel_op",
    "local_roofline",
    "lower_for_tuning",
    "rank_kernels",
    "workload_hash",
]
