"""Codegen step 2b: build one stage's Relax module with TVM for its target and for the host CPU.

The device artifact is built for the stage's TargetChoice (``cuda`` with dlight default GPU
schedules, ``llvm`` with the class's ``mcpu``, ...); a host-CPU ``llvm`` library is always
built too, so the runtime can run any stage on this machine when its device is absent.
An optional MetaSchedule tuning database is applied before the default schedules.

Stage builds split each stage into a once-per-load weight preparation and a per-request
function (``lift_weight_prep``): ops that read only weights (the importer's transposes before
matmuls, the NHWC/HWIO conv weight layouts) would otherwise run on every call, because the
weights are parameters, not foldable constants.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terrazzo.codegen._buckets import BucketSpec, bind_symbol, tune_bucket
from terrazzo.codegen._split import StageModule
from terrazzo.codegen._targets import TargetChoice, host_target
from terrazzo.errors import CodegenError


@dataclass(frozen=True, slots=True)
class StageBuild:
    """The compiled files of one stage.

    Attributes:
        index: stage index.
        choice: the device target choice (with its fallback reason, if any).
        files: member name inside the stage directory (``host.so``, ``device.so``,
            ``kernels.cu``, ``kernels.fatbin``) → path on disk.
        notes: sentences about what was not built and why (e.g. no fatbin for sm_70).
        build_s: wall time of all builds of this stage, seconds.
        buckets: the static batch sizes built beside the symbolic build (``host_b<N>.so``
            in ``files``; ``codegen._buckets``), None when there are none.
    """

    index: int
    choice: TargetChoice
    files: Mapping[str, Path] = field(hash=False)
    notes: tuple[str, ...] = ()
    build_s: float = 0.0
    buckets: BucketSpec | None = None


def _same_target(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = ("kind", "mcpu", "mtriple", "mattr")
    return all(a.get(k) == b.get(k) for k in keys if k != "mcpu") and (
        a.get("mcpu") in (None, b.get("mcpu"))
    )


def _apply_tuning_pass(target: Any, db: Any) -> Any:
    """Module pass applying a Terrazzo TuningDatabase (schedule programs) to the PrimFuncs."""
    import tvm

    from terrazzo.codegen.tuning.database import apply_tuning

    @tvm.transform.module_pass(opt_level=0, name="TerrazzoApplyTuning")
    def _apply(mod: Any, _ctx: Any) -> Any:
        return apply_tuning(mod, target, db)

    return _apply


def _default_schedules_pass(target: Any) -> Any:
    """Module pass giving every CPU kernel without a tuning record its default schedule, then
    replacing scalar libm ``erf`` calls with vectorizable polynomials (``vector_math``)."""
    import tvm

    from terrazzo.codegen.tuning.defaults import apply_default_schedules
    from terrazzo.codegen.tuning.vector_math import apply_vector_math

    @tvm.transform.module_pass(opt_level=0, name="TerrazzoDefaultSchedules")
    def _apply(mod: Any, _ctx: Any) -> Any:
        return apply_vector_math(apply_default_schedules(mod, target))

    return _apply


def _pipeline(
    target: Any, tuning_dir: str | None, tuning_records: Any = None, defaults: bool = True
) -> Any:
    """The Relax → VM pipeline for ``target``: default passes, tuned schedules, then default
    schedules for the rest (``tuning.defaults`` on CPUs, dlight on GPUs)."""
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight as dl

    from terrazzo.frontend import NanPropagatingMinMax

    gpu = "gpu" in target.keys
    legalize = [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    if tuning_records is not None:
        legalize.append(_apply_tuning_pass(target, tuning_records))
    if tuning_dir is not None:
        legalize.append(relax.transform.MetaScheduleApplyDatabase(work_dir=tuning_dir))
    if not gpu and defaults:
        legalize.append(_default_schedules_pass(target))
    if gpu:
        legalize.append(
            dl.ApplyDefaultSchedule(
                dl.gpu.Matmul(),
                dl.gpu.GEMV(),
                dl.gpu.Reduction(),
                dl.gpu.GeneralReduction(),
                dl.gpu.Fallback(),
            )
        )
    # After tuning and dlight (tuning records match the kernels before this rewrite).
    legalize.append(NanPropagatingMinMax(gpu=gpu))
    lower = [
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
    ]
    finalize = [
        relax.transform.StaticPlanBlockMemory(),
        *([relax.transform.RewriteCUDAGraph()] if _cuda_graphs(target) else []),
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]
    dispatch = []
    if gpu:
        dispatch = [relax.backend.DispatchSampling(), relax.backend.DispatchSortScan()]

    @tvm.transform.module_pass(opt_level=0)
    def _run(mod: Any, _ctx: Any) -> Any:
        with target:
            return tvm.transform.Sequential(dispatch + legalize + lower + finalize)(mod)

    return _run


def _cuda_graphs(target: Any) -> bool:
    """Whether CUDA stages capture their static parts as CUDA graphs (``TERRAZZO_CUDA_GRAPH=0``
    turns it off, a diagnostic switch for comparing a stage with and without capture)."""
    return bool(target.kind.name == "cuda" and os.environ.get("TERRAZZO_CUDA_GRAPH", "1") != "0")


def load_tuning_db(tuning_db: Any) -> Any:
    """Normalise a tuning database argument.

    Accepts None, a Terrazzo ``TuningDatabase``, a path to its ``records.jsonl``, a
    MetaSchedule JSON database directory, or a ``ms.Database`` object.
    """
    if tuning_db is None or not isinstance(tuning_db, str | os.PathLike):
        return tuning_db
    p = Path(tuning_db)
    if p.is_dir():
        if not (p / "database_tuning_record.json").exists():
            raise CodegenError(
                f"tuning database directory {str(p)!r} has no database_tuning_record.json"
            )
        return p
    if not p.is_file():
        raise CodegenError(f"tuning database {str(p)!r} does not exist")
    from terrazzo.codegen.tuning.database import TuningDatabase

    return TuningDatabase(p)


def tuning_records_text(tuning_db: Any) -> str:
    """The records of a (normalised) tuning database as JSON lines, for the bundle."""
    if tuning_db is None:
        return ""
    if isinstance(tuning_db, Path):
        return (tuning_db / "database_tuning_record.json").read_text()
    if hasattr(tuning_db, "to_jsonl"):
        return str(tuning_db.to_jsonl())
    return ""


#: Name of the weight-preparation function a stage library exports next to ``main``.
WEIGHT_PREP_FUNCTION = "main_transform_params"


def lift_weight_prep(mod: Any) -> Any:
    """Split ``main`` into a weight-preparation function and a per-request ``main``.

    ``main`` must carry the ``num_input`` attribute (its first ``num_input`` parameters are
    per-request inputs, the rest weights; ``split_relax`` sets it). Every binding that depends
    only on weights (and constants) moves to ``main_transform_params(weights_tuple) ->
    prepared_tuple``; ``main`` becomes ``main(inputs..., prepared...)``. A module whose
    ``main`` has no ``num_input`` attribute, no weight parameters or no per-request inputs
    (every result a function of weights alone) is returned unchanged.

    Args:
        mod: a Relax IRModule, before LegalizeOps (high-level ops).

    Returns:
        The module, with ``WEIGHT_PREP_FUNCTION`` added when there were weights.
    """
    from tvm import relax

    func = mod["main"]
    attrs = func.attrs
    if attrs is None or "num_input" not in attrs:
        return mod
    n_input = int(attrs["num_input"])
    if n_input >= len(func.params) or n_input == 0:
        # No weights, or a stage computed from weights alone (a planner may cut a lone
        # transpose into its own stage): LiftTransformParams would leave ``main`` empty.
        return mod
    lifted = relax.transform.LiftTransformParams()(mod)
    # Same guard for stages whose every result depends on weights only (inputs unused).
    return mod if relax.analysis.free_vars(lifted["main"]) else lifted


def prepare_build_module(mod: Any, target: Any, *, lift_weights: bool = False) -> Any:
    """The Relax module ``compile_module`` hands to ``tvm.compile`` (before its pipeline).

    Build preparation, inference decompositions (batch norm), NHWC/HWIO convolutions on CPU
    targets (``prepare_module``: the layout the schedule search tunes) and, with
    ``lift_weights``, ``lift_weight_prep``.

    Args:
        mod: a Relax IRModule (model or stage).
        target: a ``tvm.target.Target``.
        lift_weights: split weight preparation out of ``main``.
    """
    from tvm import relax

    from terrazzo.codegen.tuning import prepare_module
    from terrazzo.frontend import prepare_for_build

    mod = relax.transform.DecomposeOpsForInference()(prepare_for_build(mod))
    # NHWC/HWIO convolutions on CPU targets: the layout the schedule search tunes for, so
    # tuned records match by workload hash (and untuned builds see the same kernels).
    mod = prepare_module(mod, target)
    if lift_weights:
        mod = lift_weight_prep(mod)
    return mod


def request_module(mod: Any, target: Any) -> Any:
    """The per-request part of a stage exactly as ``build_stage`` compiles it, for tuning.

    ``prepare_build_module(..., lift_weights=True)`` without ``main_transform_params``: the
    kernels that run on every call, whose workload hashes the build looks up in a tuning
    database (weight preparation runs once at load and is not worth tuning).

    Args:
        mod: a stage's Relax IRModule (``StageModule.mod``).
        target: a ``tvm.target.Target``.

    Returns:
        A Relax IRModule holding ``main`` (and whatever else it calls).
    """
    import tvm

    prepared = prepare_build_module(mod, target, lift_weights=True)
    return tvm.IRModule(
        {gv: f for gv, f in prepared.functions.items() if gv.name_hint != WEIGHT_PREP_FUNCTION},
        attrs=prepared.attrs,
    )


def compile_module(
    mod: Any,
    target: Mapping[str, Any],
    tuning_db: Any = None,
    *,
    lift_weights: bool = False,
) -> Any:
    """Compile a Relax module for a target dict; returns the ``relax.VMExecutable``.

    Args:
        mod: Relax IRModule.
        target: dict form of a ``tvm.target.Target`` (``host`` key for GPU targets).
        tuning_db: None or a database accepted by ``load_tuning_db``.
        lift_weights: apply ``lift_weight_prep`` after the layout changes: the executable then
            exports ``main_transform_params`` (run once on the weights) and a ``main`` taking
            the prepared weights. Off by default: ``main(inputs..., weights...)``.
    """
    import tvm

    t = dict(target)
    host = t.pop("host", None)
    tgt = tvm.target.Target(t, host=host) if host else tvm.target.Target(t)
    db = load_tuning_db(tuning_db)
    tuning_dir = str(db) if isinstance(db, Path) else None
    records = db if db is not None and hasattr(db, "to_jsonl") else None
    mod = prepare_build_module(mod, tgt, lift_weights=lift_weights)

    def build(defaults: bool) -> Any:
        if db is not None and tuning_dir is None and records is None:
            with db:
                return tvm.compile(
                    mod, target=tgt, relax_pipeline=_pipeline(tgt, None, defaults=defaults)
                )
        return tvm.compile(
            mod, target=tgt, relax_pipeline=_pipeline(tgt, tuning_dir, records, defaults)
        )

    try:
        try:
            return build(defaults=True)
        except Exception as e:
            if "gpu" in tgt.keys or not _defaults_enabled():
                raise
            # A default schedule LLVM cannot build must not cost the user the build: say so
            # once and build the plain loop nests (what every build did before defaults).
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            warnings.warn(
                f"build with default CPU schedules failed ({first[:200]}); building without them",
                stacklevel=2,
            )
            return build(defaults=False)
    except Exception as e:  # TVM raises its own error types; keep the first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CodegenError(f"TVM could not build for {t}: {first}") from e


def _defaults_enabled() -> bool:
    from terrazzo.codegen.tuning.defaults import enabled

    return enabled()


def cuda_source(executable: Any) -> str | None:
    def walk(m: Any) -> str | None:
        if m.kind == "cuda":
            return str(m.inspect_source(""))
        for sub in m.imports:
            found = walk(sub)
            if found is not None:
                return found
        return None

    return walk(executable.mod)


def build_stage(
    stage: StageModule,
    choice: TargetChoice,
    work_dir: str | os.PathLike[str],
    tuning_db: Any = None,
    buckets: BucketSpec | None = None,
    tune_buckets: int = 0,
) -> StageBuild:
    """Build one stage for its device target and for the host CPU, exporting the files.

    Both libraries export ``main_transform_params`` (weights → prepared weights, run once at
    load) and ``main(inputs..., prepared...)`` when the stage has weights (see
    ``lift_weight_prep``); ``StageRunner`` handles both forms.

    Args:
        stage: the stage's Relax module (from ``split_relax`` / ``split_stages``).
        choice: the device class's target (``choose_target``).
        work_dir: directory the stage's files are written into (``stage{index}/``).
        tuning_db: optional MetaSchedule database (directory or object) applied at build time.
        buckets: also build the host library at each of these static batch sizes
            (``host_b<N>.so``, see ``codegen._buckets``); a size TVM cannot build is left out
            with a note.
        tune_buckets: before building each bucket, tune its kernels that ``tuning_db`` (a
            ``TuningDatabase``) has no record for, with this many trials per kernel
            (``codegen._buckets.tune_bucket``); 0: default schedules and existing records only.

    Returns:
        StageBuild naming the files written and what could not be built.

    Raises:
        CodegenError: TVM could not build the stage for the host CPU.
    """
    t0 = time.perf_counter()
    out = Path(work_dir) / f"stage{stage.index}"
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    notes: list[str] = []
    import tvm

    # the stage's Relax module as it was split (weights are parameters, so it is small): a
    # server builds it again for a target the bundle has no build for (adaptive re-placement)
    files["ir.json"] = out / "ir.json"
    files["ir.json"].write_text(tvm.ir.save_json(stage.mod))
    host = host_target()
    host_ex = compile_module(stage.mod, host, tuning_db, lift_weights=True)
    files["host.so"] = out / "host.so"
    host_ex.export_library(str(files["host.so"]))
    built = _build_buckets(stage, host, tuning_db, buckets, out, files, notes, tune_buckets)
    if not _same_target(choice.target, host):
        try:
            dev_ex = compile_module(stage.mod, choice.target, tuning_db, lift_weights=True)
            files["device.so"] = out / "device.so"
            dev_ex.export_library(str(files["device.so"]))
        except Exception as e:  # a cross-compile without a linker, an unsupported op, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            notes.append(f"device build for {dict(choice.target)} failed: {first}")
            dev_ex = None
        if dev_ex is not None and choice.kind == "cuda":
            src = cuda_source(dev_ex)
            if src is not None:
                files["kernels.cu"] = out / "kernels.cu"
                files["kernels.cu"].write_text(src)
                if choice.compile_fatbin:
                    fatbin = nvcc_fatbin(src, str(choice.target.get("arch", "")))
                    if isinstance(fatbin, bytes):
                        files["kernels.fatbin"] = out / "kernels.fatbin"
                        files["kernels.fatbin"].write_bytes(fatbin)
                    else:
                        notes.append(fatbin)
    return StageBuild(stage.index, choice, files, tuple(notes), time.perf_counter() - t0, built)


def _build_buckets(
    stage: StageModule,
    host: Mapping[str, Any],
    tuning_db: Any,
    buckets: BucketSpec | None,
    out: Path,
    files: dict[str, Path],
    notes: list[str],
    tune_trials: int = 0,
) -> BucketSpec | None:
    """Host builds of ``stage`` with its batch symbol fixed to each bucket size (static
    kernels: default schedules and tuning records apply, after tuning the bucket's kernels
    when ``tune_trials``); the sizes built, or None."""
    if buckets is None:
        return None
    done = []
    for n in buckets.sizes:
        if tune_trials > 0 and hasattr(tuning_db, "lookup"):
            try:
                tuned = tune_bucket(stage.mod, buckets.symbol, n, host, tuning_db, tune_trials)
                kept = sum(1 for r in tuned if r.record is not None)
                notes.append(f"{buckets.symbol}={n}: tuned {len(tuned)} kernel(s), {kept} kept")
            except Exception as e:  # the bucket still builds with its default schedules
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                notes.append(f"tuning at {buckets.symbol}={n} failed: {first[:200]}")
        try:
            ex = compile_module(
                bind_symbol(stage.mod, buckets.symbol, n), host, tuning_db, lift_weights=True
            )
        except Exception as e:  # the symbolic build still serves this size
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            notes.append(f"no static build at {buckets.symbol}={n}: {first[:200]}")
            continue
        files[f"host_b{n}.so"] = out / f"host_b{n}.so"
        ex.export_library(str(files[f"host_b{n}.so"]))
        done.append(n)
    return BucketSpec(buckets.symbol, tuple(done)) if done else None


#: TVM's nvcc call adds ``--use_fast_math`` unless this is set. Fast math turns ``powf`` into
#: ``exp2(y·log2 x)``: NaN for every negative base (GPT-2's tanh GELU, every RMSNorm's x²), found
#: on an H200 where GPT-2, Llama and T5 answered all-NaN. Correct before fast: never fast math.
NO_FAST_MATH_ENV = "TVM_CUDA_NVCC_NO_FAST_MATH"


@contextlib.contextmanager
def precise_cuda_math() -> Iterator[None]:
    """Within this block TVM compiles CUDA with nvcc without ``--use_fast_math``."""
    old = os.environ.get(NO_FAST_MATH_ENV)
    os.environ[NO_FAST_MATH_ENV] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(NO_FAST_MATH_ENV, None)
        else:
            os.environ[NO_FAST_MATH_ENV] = old


def nvcc_fatbin(source: str, arch: str) -> bytes | str:
    """Compile CUDA source with nvcc (IEEE math, no ``--use_fast_math``); the fatbin bytes, or a
    sentence saying why not."""
    import tvm
    from tvm.support import nvcc

    suffix = arch.removeprefix("sm_")
    flags = ["-gencode", f"arch=compute_{suffix},code=sm_{suffix}"]
    try:
        with tvm.target.Target({"kind": "cuda", "arch": arch}), precise_cuda_math():
            return bytes(
                nvcc.compile_cuda(source, target_format="fatbin", arch=flags, compiler="nvcc")
            )
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"nvcc could not compile the CUDA source for {arch}: {first[:200]}"
