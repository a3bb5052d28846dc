"""The model pipeline in one call: load → import → plan → split → build per target → ``.tzb`` bundle.

The only place that orders the stages for a model graph; each stage is a call into its own
package (``frontend``, ``placement``, ``codegen``, ``bundle``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from terrazzo.codegen import (
    SplitModel,
    StageBuild,
    build_stage,
    compile_module,
    describe_target,
    host_target,
    load_tuning_db,
    plan_assignment,
    relax_binding_names,
    split_relax,
    stage_targets,
    tuning_records_text,
)
from terrazzo.errors import CodegenError
from terrazzo.pipeline.load import (
    FleetLike,
    ModelLike,
    SLALike,
    as_fleet,
    as_sla,
    load_model,
    model_reference,
)
from terrazzo.pipeline.reference import ReferenceIO, reference_io

if TYPE_CHECKING:
    from terrazzo.costmodel import Catalog
    from terrazzo.ir import Graph
    from terrazzo.placement import SLA, Fleet, ModelSource, Plan

# Progress callback: (event, details). Events: "phase-start", "phase-end", "stage-built".
ProgressFn = Callable[[str, Mapping[str, Any]], None]


@dataclass(frozen=True, slots=True)
class CompileResult:
    """What ``compile_model`` produced, for summaries and benchmarks."""

    path: Path
    graph: Graph
    plan: Plan
    split: SplitModel
    builds: tuple[StageBuild, ...]
    phase_s: Mapping[str, float]
    bundle_bytes: int
    weight_bytes: int


def _noop(event: str, details: Mapping[str, Any]) -> None:
    return None


def compile_model(
    model: ModelLike,
    fleet: FleetLike,
    sla: SLALike,
    rps: float = 1.0,
    out_path: str | os.PathLike[str] = "model.tzb",
    solver: str = "milp",
    tuning_db: Any = None,
    sign_key: str | os.PathLike[str] | bool | None = True,
    *,
    catalog: Catalog | None = None,
    example_inputs: Any = None,
    shapes: Any = None,
    plan_shapes: Any = None,
    include_reference: bool = True,
    progress: ProgressFn | None = None,
    plan: Plan | None = None,
    batch_buckets: str | tuple[int, ...] | None = None,
    tune_buckets: int = 0,
) -> CompileResult:
    """Run the whole pipeline and return details (see ``compile`` for the arguments).

    ``plan`` skips placement and uses the given Plan (its ops must be the graph's ops).
    ``shapes`` declares input shapes (sizes or ``lo..hi`` ranges, ``terrazzo.ir.shapes``);
    ``plan_shapes`` the shape to plan for (default: each range's upper bound).
    ``batch_buckets`` (``"auto"`` or sizes) also builds every stage whose dimension 0 is one
    batch symbol at these static batch sizes (``codegen._buckets``): static kernels get the
    CPU default schedules a symbolic build cannot have; a batch runs on the smallest bucket
    that holds it, padded. Asking for buckets asserts that batch rows are independent.
    ``tune_buckets`` (trials per kernel) tunes each bucket's kernels before it is built, into
    ``tuning_db`` (a ``records.jsonl`` path or ``TuningDatabase``; default: the per-user
    database), which is saved; kernels with a record already are not tuned again.
    """
    from terrazzo.codegen import parse_buckets
    from terrazzo.costmodel import load_catalog
    from terrazzo.placement import ModelSource
    from terrazzo.placement import plan as make_plan

    buckets = parse_buckets(batch_buckets)  # a bad size fails before anything is built
    timer = _Phases(progress or _noop)
    with timer.phase("import"):
        graph, model_sha = load_model(model, example_inputs, shapes, plan_shapes)
        fleet_obj, sla_obj = as_fleet(fleet), as_sla(sla)
        cat = catalog if catalog is not None else load_catalog()
        db = _bucket_tuning_db(tuning_db, batch_buckets, tune_buckets)
        ref = model_reference(model)
        source = ModelSource(ref, model_sha) if ref is not None else None
    with timer.phase("reference"):
        io = reference_io(model, graph, example_inputs) if include_reference else None
    with timer.phase("plan"):
        plan_obj = plan or make_plan(graph, fleet_obj, sla_obj, rps=rps, solver=solver, catalog=cat)
        plan_mlir = _placed_ir(graph, plan_obj, source)
    return _split_build_bundle(
        graph, model_sha, plan_mlir, plan_obj, fleet_obj, sla_obj, cat, db, timer,
        out_path=out_path, sign_key=sign_key, include_reference=include_reference, io=io,
        buckets=buckets, tune_buckets=tune_buckets,
    )  # fmt: skip


def _bucket_tuning_db(tuning_db: Any, batch_buckets: Any, tune_buckets: int) -> Any:
    """The build's tuning database; with ``tune_buckets`` a ``TuningDatabase`` to tune into
    (the per-user one when none is given)."""
    from terrazzo.codegen.tuning import TuningDatabase, default_database_path

    if tune_buckets < 0:
        raise CodegenError(f"tune_buckets must be >= 0 trials per kernel, got {tune_buckets}")
    if tune_buckets == 0:
        return load_tuning_db(tuning_db)
    if batch_buckets is None:
        raise CodegenError("tuning buckets (--tune-buckets) needs --batch-buckets")
    db = load_tuning_db(tuning_db) if tuning_db is not None else None
    if db is None:
        db = TuningDatabase(default_database_path())
    if not isinstance(db, TuningDatabase):
        raise CodegenError(
            "--tune-buckets tunes into a Terrazzo records.jsonl database; "
            f"{str(tuning_db)!r} is a MetaSchedule directory"
        )
    return db


def compile_placed(
    placed: str | os.PathLike[str],
    fleet: FleetLike,
    sla: SLALike | None = None,
    rps: float | None = None,
    out_path: str | os.PathLike[str] = "model.tzb",
    tuning_db: Any = None,
    sign_key: str | os.PathLike[str] | bool | None = True,
    *,
    catalog: Catalog | None = None,
    include_reference: bool = True,
    progress: ProgressFn | None = None,
) -> CompileResult:
    """Build exactly the placement a placed tz MLIR file states (``terrazzo compile placed.mlir``).

    The file comes from ``terrazzo plan MODEL -o placed.mlir`` and may have been edited: its
    ``device`` and ``stage`` attributes decide the stages (``placement.plan_from_placed``). The
    model is re-imported from the file's ``model`` attribute (``zoo:NAME`` or a path, relative
    paths taken from the file's folder) and must match ``model_sha256``.

    Args:
        placed: path of the placed ``.mlir`` file.
        fleet: the fleet whose device classes the ``device`` attributes name (required: the IR
            records classes, not counts or prices).
        sla: overrides the SLA recorded in the IR (``sla_s``); needed when it records none.
        rps: overrides the request rate recorded in the IR (``rps``; default 1).
        out_path, tuning_db, sign_key, catalog, include_reference, progress: as for
            ``compile_model``.

    Raises:
        VerifyError: one line naming the op — invalid text, an unknown device class, a cyclic
            stage graph, ops missing from or not in the model; or a model that changed.
    """
    from terrazzo.costmodel import load_catalog
    from terrazzo.errors import VerifyError
    from terrazzo.placement import (
        check_placed,
        placed_rps,
        placed_sla,
        placed_source,
        plan_from_placed,
        read_placed,
    )

    timer = _Phases(progress or _noop)
    with timer.phase("import"):
        path = Path(placed)
        if not path.is_file():
            raise VerifyError(f"placed IR {str(path)!r} does not exist")
        placed_g = read_placed(path.read_text())
        source = placed_source(placed_g)
        model: str | Path = source.model
        if not source.model.startswith("zoo:"):
            model = path.parent / source.model  # an absolute model path stays as it is
        graph, model_sha = load_model(model)
        if source.sha256 and model_sha != source.sha256:
            raise VerifyError(
                f"model {source.model!r} has sha256 {model_sha[:12]}… but the placed IR was "
                f"planned from {source.sha256[:12]}…; re-run terrazzo plan"
            )
        fleet_obj = as_fleet(fleet)
        check_placed(placed_g, graph, fleet_obj)  # refuse a bad edit before anything runs
        sla_obj = as_sla(sla) if sla is not None else placed_sla(placed_g)
        if sla_obj is None:
            raise VerifyError(f"placed IR {str(path)!r} records no SLA (sla_s); pass --sla")
        rps_v = rps if rps is not None else (placed_rps(placed_g) or 1.0)
        cat = catalog if catalog is not None else load_catalog()
        db = load_tuning_db(tuning_db)
    with timer.phase("reference"):
        io = reference_io(model, graph) if include_reference else None
    with timer.phase("plan"):
        plan_obj = plan_from_placed(placed_g, graph, fleet_obj, sla_obj, rps_v, catalog=cat)
        plan_mlir = _placed_ir(graph, plan_obj, source)
    return _split_build_bundle(
        graph, model_sha, plan_mlir, plan_obj, fleet_obj, sla_obj, cat, db, timer,
        out_path=out_path, sign_key=sign_key, include_reference=include_reference, io=io,
    )  # fmt: skip


class _Phases:
    """Times the pipeline's phases and reports them through the progress callback."""

    def __init__(self, emit: ProgressFn) -> None:
        self.emit = emit
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        self.emit("phase-start", {"phase": name})
        yield  # an exception skips phase-end, as before
        self.seconds[name] = time.perf_counter() - t0
        self.emit("phase-end", {"phase": name, "seconds": self.seconds[name]})


def _placed_ir(graph: Graph, plan: Plan, source: ModelSource | None) -> str:
    """The placement→MLIR pass, checked by the IR's parser and verifier when tests ask."""
    from terrazzo.pipeline.checks import verify_placed_ir
    from terrazzo.placement import plan_to_mlir

    text = plan_to_mlir(graph, plan, source)
    verify_placed_ir(text, graph, plan)
    return text


def _split_build_bundle(
    graph: Graph,
    model_sha: str,
    plan_mlir: str,
    plan_obj: Plan,
    fleet_obj: Fleet,
    sla_obj: SLA,
    cat: Catalog,
    db: Any,
    timer: _Phases,
    *,
    out_path: str | os.PathLike[str],
    sign_key: str | os.PathLike[str] | bool | None,
    include_reference: bool,
    io: ReferenceIO | None = None,
    buckets: str | tuple[int, ...] | None = None,
    tune_buckets: int = 0,
) -> CompileResult:
    """The stages after placement: split → build per target → bundle."""
    from terrazzo.bundle import StageContent, write_bundle
    from terrazzo.codegen import BucketSpec, plan_stage_buckets

    emit, phase, phase_s = timer.emit, timer.phase, timer.seconds
    with phase("split"):
        assignment = plan_assignment(graph, plan_obj)
        split = split_relax(graph.relax_mod, assignment)
        choices = stage_targets(plan_obj, cat)
    work = Path(tempfile.mkdtemp(prefix="tz-build-"))
    try:
        builds: list[StageBuild] = []
        with phase("build"):
            pstages = {int(s.index): s for s in plan_obj.stages}
            for st in split.stages:
                pst = pstages[st.index]
                choice = choices[pst.device]
                emit("stage-start", {"index": st.index, "device": pst.device, "ops": len(st.ops)})
                want: BucketSpec | str | None = None
                if buckets is not None and st.outputs:  # (a stage without outputs is dead)
                    want = plan_stage_buckets(st, buckets, graph_ranges(graph))
                b = build_stage(
                    st,
                    choice,
                    work,
                    db,
                    want if isinstance(want, BucketSpec) else None,
                    tune_buckets=tune_buckets,
                )
                if tune_buckets and getattr(db, "path", None) is not None:
                    db.save()  # what was tuned is kept even if a later stage fails
                if isinstance(want, str):
                    b = replace(b, notes=(*b.notes, want))
                builds.append(b)
                emit(
                    "stage-built",
                    {
                        "index": st.index,
                        "device": pst.device,
                        "target": describe_target(choice.target),
                        "fallback_reason": choice.fallback_reason,
                        "notes": b.notes,
                        "seconds": b.build_s,
                        "ops": len(st.ops),
                        "files": sorted(b.files),
                        "buckets": b.buckets.sizes if b.buckets else (),
                    },
                )
            ref_lib: Path | str | None = None
            ref_weights: tuple[str, ...] = ()
            ref_outputs: tuple[Any, ...] = ()
            if include_reference and len(split.stages) == 1:
                # One stage is the whole model: its host build is the reference.
                ref_lib, ref_weights = "stages/0/host.so", split.stages[0].weights
            elif include_reference:
                emit("stage-start", {"index": "reference", "device": "host", "ops": len(graph.ops)})
                t0 = time.perf_counter()
                whole = split_relax(
                    graph.relax_mod,
                    {o: 0 for o in _binding_names(graph)},
                    export=_cut_values(graph, assignment),
                )
                ref = whole.stages[0]
                ref_outputs = _specs(ref.outputs, ref.output_types, ref.output_dims, graph)
                ex = compile_module(ref.mod, host_target(), db)
                ref_lib = work / "reference.so"
                ex.export_library(str(ref_lib))
                ref_weights = ref.weights
                emit("stage-built", {"index": "reference", "device": "host",
                                     "target": describe_target(host_target()), "seconds": time.perf_counter() - t0,
                                     "fallback_reason": None, "notes": (), "ops": len(graph.ops), "files": ["host.so"]})  # fmt: skip
        with phase("bundle"):
            contents = []
            for st, b in zip(split.stages, builds, strict=True):
                pst = pstages[st.index]
                contents.append(
                    StageContent(
                        index=st.index,
                        device=pst.device,
                        target=b.choice.target,
                        fallback_reason=b.choice.fallback_reason,
                        inputs=_specs(st.inputs, st.input_types, st.input_dims, graph),
                        outputs=_specs(st.outputs, st.output_types, st.output_dims, graph),
                        weights=split.stage_weights(st.index),
                        files=b.files,
                        replicas=int(pst.replicas),
                        ops=st.ops,
                        notes=b.notes,
                        predicted_latency_s=float(pst.latency_s),
                        build_s=b.build_s,
                        buckets=b.buckets.to_json() if b.buckets else None,
                    )
                )
            path = write_bundle(
                out_path,
                name=graph.name,
                inputs=_specs(split.inputs, split.input_types, split.input_dims, graph),
                outputs=_specs(split.outputs, split.output_types, split.output_dims, graph),
                stages=contents,
                plan_mlir=plan_mlir,
                plan_json=plan_obj.to_json(),
                model_sha256=model_sha,
                fleet=_fleet_json(fleet_obj),
                sla=sla_obj.to_json(),
                plan_summary=_plan_summary(plan_obj, graph, builds),
                reference_library=ref_lib,
                reference_weights=ref_weights,
                reference_outputs=ref_outputs,
                reference_io=io,
                tuning_records=tuning_records_text(db),
                host_target=host_target(),
                sign_key=sign_key,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return CompileResult(
        path=path,
        graph=graph,
        plan=plan_obj,
        split=split,
        builds=tuple(builds),
        phase_s=phase_s,
        bundle_bytes=path.stat().st_size,
        weight_bytes=int(sum(w.nbytes for w in split.weights.values())),
    )


def _cut_values(graph: Graph, assignment: Mapping[str, int]) -> set[str]:
    """Values computed in one stage and read in another (what crosses the cuts)."""
    return {
        v
        for op in graph.ops
        for v in op.inputs
        if v in assignment and assignment[v] != assignment.get(op.name, assignment[v])
    }


def _binding_names(graph: Graph) -> list[str]:
    return relax_binding_names(graph.relax_mod)


def graph_ranges(graph: Graph) -> dict[str, tuple[int, int]]:
    """Symbol → declared range of a model graph with symbolic dimensions (``{}`` when static)."""
    from terrazzo.ir.shapes import parse_ranges

    return parse_ranges(str(dict(graph.attrs).get("dynamic_dims", "")))


def graph_plan_sizes(graph: Graph) -> dict[str, int]:
    """Symbol → the size the graph's costs (and so the plan) assume (``{}`` when static)."""
    from terrazzo.ir.shapes import parse_sizes

    return parse_sizes(str(dict(graph.attrs).get("plan_shape", "")))


def _specs(
    names: tuple[str, ...], types: tuple[Any, ...], dims: tuple[tuple[str, ...], ...], graph: Graph
) -> tuple[Any, ...]:
    """Boundary signatures; symbolic dimensions carry their name and declared range."""
    from terrazzo.bundle import TensorSpec
    from terrazzo.ir.shapes import dim_bounds

    ranges = graph_ranges(graph)
    out = []
    for i, (n, t) in enumerate(zip(names, types, strict=True)):
        d = dims[i] if i < len(dims) else ()
        if not d:
            out.append(TensorSpec(n, t.dtype, tuple(t.shape)))
            continue
        bounds = tuple(
            dim_bounds(e, ranges) if e else (int(s), int(s))
            for e, s in zip(d, t.shape, strict=True)
        )
        out.append(TensorSpec(n, t.dtype, tuple(t.shape), d, bounds))
    return tuple(out)


def _fleet_json(fleet: Fleet) -> dict[str, Any]:
    try:
        return dict(fleet.model_dump(mode="json"))
    except Exception:
        return {"devices": list(getattr(fleet, "names", lambda: ())())}


def _plan_summary(
    plan: Plan, graph: Graph | None = None, builds: tuple[StageBuild, ...] | list[StageBuild] = ()
) -> dict[str, Any]:
    keys = ("solver", "gap", "latency_s", "throughput_rps", "usd_per_hour", "usd_per_request",
            "energy_j_per_request", "rps", "solve_time_s")  # fmt: skip
    out = {k: getattr(plan, k) for k in keys if hasattr(plan, k)}
    out["stages"] = len(plan.stages)
    out["devices"] = dict(getattr(plan, "devices", {}) or {})
    out["notes"] = list(getattr(plan, "notes", ()) or ())
    if graph is not None and graph_ranges(graph):
        # What a dynamic-shape bundle serves, and the one shape its plan was costed at.
        out["dynamic_dims"] = {k: list(v) for k, v in graph_ranges(graph).items()}
        out["plan_shape"] = graph_plan_sizes(graph)
        out["shape_build"] = "symbolic"
        bucketed = {b.index: b.buckets.to_json() for b in builds if b.buckets is not None}
        if bucketed:
            # Static builds at a few batch sizes beside the symbolic one (codegen._buckets).
            out["shape_build"] = "bucketed"
            out["buckets"] = {str(i): v for i, v in bucketed.items()}
    return out


def compile(  # noqa: A001 - the public name mirrors `terrazzo compile`
    model: ModelLike,
    fleet: FleetLike,
    sla: SLALike,
    rps: float = 1.0,
    out_path: str | os.PathLike[str] = "model.tzb",
    solver: str = "milp",
    tuning_db: Any = None,
    sign_key: str | os.PathLike[str] | bool | None = True,
    **options: Any,
) -> Path:
    """Compile a model for a fleet under an SLA into a ``.tzb`` bundle.

    Args:
        model: an ``.onnx`` path, a zoo name (``zoo:bert``), an ``ir.Graph`` from a frontend,
            or a ``torch.nn.Module`` (pass ``example_inputs=``).
        fleet: a ``Fleet``, a fleet YAML path, or a mapping (``{"devices": {...}}``).
        sla: an ``SLA``, seconds, or text such as ``"50ms"``.
        rps: target request rate.
        out_path: where to write the bundle.
        solver: placement solver (see ``terrazzo.placement.SOLVERS``).
        tuning_db: optional tuning database applied at build time (records go in the bundle).
        sign_key: PEM Ed25519 private key to sign the manifest with; ``True`` (default): the
            local key (created on first use, trusted on this machine); ``None``: unsigned.
        **options: ``catalog``, ``example_inputs``, ``shapes`` (sizes or ``lo..hi`` ranges
            per input: ``{"x": "1..32x3x224x224"}``), ``plan_shapes``, ``include_reference``,
            ``progress`` (see ``compile_model``).

    Returns:
        The bundle's path.
    """
    return compile_model(
        model, fleet, sla, rps, out_path, solver, tuning_db, sign_key, **options
    ).path
