"""TVM MetaSchedule as the reference baseline of the schedule search (benchmarks, ``--proposer metaschedule``).

Sits beside the Terrazzo loop: ``tune_tir`` with an in-process builder (the default
LocalBuilder's worker processes time out on small machines), then the best schedule is
re-measured with the same :class:`KernelEvaluator` as Terrazzo's candidates, so the numbers
compare side by side. MetaSchedule records are traces, stored in its own JSON database
directory, which codegen can also apply.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from terrazzo.codegen.tuning.kernel import Kernel
from terrazzo.codegen.tuning.measure import KernelEvaluator, MeasureOptions


def default_cost_model() -> str:
    """``xgb`` when xgboost is importable, else ``random``."""
    return "xgb" if importlib.util.find_spec("xgboost") is not None else "random"


def _in_process_builder() -> Any:
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs: Any) -> list[Any]:
            import tvm
            from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
            from tvm.support.tar import tar

            out = []
            for bi in build_inputs:
                try:
                    m = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(bi.mod)
                    path = os.path.join(tempfile.mkdtemp(prefix="tz-ms-"), "m." + tar.output_format)
                    tvm.compile(m, target=bi.target).export_library(path, fcompile=tar)
                    out.append(BuilderResult(path, None))
                except Exception as e:  # a failed candidate, reported to MetaSchedule
                    out.append(BuilderResult(None, f"InProcessBuilder: {e}"))
            return out

    return InProcessBuilder()


@dataclass(frozen=True, slots=True)
class MetaScheduleResult:
    """Best MetaSchedule schedule for one kernel, re-measured by Terrazzo's evaluator."""

    kernel_name: str
    trials: int
    best_latency_s: float | None
    #: per measured candidate, MetaSchedule's own run time (seconds), in tuning order
    run_secs: tuple[float, ...]
    wall_s: float
    cost_model: str
    work_dir: str

    def trials_to_reach(self, latency_s: float) -> int | None:
        for i, t in enumerate(self.run_secs):
            if t <= latency_s:
                return i + 1
        return None


def tune_kernel_metaschedule(
    kernel: Kernel,
    target: Any,
    trials: int = 32,
    work_dir: str | None = None,
    cost_model: str | None = None,
    evaluator: KernelEvaluator | None = None,
    options: MeasureOptions | None = None,
    seed: int = 0,
) -> MetaScheduleResult:
    """Tune one kernel with ``tune_tir`` and re-measure the best schedule."""
    from tvm.s_tir import meta_schedule as ms

    cm = cost_model or default_cost_model()
    wd = work_dir or tempfile.mkdtemp(prefix="tz-ms-")
    t0 = time.perf_counter()
    func = kernel.func.with_attr("tirx.noalias", True)
    cores = _cores()
    target = _ms_target(target)
    db = ms.tune_tir(
        mod=func,
        target=target,
        work_dir=wd,
        max_trials_global=trials,
        num_trials_per_iter=min(16, trials),
        builder=_in_process_builder(),
        runner=ms.runner.LocalRunner(timeout_sec=120),
        cost_model=cm,
        num_tuning_cores=cores,
        seed=seed,
    )
    run_secs = []
    for rec in db.get_all_tuning_records():
        if rec.run_secs:
            run_secs.append(float(sum(float(x) for x in rec.run_secs) / len(rec.run_secs)))
    sch = ms.tir_integration.compile_tir(db, func, target)
    best = None
    if sch is not None:
        ev = evaluator or KernelEvaluator(kernel, target, options)
        m = ev.measure(sch.mod["main"])
        best = m.latency_s if m.ok else None
    return MetaScheduleResult(
        kernel.name, len(run_secs), best, tuple(run_secs), time.perf_counter() - t0, cm, wd
    )


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def _ms_target(target: Any) -> Any:
    """``target`` with ``num-cores`` set (MetaSchedule refuses targets without it)."""
    if "num-cores" in target.attrs:
        return target
    import tvm

    return tvm.target.Target({**_target_dict(target), "num-cores": _cores()})


def metaschedule_best(kernel: Kernel, target: Any, work_dir: str) -> Any | None:
    """The best schedule a finished MetaSchedule run left in ``work_dir``, as a PrimFunc.

    Lets a benchmark re-time a long run's result beside another searcher's without tuning
    again (the 1,000-trial run is made once and kept). None when the database has no
    record for this kernel.
    """
    from tvm.s_tir import meta_schedule as ms

    db = ms.database.JSONDatabase(work_dir=work_dir)
    func = kernel.func.with_attr("tirx.noalias", True)
    sch = ms.tir_integration.compile_tir(db, func, _ms_target(target))
    return None if sch is None else sch.mod["main"]


def _target_dict(target: Any) -> dict[str, Any]:
    return {"kind": str(target.kind.name), **{str(k): v for k, v in target.attrs.items()}}


__all__ = [
    "MetaScheduleResult",
    "default_cost_model",
    "metaschedule_best",
    "tune_kernel_metaschedule",
]
