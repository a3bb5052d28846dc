"""`terrazzo compile`: model + fleet + SLA → placed, TVM-built stages in one `.tzb` bundle."""

from __future__ import annotations

import argparse
from typing import Any

SOLVER_CHOICES = ("milp", "heuristic", "heft", "homogeneous", "greedy", "melange")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compile",
        help="compile a model for a fleet under an SLA into a .tzb bundle",
        description="Import the model, place it on the fleet (lowest USD/hour meeting the SLA), "
        "build every stage with TVM for its device's target (plus a host-CPU build), and write "
        "one .tzb bundle.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="ONNX file, zoo model name (e.g. mlp, bert), agent spec (.yaml), placed tz MLIR "
        "(.mlir, from `terrazzo plan -o`; builds exactly the placement it states), or a Hugging "
        "Face model directory (config.json, *.safetensors, tokenizer.json: Llama, Qwen2, Mistral)",
    )
    p.add_argument("--fleet", required=True, help="fleet YAML (devices: {name: {count: N}})")
    p.add_argument(
        "--sla",
        help="end-to-end latency bound, e.g. 50ms (required, except for a placed .mlir, whose "
        "recorded SLA it overrides)",
    )
    p.add_argument(
        "--rps",
        type=float,
        default=None,
        help="traffic target, requests/s (default 1; a placed .mlir: the rate it records)",
    )
    p.add_argument(
        "--solver", choices=SOLVER_CHOICES, default="milp", help="placement solver (default milp)"
    )
    p.add_argument(
        "--tuning", metavar="DB", help="tuning database (records.jsonl or MetaSchedule dir)"
    )
    p.add_argument(
        "--profile", help="cost-model catalog profile (datasheet, paper-2025, or YAML path)"
    )
    sign = p.add_mutually_exclusive_group()
    sign.add_argument(
        "--sign",
        metavar="KEY",
        help="sign the bundle with this Ed25519 private key (PEM). Default: the local key "
        "$TERRAZZO_HOME/keys/local.pem (~/.config/terrazzo), created on first use and trusted "
        "on this machine; elsewhere trust its .pub.pem with --trust",
    )
    sign.add_argument(
        "--no-sign",
        action="store_true",
        help="write an unsigned bundle (run/serve/verify/inspect then need --allow-unsigned)",
    )
    p.add_argument(
        "--no-reference", action="store_true", help="omit the whole-model reference build"
    )
    p.add_argument("-o", "--output", default="model.tzb", help="bundle path (default model.tzb)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    llm = p.add_argument_group("Hugging Face model directories")
    llm.add_argument(
        "--max-len", type=int, default=128,
        help="context the KV cache holds, prompt + generated tokens (default 128)",
    )  # fmt: skip
    llm.add_argument(
        "--prompt-len", type=int, default=32,
        help="static prefill chunk; longer prompts finish through decode steps (default 32)",
    )  # fmt: skip
    llm.add_argument(
        "--decode-batches", default="1,8,16,32", metavar="B,B,...",
        help="batch sizes the continuous-batching decode is compiled at ('' for none)",
    )  # fmt: skip
    llm.add_argument(
        "--kv-dtype", choices=("fp32", "fp16"), default="fp32",
        help="the paged KV pool's storage type (compute stays fp32 on CPUs)",
    )  # fmt: skip
    agent = p.add_argument_group("agent specs (YAML)")
    agent.add_argument(
        "--batch-sizes", default="", metavar="B,B,...",
        help="serve concurrent conversations batched: build each LLM's batched decode and each "
        "batchable model node at these sizes (default: batch 1 only)",
    )  # fmt: skip
    from terrazzo.commands._common import add_shape_args

    add_shape_args(p)
    p.add_argument(
        "--batch-buckets", metavar="auto|B,B,...", default=None,
        help="also build each stage whose dimension 0 is a symbolic batch at these static batch "
        "sizes ('auto': powers of two over the --shape range). CPU schedules apply to static "
        "kernels only, so a symbolic build can be much slower; a batch runs on the smallest "
        "bucket that holds it, padded with copies of its last row (asserts that rows are "
        "independent). `inspect` lists the buckets",
    )  # fmt: skip
    p.add_argument(
        "--tune-buckets", metavar="TRIALS", type=int, default=0,
        help="with --batch-buckets: tune each bucket's kernels (TRIALS schedule candidates per "
        "kernel) into the --tuning database (default: the per-user one) before building it; "
        "kernels with a record are skipped. Records are per host and TVM_NUM_THREADS: set it "
        "as you will serve",
    )  # fmt: skip
    p.set_defaults(func=run)


def sign_key_of(args: argparse.Namespace) -> Any:
    """The ``sign_key`` for the pipeline: a key file, the local key (True) or None (unsigned)."""
    if getattr(args, "no_sign", False):
        return None
    return args.sign if args.sign else True


def run(args: argparse.Namespace) -> int:
    from terrazzo.commands._common import require_compiler

    require_compiler("compile")
    from terrazzo.commands._agent import is_agent_spec

    args.sign = sign_key_of(args)
    placed = args.model.lower().endswith(".mlir")
    if not placed and args.sla is None:
        from terrazzo.errors import TerrazzoError

        raise TerrazzoError("the following arguments are required: --sla (e.g. --sla 50ms)")
    from terrazzo.frontend.hf import is_hf_dir

    if is_hf_dir(args.model):  # Hugging Face checkpoints: terrazzo.pipeline.hf_llm
        return _compile_hf(args)
    if is_agent_spec(args.model):  # agent graphs (YAML): terrazzo.pipeline.compile_agent
        from terrazzo.commands._agent import run_compile

        if args.rps is None:
            args.rps = 1.0
        return run_compile(args)
    from rich.console import Console
    from rich.table import Table

    from terrazzo.commands._common import describe_dynamic, print_json, shapes_from_args
    from terrazzo.pipeline import compile_model, compile_placed

    shapes, plan_shapes = shapes_from_args(args)
    if placed and (shapes or plan_shapes):
        from terrazzo.errors import TerrazzoError

        raise TerrazzoError("--shape/--plan-shape apply to models, not to a placed .mlir")
    err = Console(stderr=True)
    status = err.status("starting")
    stage_rows: list[dict[str, Any]] = []

    def progress(event: str, d: Any) -> None:
        if event == "phase-start":
            status.update(f"[bold]{d['phase']}[/bold] ...")
        elif event == "phase-end":
            err.print(f"[green]✓[/green] {d['phase']:<7} {d['seconds']:7.2f} s")
        elif event == "stage-start":
            status.update(
                f"[bold]build[/bold] stage {d['index']} on {d['device']} ({d['ops']} ops) ..."
            )
        elif event == "stage-built":
            stage_rows.append(dict(d))
            fb = (
                f"  [yellow]fallback: {d['fallback_reason']}[/yellow]"
                if d.get("fallback_reason")
                else ""
            )
            err.print(
                f"    stage {d['index']!s:>9} {d['device']:<10} {d['target']:<22} {d['seconds']:6.2f} s{fb}"
            )
            for note in d.get("notes") or ():
                err.print(f"    [yellow]note:[/yellow] {note}")

    catalog = None
    if args.profile:
        from terrazzo.costmodel import load_catalog

        catalog = load_catalog(args.profile)
    with status:
        if placed:  # the placement is the text's: no solver runs
            res = compile_placed(
                args.model, args.fleet, args.sla, rps=args.rps, out_path=args.output,
                tuning_db=args.tuning, sign_key=args.sign, catalog=catalog,
                include_reference=not args.no_reference, progress=progress,
            )  # fmt: skip
        else:
            res = compile_model(
                args.model, args.fleet, args.sla, rps=1.0 if args.rps is None else args.rps,
                out_path=args.output, solver=args.solver, tuning_db=args.tuning,
                sign_key=args.sign, catalog=catalog, include_reference=not args.no_reference,
                progress=progress, shapes=shapes or None, plan_shapes=plan_shapes or None,
                batch_buckets=args.batch_buckets, tune_buckets=args.tune_buckets,
            )  # fmt: skip
    plan = res.plan
    from terrazzo.pipeline import graph_plan_sizes, graph_ranges

    dyn = {"dynamic_dims": {k: list(v) for k, v in graph_ranges(res.graph).items()},
           "plan_shape": graph_plan_sizes(res.graph)}  # fmt: skip
    summary = {
        "bundle": str(res.path),
        "model": res.graph.name,
        "bundle_bytes": res.bundle_bytes,
        "signed_with": _signed_with(args.sign),
        "weight_bytes": res.weight_bytes,
        "phase_s": {k: round(v, 3) for k, v in res.phase_s.items()},
        "plan": {
            "solver": plan.solver,
            "latency_s": plan.latency_s,
            "usd_per_hour": plan.usd_per_hour,
            "throughput_rps": plan.throughput_rps,
        },  # fmt: skip
        "stages": [
            {
                "index": b.index,
                "device": b.choice.device,
                "target": dict(b.choice.target),
                "fallback_reason": b.choice.fallback_reason,
                "notes": list(b.notes),
                "build_s": round(b.build_s, 3),
                "ops": len(res.split.stages[b.index].ops),
                **({"buckets": b.buckets.to_json()} if b.buckets else {}),
            }  # fmt: skip
            for b in res.builds
        ],
    }
    if dyn["dynamic_dims"]:
        summary["dynamic_shapes"] = dyn
    if args.json:
        print_json(summary)
        return 0
    from terrazzo.codegen import describe_target

    table = Table(title=f"{res.graph.name} → {res.path}")
    for col in (
        "stage",
        "device",
        "target",
        "ops",
        "replicas",
        "pred. latency",
        "build",
        "fallback",
    ):
        table.add_column(col)
    pstages = {int(s.index): s for s in plan.stages}
    for b in res.builds:
        ps = pstages[b.index]
        table.add_row(
            str(b.index), b.choice.device, describe_target(b.choice.target),
            str(len(res.split.stages[b.index].ops)), str(ps.replicas), f"{ps.latency_s * 1e3:.3f} ms",
            f"{b.build_s:.1f} s", b.choice.fallback_reason or "",
        )  # fmt: skip
    out = Console()
    out.print(table)
    out.print(
        f"plan: {plan.solver}, predicted latency {plan.latency_s * 1e3:.3f} ms, "
        f"{plan.usd_per_hour:.4f} USD/h at {plan.rps:g} rps; bundle {res.bundle_bytes / 1e6:.2f} MB "
        f"(weights {res.weight_bytes / 1e6:.2f} MB); total {sum(res.phase_s.values()):.1f} s"
    )
    bucketed = {str(b.index): b.buckets.to_json() for b in res.builds if b.buckets}
    build = (
        {"shape_build": "bucketed", "buckets": bucketed}
        if bucketed
        else {"shape_build": "symbolic"}
    )
    line = describe_dynamic({**dyn, **build})
    if line:
        out.print(line)
    out.print(f"signed with: {summary['signed_with']}")
    return 0


def _compile_hf(args: argparse.Namespace) -> int:
    """A Hugging Face directory → an LLM bundle (prefill and decode stages, tokenizer inside)."""
    from rich.console import Console

    from terrazzo.commands._common import print_json
    from terrazzo.pipeline.hf_llm import compile_hf

    err = Console(stderr=True)

    def progress(event: str, d: Any) -> None:
        if event == "build":
            err.print(f"    build {d['task']} on {d['device']}")

    res = compile_hf(
        args.model, args.fleet, args.sla, args.output, rps=1.0 if args.rps is None else args.rps,
        solver=args.solver, max_len=args.max_len, prompt_len=args.prompt_len,
        profile=args.profile, sign_key=args.sign, progress=progress,
        decode_batches=args.decode_batches, kv_dtype=args.kv_dtype,
    )  # fmt: skip
    summary = {
        "bundle": str(res.path),
        "model_type": res.model_type,
        "devices": res.devices,
        "usd_per_hour": res.plan.usd_per_hour,
        "latency_s": res.plan.latency_s,
        "notes": list(res.notes),
        "build_s": round(res.build_s, 2),
        "signed_with": _signed_with(args.sign),
    }
    if args.json:
        print_json(summary)
        return 0
    out = Console()
    out.print(
        f"{res.model_type} → {res.path}: prefill on {res.devices['llm.prefill']}, decode on "
        f"{res.devices['llm.decode']}, {res.plan.usd_per_hour:.4f} USD/h; built in {res.build_s:.1f} s"
    )
    for n in res.notes:
        out.print(f"note: {n}")
    out.print(f"signed with: {summary['signed_with']}")
    return 0


def _signed_with(sign: Any) -> str:
    if sign is None:
        return "nothing (unsigned: run/serve need --allow-unsigned)"
    if sign is True:
        from terrazzo.bundle import local_key_paths

        return f"the local key {local_key_paths()[0]}"
    return str(sign)
