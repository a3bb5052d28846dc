"""``terrazzo report``: TCO report (HTML, JSON, terminal) of a plan or bundle against its baselines."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="TCO report of a plan (terrazzo plan --json) or a .tzb bundle vs the baselines",
        description="Write a self-contained HTML report (USD/hour and USD per 1M requests by fleet option, "
        "latency vs cost with the Pareto front, a per-stage timeline, device utilisation).",
    )
    p.add_argument("input", help="plan JSON, {plan, baselines} JSON, or a .tzb bundle")
    p.add_argument("-o", "--output", help="write the HTML report here")
    p.add_argument("--json", action="store_true", help="print the report's numbers as JSON")
    p.add_argument("--compare", metavar="MODEL_OR_TASKS",
                   help="re-solve this model / task graph with the baselines (homogeneous, HEFT, Mélange)")  # fmt: skip
    p.add_argument("--fleet", help="fleet YAML for --compare")
    p.add_argument(
        "--time-limit", type=float, default=10.0, help="solver time cap for --compare, seconds"
    )
    p.add_argument(
        "--profile",
        help="catalog profile the plan was priced with (price sources, TDP); default: the "
        "fleet's, else datasheet",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from terrazzo.commands._common import print_json
    from terrazzo.placement import Fleet
    from terrazzo.report.plan_report import (
        build_report,
        load_plans,
        print_report_summary,
        report_html,
        solve_baselines,
    )

    chosen, baselines, title, notes = load_plans(args.input)
    fleet = Fleet.from_yaml(args.fleet) if args.fleet else None
    if args.compare:
        from terrazzo.placement import to_problem

        source: Any = args.compare
        if Path(args.compare).suffix.lower() not in (".yaml", ".yml"):
            from terrazzo.frontend import from_onnx

            source = from_onnx(args.compare)
        problem = to_problem(
            source, fleet, chosen.sla, chosen.rps, target_utilisation=chosen.target_utilisation
        )
        more, why = solve_baselines(problem, skip=chosen.solver)
        baselines.update(more)
        notes.extend(why)
    elif not baselines:
        notes.append("no baselines given: pass --compare MODEL_OR_TASKS (and --fleet) to add them")
    profile = args.profile or (fleet.profile if fleet is not None else None) or "datasheet"
    rep = build_report(
        chosen,
        baselines,
        title,
        notes,
        profile=profile,
        pricing=fleet.pricing.mode if fleet is not None else "",
        fleet_counts={d: fleet.count(d) for d in fleet.names} if fleet is not None else None,
    )
    if args.output:
        Path(args.output).write_text(report_html(rep))
    if args.json:
        print_json(rep.to_json())
    else:
        print_report_summary(rep)
        if args.output:
            print(f"wrote {args.output}")
    return 0
