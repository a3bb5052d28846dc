"""Build, verify and time one candidate kernel: the judge of the schedule search.

Sits inside the tuning loop after a program has been applied: the scheduled PrimFunc is
compiled with ``tvm.compile``, run on several random input sets into fresh NaN-filled
outputs and compared with the unscheduled kernel, then timed (median of repeats after a
warm-up). Every failure becomes a :class:`Measurement` with a precise reason, never an
exception.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from terrazzo.codegen.tuning.kernel import Kernel


@dataclass(frozen=True, slots=True)
class MeasureOptions:
    """How candidates are checked and timed.

    ``cache_flush_bytes`` defaults to 0 (hot caches, as in steady-state serving and as
    MetaSchedule's LocalRunner does); benchmarks pass a flush size for cold-cache timing.
    Kernels whose inputs exceed ``cold_above_bytes`` are always timed with a flush of
    ``cold_flush_bytes``: in a model their weights stream from DRAM on every call (the
    other layers' weights evicted them), and a warm-cache timing favours schedules that
    re-read weights — e.g. ResNet-18's 9.4 MB 512-channel convolutions ran 2.5× slower in
    the model than their warm-cache winner promised.
    """

    n_input_sets: int = 3
    rtol: float = 1e-4
    atol: float = 1e-4
    min_repeats: int = 5
    max_repeats: int = 50
    min_measure_s: float = 0.05
    cache_flush_bytes: int = 0
    cold_above_bytes: int = 4 << 20
    cold_flush_bytes: int = 64 << 20
    #: reject a candidate faster than flops / (peak_flops * this): a broken or cheating kernel.
    roofline_slack: float = 4.0
    peak_flops: float = 85e9
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Measurement:
    """Outcome of one candidate: a latency, or the stage it failed at and why."""

    ok: bool
    latency_s: float | None = None
    #: "apply" | "build" | "run" | "verify" | "timing" | "ok"
    stage: str = "ok"
    reason: str = ""
    max_abs_error: float | None = None
    build_s: float = 0.0


def output_indices(func: Any) -> list[int]:
    """Indices of the PrimFunc parameters written by some block (its outputs)."""
    import tvm_ffi
    from tvm import s_tir

    params = list(func.params)
    written: set[int] = set()

    def cb(block: Any) -> None:
        for w in block.writes:
            for i, p in enumerate(params):
                if w.source.same_as(p):
                    written.add(i)

    tvm_ffi.structural_walk(func.body, [(s_tir.SBlock, cb)])
    return sorted(written) or [len(params) - 1]


def _shape(buf: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in buf.shape)


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if dtype.startswith("float") or dtype.startswith("bfloat"):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 2, shape).astype(dtype)


def _fill(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if dtype.startswith("float"):
        return np.full(shape, np.nan, dtype)
    return np.full(shape, -7, dtype) if dtype != "bool" else np.zeros(shape, bool)


def build(func: Any, target: Any) -> Any:
    """Compile a PrimFunc (as ``main``) for ``target``; returns the TVM executable.

    On CPU targets the fp32 ``erf`` calls are first replaced by the vectorizable polynomial
    codegen uses (``vector_math``), so a kernel is timed as a build will run it.
    """
    import tvm

    from terrazzo.codegen.tuning.vector_math import vectorize_math

    if str(target.kind.name) in ("llvm", "c"):
        func = vectorize_math(func)
    return tvm.compile(
        tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target
    )


class KernelEvaluator:
    """Checks and times candidates of one kernel against its unscheduled reference.

    The reference is built once; its outputs on ``n_input_sets`` random input sets are cached.
    """

    def __init__(self, kernel: Kernel, target: Any, options: MeasureOptions | None = None) -> None:
        import tvm

        self.kernel = kernel
        self.target = target
        self.options = options or MeasureOptions()
        kind = str(target.kind.name)
        self.dev = tvm.cpu(0) if kind in ("llvm", "c") else tvm.device(kind, 0)
        func = kernel.func
        self.params = list(func.params)
        self.outputs = output_indices(func)
        rng = np.random.default_rng(self.options.seed)
        self.inputs: list[list[np.ndarray | None]] = []
        for _ in range(self.options.n_input_sets):
            args: list[np.ndarray | None] = []
            for i, p in enumerate(self.params):
                args.append(None if i in self.outputs else _random(rng, _shape(p), str(p.dtype)))
            self.inputs.append(args)
        ref = build(func, target)
        self.references = [self._run(ref, args) for args in self.inputs]
        self.baseline: Measurement | None = None

    def _run(self, ex: Any, args: list[np.ndarray | None]) -> list[np.ndarray]:
        import tvm

        tensors = []
        for i, p in enumerate(self.params):
            arr = args[i] if args[i] is not None else _fill(_shape(p), str(p.dtype))
            tensors.append(tvm.runtime.tensor(arr, self.dev))
        ex["main"](*tensors)
        return [tensors[i].numpy() for i in self.outputs]

    def _check(self, ex: Any) -> tuple[bool, str, float]:
        o = self.options
        worst = 0.0
        for n, (args, refs) in enumerate(zip(self.inputs, self.references, strict=True)):
            outs = self._run(ex, args)
            for idx, got, want in zip(self.outputs, outs, refs, strict=True):
                name = str(self.params[idx].name)
                if got.dtype.kind == "f":
                    bad_nan = np.isnan(got) & ~np.isnan(want)
                    if bad_nan.any():
                        return (
                            False,
                            f"output {name!r} has {int(bad_nan.sum())} of {got.size} elements "
                            f"never written (NaN) on input set {n}",
                            math.inf,
                        )
                    scale = float(np.nanmax(np.abs(want))) if want.size else 1.0
                    err = (
                        float(np.nanmax(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
                    )
                    worst = max(worst, err)
                    if not np.allclose(
                        got, want, rtol=o.rtol, atol=o.atol * max(1.0, scale), equal_nan=True
                    ):
                        return (
                            False,
                            f"output {name!r} differs from the unscheduled kernel on input set "
                            f"{n}: max abs error {err:.3g} (scale {scale:.3g}, rtol {o.rtol})",
                            err,
                        )
                elif not np.array_equal(got, want):
                    return False, f"output {name!r} differs on input set {n}", math.inf
        return True, "", worst

    def flush_bytes(self) -> int:
        """Cache flush size used when timing: ``cache_flush_bytes``, else the cold flush for
        kernels whose inputs exceed ``cold_above_bytes``, else 0 (warm)."""
        o = self.options
        if o.cache_flush_bytes:
            return o.cache_flush_bytes
        in_bytes = sum(a.nbytes for a in self.inputs[0] if a is not None)
        if o.cold_above_bytes and in_bytes > o.cold_above_bytes:
            return o.cold_flush_bytes
        return 0

    def time_executable(self, ex: Any) -> float:
        """Median latency in seconds of ``ex['main']`` on the first input set."""
        import tvm

        o = self.options
        args = self.inputs[0]
        tensors = [
            tvm.runtime.tensor(
                args[i] if args[i] is not None else _fill(_shape(p), str(p.dtype)), self.dev
            )
            for i, p in enumerate(self.params)
        ]
        flush = self.flush_bytes()
        mod = ex.jit() if hasattr(ex, "jit") else ex
        f = mod["main"]
        f(*tensors)  # warm-up
        t0 = time.perf_counter()
        f(*tensors)
        once = max(time.perf_counter() - t0, 1e-7)
        if flush:
            number = 1
        else:
            number = max(1, min(1000, int(0.01 / once)))
        repeat = int(min(o.max_repeats, max(o.min_repeats, o.min_measure_s / (once * number))))
        timer = mod.time_evaluator(
            "main",
            self.dev,
            number=number,
            repeat=repeat,
            cache_flush_bytes=flush,
        )
        res = timer(*tensors)
        return float(np.median(np.asarray(res.results)))

    def measure(self, func: Any) -> Measurement:
        """Build, verify and time a scheduled PrimFunc; never raises for a bad candidate."""
        t0 = time.perf_counter()
        try:
            ex = build(func, self.target)
        except Exception as e:  # a TVM build failure is a property of the candidate
            return Measurement(False, stage="build", reason=_short(e))
        build_s = time.perf_counter() - t0
        try:
            ok, reason, err = self._check(ex)
        except Exception as e:
            return Measurement(False, stage="run", reason=_short(e), build_s=build_s)
        if not ok:
            return Measurement(
                False, stage="verify", reason=reason, max_abs_error=err, build_s=build_s
            )
        try:
            latency = self.time_executable(ex)
        except Exception as e:
            return Measurement(False, stage="timing", reason=_short(e), build_s=build_s)
        bound = self.kernel.flops / (self.options.peak_flops * self.options.roofline_slack)
        if latency < bound:
            return Measurement(
                False,
                stage="verify",
                reason=f"{latency * 1e6:.2f} us is below the roofline bound {bound * 1e6:.2f} us: "
                "the kernel cannot be that fast",
                build_s=build_s,
            )
        return Measurement(True, latency_s=latency, max_abs_error=err, build_s=build_s)

    def measure_baseline(self) -> Measurement:
        """The unscheduled kernel's own measurement (cached)."""
        if self.baseline is None:
            self.baseline = self.measure(self.kernel.func)
        return self.baseline


def _short(e: Exception) -> str:
    from terrazzo.codegen.tuning.program import schedule_error_reason

    return f"{type(e).__name__}: {schedule_error_reason(e)}"[:600]


__all__ = ["KernelEvaluator", "MeasureOptions", "Measurement", "build", "output_indices"]
