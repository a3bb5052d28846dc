"""``terrazzo llm plan``: the LLM-scale P::D planner on a fleet, with its baselines and a report."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    s = sub.add_parser(
        "plan",
        help="cheapest P::D pipeline plan of an LLM on a fleet of classes, with a certified gap",
        description="Lower the model to prefill and decode operator graphs, plan contiguous layer "
        "stages per phase on the fleet's classes (TP within a chassis, integer replicas) at the "
        "lowest USD/hour that carries --rps under the TTFT/TBT bounds, and certify the gap. "
        "--compare adds the best single-class P::D plan and a Mélange-style replica mix.",
    )
    s.add_argument(
        "--model", required=True, help="preset (llama3-70b, llama3.1-405b, ...) or an HF directory"
    )
    s.add_argument("--isl", type=int, required=True, help="prompt tokens per request")
    s.add_argument("--osl", type=int, required=True, help="output tokens per request")
    s.add_argument("--rps", type=float, required=True, help="requests per second to carry")
    s.add_argument("--ttft-ms", type=float, required=True, help="TTFT bound, ms")
    s.add_argument("--tbt-ms", type=float, required=True, help="time-between-tokens bound, ms")
    s.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "fp8", "fp4"])
    s.add_argument(
        "--devices", help="comma-separated classes (default: the 13-class benchmark fleet)"
    )
    s.add_argument(
        "--utilisation", type=float, default=0.8, help="target utilisation (default 0.8)"
    )
    s.add_argument(
        "--time-budget-s", type=float, default=2.0, help="planner time budget (default 2)"
    )
    s.add_argument("--profile", default="datasheet", help="catalog profile or YAML")
    s.add_argument(
        "--compare", action="store_true", help="also solve single-class P::D and Mélange"
    )
    s.add_argument("--json", action="store_true", help="print the plans as JSON")
    s.add_argument("-o", "--output", help="write an HTML report here")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from terrazzo.commands._common import print_json
    from terrazzo.costmodel.catalog import load_catalog
    from terrazzo.costmodel.llm_serving import resolve_model
    from terrazzo.errors import PlacementError
    from terrazzo.placement import (
        LLMPlannerOptions,
        LLMTraffic,
        build_llm_graphs,
        llm_fleet_default,
        plan_llm,
        plan_llm_melange,
        plan_llm_single_class,
    )
    from terrazzo.report.llm_plan_report import llm_plan_html, llm_report_json, print_llm_plan

    cat = load_catalog(args.profile)
    fleet = (
        tuple(d.strip() for d in args.devices.split(",") if d.strip())
        if args.devices
        else llm_fleet_default()
    )
    unknown = [d for d in fleet if d not in cat]
    if unknown:
        raise PlacementError(
            f"unknown device classes {unknown}; the catalog has: {', '.join(sorted(cat))}"
        )
    traffic = LLMTraffic(rps=args.rps, isl=args.isl, osl=args.osl, ttft_s=args.ttft_ms / 1e3,
                         tbt_s=args.tbt_ms / 1e3, utilisation=args.utilisation)  # fmt: skip
    cfg = resolve_model(args.model)
    graphs = build_llm_graphs(cfg, args.isl, args.osl, args.precision)
    opts = LLMPlannerOptions(time_budget_s=args.time_budget_s)
    plans: dict[str, Any] = {"pipeline (chosen)": plan_llm(graphs, traffic, fleet, opts, cat)}
    if args.compare:
        plans["single-class P::D"] = plan_llm_single_class(graphs, traffic, fleet, cat)
        plans["melange"] = plan_llm_melange(graphs, traffic, fleet, cat)
    if args.output:
        Path(args.output).write_text(llm_plan_html(plans, traffic, args.model))
    if args.json:
        print_json(llm_report_json(plans, traffic, args.model))
    else:
        print_llm_plan(plans, traffic, args.model)
        if args.output:
            print(f"wrote {args.output}")
    return 0
