"""``terrazzo tune``: search schedules for the hot kernels of a model's stages and store them.

Sits after placement and before ``terrazzo compile --tuning DB``: the model is imported and
(with ``--fleet``) planned and split into stages; the kernels of each stage are tuned for
every target runnable on this machine (the host CPU, which every stage is built for, and the
stage's own target where it can run here), and the best programs go into the database.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from terrazzo.errors import TerrazzoError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tune",
        help="search kernel schedules (offline, LLM or MetaSchedule) into a tuning database",
        description="Tune the hottest kernels of MODEL's stages and write a tuning database "
        "that `terrazzo compile --tuning DB` applies.",
    )
    p.add_argument("model", help="an .onnx file or a zoo name (zoo:mlp, zoo:cnn, ...)")
    p.add_argument("--fleet", help="fleet YAML; stages are tuned for their device class targets")
    p.add_argument("--sla", default="10s", help="latency SLA used to plan stages (default 10s)")
    p.add_argument(
        "--tuning",
        help="database path (records.jsonl; a directory for metaschedule); "
        "default: the per-user cache",
    )
    p.add_argument("--trials", type=int, default=32, help="trials per kernel (default 32)")
    p.add_argument("--batch", type=int, default=4, help="candidates per round (default 4)")
    p.add_argument(
        "--kernels",
        type=int,
        default=None,
        help="tune at most K hottest kernels per stage (default: every kernel above 1%% of "
        "the stage's predicted time)",
    )
    p.add_argument("--proposer", choices=("offline", "llm", "metaschedule"), default="offline")
    p.add_argument("--llm-url", help="OpenAI-compatible base URL (env TERRAZZO_LLM_URL)")
    p.add_argument("--llm-model", help="model name (env TERRAZZO_LLM_MODEL)")
    p.add_argument("--llm-timeout", type=float, default=60.0, help="seconds per LLM request")
    p.add_argument("--retune", action="store_true", help="tune kernels already in the database")
    p.add_argument(
        "--calibration",
        metavar="PROFILE.json",
        help="calibrated CPU profile (`terrazzo calibrate --out`); kernels are then "
        "ranked by the cost model's predicted time (env TERRAZZO_CALIBRATION)",
    )
    from terrazzo.commands._common import add_shape_args

    add_shape_args(p)
    p.set_defaults(func=run)


def _runnable_targets(stage_targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Host CPU first, then stage targets that can run here (same CPU, or CUDA with a GPU)."""
    import tvm

    from terrazzo.codegen import host_target

    host = dict(host_target())
    out = [host]
    for t in stage_targets:
        kind = t.get("kind")
        if kind == "llvm" and t.get("mcpu") in (None, host.get("mcpu")) and t not in out:
            out.append(dict(t))
        elif kind == "cuda" and tvm.cuda(0).exist and t not in out:
            out.append(dict(t))
    return out


def run(args: argparse.Namespace) -> int:
    from terrazzo.commands._common import require_compiler

    require_compiler("tune")
    import tvm

    from terrazzo.codegen.tuning import (
        LLMProposer,
        OfflineProposer,
        TuneOptions,
        TuningDatabase,
        default_database_path,
        llm_endpoint,
        tune_module,
    )
    from terrazzo.pipeline import load_model

    if args.trials < 1 or (args.kernels is not None and args.kernels < 1) or args.batch < 1:
        raise TerrazzoError("--trials, --batch and --kernels must be at least 1")
    from terrazzo.commands._common import shapes_from_args

    shapes, plan_shapes = shapes_from_args(args)
    graph, _sha = load_model(args.model, shapes=shapes or None, plan_shapes=plan_shapes or None)
    graph = _static_for_tuning(graph)
    modules: list[tuple[str, Any, list[dict[str, Any]]]] = []
    if args.fleet:
        from terrazzo.codegen import plan_assignment, request_module, split_relax, stage_targets
        from terrazzo.costmodel import load_catalog
        from terrazzo.pipeline import as_fleet, as_sla
        from terrazzo.placement import plan as make_plan

        cat = load_catalog()
        plan = make_plan(graph, as_fleet(args.fleet), as_sla(args.sla), catalog=cat)
        split = split_relax(graph.relax_mod, plan_assignment(graph, plan))
        choices = stage_targets(plan, cat)
        devices = {int(s.index): s.device for s in plan.stages}
        for st in split.stages:
            choice = choices[devices[st.index]]
            targets = _runnable_targets([dict(choice.target)])
            # Tune the per-request kernels exactly as build_stage compiles them: weight-only
            # work (transposes, layout changes) is lifted out and runs once at load.
            per_request = request_module(st.mod, tvm.target.Target(targets[0]))
            modules.append((f"stage {st.index} ({devices[st.index]})", per_request, targets))
    else:
        modules.append(("model", graph.relax_mod, _runnable_targets([])))

    if args.proposer == "metaschedule":
        return _run_metaschedule(args, modules)

    db_path = args.tuning or default_database_path()
    db = TuningDatabase(db_path)
    before = len(db)
    if args.proposer == "llm":
        endpoint = llm_endpoint(args.llm_url, args.llm_model, timeout_s=args.llm_timeout)

        def make() -> Any:
            return LLMProposer(endpoint)
    else:
        make = OfflineProposer
    opts = TuneOptions(trials=args.trials, batch=args.batch)
    cost_model, cost_device = _cost_model(args)
    out = sys.stdout

    def on_kernel(kernel: Any, share: float) -> None:
        out.write(f"  kernel {kernel.name} [{kernel.kernel_class}] {share:.0%} of predicted time\n")
        out.flush()

    def progress(kernel: Any, trial: Any, best: float | None) -> None:
        best_txt = f"{best * 1e6:.1f} us" if best else "-"
        status = f"{trial.latency_s * 1e6:.1f} us" if trial.ok else f"rejected ({trial.stage})"
        out.write(f"    trial {trial.index + 1}/{args.trials}: {status}; best {best_txt}\n")
        out.flush()

    for label, mod, targets in modules:
        for t in targets:
            target = tvm.target.Target(t)
            out.write(f"{label} on {t}\n")
            results = tune_module(
                mod,
                target,
                make,
                opts,
                db=db,
                max_kernels=args.kernels,
                retune=args.retune,
                progress=progress,
                on_kernel=on_kernel,
                cost_model=cost_model,
                cost_device=cost_device,
                prepare=True,  # codegen lays out CPU convs NHWC; tune the same kernels
            )
            for r in results:
                sp = f"{r.speedup:.1f}x" if r.speedup else "no valid schedule"
                out.write(
                    f"  {r.kernel_name}: {_us(r.baseline_latency_s)} -> "
                    f"{_us(r.best_latency_s)} ({sp}, {len(r.trials)} trials)\n"
                )
            db.save(db_path)
    out.write(f"tuning database {db_path}: {len(db)} records ({len(db) - before} new)\n")
    return 0


def _static_for_tuning(graph: Any) -> Any:
    """The graph with its symbolic dimensions bound to the planning sizes, said on stdout.

    Schedules are searched on static kernels. A symbolic build's kernels have other workload
    hashes, so these records apply to a build with the same fixed sizes
    (``compile --shape x=64x16``), not to the symbolic build of the range.
    """
    import dataclasses

    from terrazzo.pipeline import graph_plan_sizes, graph_ranges

    ranges = graph_ranges(graph)
    if not ranges:
        return graph
    sizes = graph_plan_sizes(graph)
    mod = graph.relax_mod.clone()
    by_name = {}
    from tvm import relax

    for p in mod["main"].params:
        for v in relax.analysis.definable_tir_vars_in_type(p.ty):
            by_name[str(v.name)] = v
    mod["main"] = mod["main"].bind_symbolic_vars({by_name[k]: v for k, v in sizes.items()})
    fixed = ", ".join(f"{k}={v}" for k, v in sizes.items())
    span = ", ".join(f"{k} {lo}..{hi}" for k, (lo, hi) in ranges.items())
    sys.stdout.write(
        f"note: the model has symbolic dimensions ({span}); tuning its kernels at the planning "
        f"shape {fixed} (--plan-shape or --shape to choose). The records apply to builds with "
        "these fixed sizes (compile --shape); symbolic kernels are not tuned.\n"
    )
    return dataclasses.replace(graph, relax_mod=mod)


def _run_metaschedule(
    args: argparse.Namespace, modules: list[tuple[str, Any, list[dict[str, Any]]]]
) -> int:
    import tvm

    from terrazzo.codegen.tuning import extract_kernels, prepare_module, rank_kernels
    from terrazzo.codegen.tuning.config import cache_dir
    from terrazzo.codegen.tuning.metaschedule import tune_kernel_metaschedule

    work_dir = args.tuning or str(cache_dir() / "tuning" / "metaschedule")
    for label, mod, targets in modules:
        for t in targets:
            target = tvm.target.Target(t)
            prepared = prepare_module(mod, target)
            kernels = extract_kernels(prepared, target)
            for kernel, share in rank_kernels(kernels)[: args.kernels or 8]:
                print(
                    f"{label}: {kernel.name} ({share:.0%}) with MetaSchedule, {args.trials} trials"
                )
                r = tune_kernel_metaschedule(kernel, target, args.trials, work_dir=work_dir)
                print(f"  best {_us(r.best_latency_s)} after {r.trials} trials ({r.wall_s:.0f} s)")
    print(f"MetaSchedule database directory {work_dir} (use: terrazzo compile --tuning {work_dir})")
    return 0


def _cost_model(args: argparse.Namespace) -> tuple[Any, str]:
    """A CostModel with the calibrated CPU profile, when one is given (else roofline ranking)."""
    import os
    from pathlib import Path

    path = getattr(args, "calibration", None) or os.environ.get("TERRAZZO_CALIBRATION")
    if not path:
        return None, "local-cpu"
    if not Path(path).is_file():
        raise TerrazzoError(f"calibration profile {path!r} does not exist")
    from terrazzo.costmodel import CostModel, load_catalog
    from terrazzo.costmodel.profile import CalibrationProfile

    try:
        prof = CalibrationProfile.load(path)
    except TerrazzoError as e:
        raise TerrazzoError(
            f"--calibration {path!r} is not a calibration profile "
            f"(`terrazzo calibrate --out PROFILE.json` writes one): {str(e)[:160]}"
        ) from None
    return CostModel(load_catalog(), calibration=prof), prof.device


def _us(x: float | None) -> str:
    return f"{x * 1e6:.1f} us" if x else "-"
