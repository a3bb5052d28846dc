"""`terrazzo plan`: place a model or a measured task graph on a fleet under an SLA and print the plan."""

from __future__ import annotations

import argparse
from typing import Any

SOLVER_CHOICES = ("milp", "heuristic", "heft", "homogeneous", "greedy", "melange")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan",
        help="place a model (ONNX, zoo name) or a task-graph YAML on a fleet under an SLA",
        description="Find the lowest-USD/hour placement that meets the SLA at the traffic target.",
    )
    p.add_argument(
        "model", metavar="MODEL_OR_TASKS", help="ONNX file, zoo model name, or task-graph YAML"
    )
    p.add_argument("--fleet", help="fleet YAML (devices and pricing); optional for task graphs")
    p.add_argument(
        "--sla", help="end-to-end latency bound, e.g. 50ms (task graphs: overrides sla:)"
    )
    p.add_argument("--ttft", help="time-to-first-token bound for LLM prefill ops, e.g. 500ms")
    p.add_argument("--tbt", help="time-between-tokens bound for LLM decode ops, e.g. 30ms")
    p.add_argument("--rps", type=float, default=1.0, help="traffic target, requests/s (default 1)")
    p.add_argument("--solver", choices=SOLVER_CHOICES, default="milp", help="solver (default milp)")
    p.add_argument(
        "--time-limit", type=float, default=10.0, help="solver time cap, seconds (default 10)"
    )
    p.add_argument(
        "--utilisation", type=float, default=0.8, help="target device utilisation (default 0.8)"
    )
    p.add_argument(
        "--profile", help="cost-model catalog profile (datasheet, paper-2025, or a YAML path)"
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument(
        "-o",
        "--output",
        help="write the placed graph as tz MLIR to this file (edit it, then: terrazzo compile FILE)",
    )
    from terrazzo.commands._common import add_shape_args

    add_shape_args(p)
    p.set_defaults(func=run)


def _load_model(spec: str, shapes: Any = None, plan_shapes: Any = None) -> tuple[Any, Any]:
    """(graph, ModelSource or None): ONNX files and zoo models carry a source for the placed IR."""
    import hashlib
    from pathlib import Path

    from terrazzo.errors import FrontendError
    from terrazzo.placement import ModelSource

    path = Path(spec)
    if path.suffix.lower() == ".onnx":
        from terrazzo.frontend import from_onnx

        g = from_onnx(path, shapes=shapes, plan_shapes=plan_shapes)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        return g, ModelSource(str(path.resolve()), sha)
    if path.suffix.lower() == ".json" and path.is_file():
        import json

        from terrazzo.ir import Graph

        return Graph.from_json(json.loads(path.read_text())), None
    if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
        from terrazzo.frontend.agent import load_agent

        return load_agent(path), None
    import tempfile

    from terrazzo import zoo
    from terrazzo.frontend import from_onnx

    name = spec.removeprefix("zoo:")
    if name not in zoo.names(include_large=True):
        raise FrontendError(
            f"{spec!r} is not an .onnx file, a graph .json, an agent or task-graph YAML, or a zoo "
            f"model ({', '.join(zoo.names(include_large=True))})"
        )
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = zoo.export_onnx(name, tmp)
        sha = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()
        g = from_onnx(onnx_path, shapes=shapes, plan_shapes=plan_shapes)
        return g, ModelSource(f"zoo:{name}", sha)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from terrazzo.commands._common import describe_dynamic, print_json, shapes_from_args
    from terrazzo.errors import PlacementError
    from terrazzo.placement import (
        SLA,
        Fleet,
        is_task_graph_file,
        load_task_graph,
        parse_duration_s,
        plan_to_mlir,
        solve,
        task_graph_to_ir,
        to_problem,
    )

    fleet = Fleet.from_yaml(args.fleet) if args.fleet else None
    if fleet is not None and args.profile:
        fleet = fleet.model_copy(update={"profile": args.profile})
    sla = None
    if args.sla:
        sla = SLA(
            parse_duration_s(args.sla),
            parse_duration_s(args.ttft) if args.ttft else None,
            parse_duration_s(args.tbt) if args.tbt else None,
        )
    if is_task_graph_file(args.model):
        tg = load_task_graph(args.model)
        if sla is None and (args.ttft or args.tbt):
            base = tg.sla_from_file()
            if base is not None:
                sla = replace(base, ttft_s=parse_duration_s(args.ttft) if args.ttft else base.ttft_s,
                              tbt_s=parse_duration_s(args.tbt) if args.tbt else base.tbt_s)  # fmt: skip
        graph = task_graph_to_ir(tg)
        source: Any = tg
        model_source = None
    else:
        if fleet is None:
            raise PlacementError("placing a model needs --fleet fleet.yaml")
        if sla is None:
            raise PlacementError("placing a model needs --sla, e.g. --sla 50ms")
        shapes, plan_shapes = shapes_from_args(args)
        graph, model_source = _load_model(args.model, shapes or None, plan_shapes or None)
        source = graph
    agent_spec = not is_task_graph_file(args.model) and getattr(graph, "level", "") == "agent"
    if agent_spec:  # agent specs: the same planner as compile (one path)
        from terrazzo.costmodel import load_catalog
        from terrazzo.pipeline import place_agent

        assert fleet is not None and sla is not None
        catalog = load_catalog(fleet.profile or "datasheet")
        result, _ = place_agent(graph, fleet, sla, args.rps, args.solver, catalog=catalog)
        title = graph.name
    else:
        problem = to_problem(source, fleet, sla, args.rps, target_utilisation=args.utilisation)
        result = solve(problem, args.solver, time_limit_s=args.time_limit)
        title = problem.name
    if args.output:
        Path(args.output).write_text(plan_to_mlir(graph, result, model_source))
    attrs = dict(getattr(graph, "attrs", ()))
    dyn = None
    if attrs.get("dynamic_dims"):
        from terrazzo.ir.shapes import parse_ranges, parse_sizes

        dyn = {
            "dynamic_dims": {
                k: list(v) for k, v in parse_ranges(str(attrs["dynamic_dims"])).items()
            },
            "plan_shape": parse_sizes(str(attrs.get("plan_shape", ""))),
        }
    if args.json:
        out = result.to_json()
        if dyn:
            out["dynamic_shapes"] = dyn
        print_json(out)
    else:
        _print_table(result, title)
        line = describe_dynamic(dyn)
        if line:
            print(line)
    return 0


def _print_table(plan: Any, name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    t = Table(title=f"{name}: plan by {plan.solver} (gap {plan.gap:.2%})")
    for col in ("stage", "device", "ops", "replicas", "busy ms/req", "USD/h"):
        t.add_column(col, justify="right" if col not in ("device", "ops") else "left")
    for s in plan.stages:
        ops = ", ".join(s.ops[:4]) + (f" … (+{len(s.ops) - 4})" if len(s.ops) > 4 else "")
        share = f" ({s.traffic_share:.0%} of traffic)" if s.traffic_share < 1 else ""
        t.add_row(
            str(s.index),
            s.device + share,
            ops,
            str(s.replicas),
            f"{s.latency_s * 1e3:.4g}",
            f"{s.usd_per_hour:.4g}",
        )
    c.print(t)
    ttft = f"  TTFT {plan.ttft_s * 1e3:.4g} ms" if plan.ttft_s is not None else ""
    c.print(
        f"latency {plan.latency_s * 1e3:.4g} ms (SLA {plan.sla.latency_s * 1e3:.4g} ms){ttft}   "
        f"traffic {plan.rps:g} rps (capacity {plan.throughput_rps:.4g})   transfers {len(plan.transfers)}"
    )
    devs = ", ".join(f"{d} ×{k}" for d, k in plan.devices.items())
    c.print(
        f"fleet {devs}   {plan.usd_per_hour:.4g} USD/h   {plan.usd_per_request:.6g} USD/request   "
        f"{plan.usd_per_million_requests:.4g} USD/1M requests   {plan.energy_j_per_request:.4g} J/request"
    )
    for n in plan.notes:
        c.print(f"note: {n}")
