"""``terrazzo tco study``: the paper's prefill::decode fleet study on a device profile or fleet file."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tco", help="fleet TCO studies (tokens/s per USD of prefill::decode pairs)"
    )
    sub = p.add_subparsers(dest="tco_command", metavar="STUDY")
    s = sub.add_parser(
        "study",
        help="sweep Llama 3 8B/70B × FP16/FP8 × ISL/OSL × SLA over every P::D pair of a profile",
        description="Reproduce the fleet study of arXiv 2507.19635: for every prefill::decode device "
        "pair, the best TP degree and the largest batch the SLA allows, priced over 4 years at 8%.",
    )
    s.add_argument(
        "--profile",
        default="paper-2025",
        help="catalog profile: paper-2025, datasheet or a YAML path",
    )
    s.add_argument(
        "--fleet", help="fleet YAML: restricts the devices (and sets pricing if it has 'pricing:')"
    )
    s.add_argument("--devices", help="comma-separated device classes to include (default: all)")
    s.add_argument("--models", default="llama3-8b,llama3-70b", help="comma-separated model presets")
    s.add_argument(
        "--pricing", choices=["capex", "cloud"], help="override the pricing mode (default capex)"
    )
    s.add_argument("--ttft", default="250ms", help="interactive TTFT bound (default 250ms)")
    s.add_argument("--tbt", default="20ms", help="interactive TBT bound (default 20ms)")
    s.add_argument("--json", action="store_true", help="print the rows as JSON")
    s.add_argument("-o", "--output", help="write a self-contained HTML report here")
    s.set_defaults(func=run)
    from terrazzo.commands._tco_simulate import register_simulate

    register_simulate(sub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from terrazzo.commands._common import print_json
    from terrazzo.costmodel.catalog import load_catalog
    from terrazzo.costmodel.tco import TCOOptions
    from terrazzo.errors import TerrazzoError
    from terrazzo.placement import parse_duration_s
    from terrazzo.report.study import StudyOptions, run_study
    from terrazzo.report.study_report import print_study_summary, study_html

    profile = args.profile
    tco = TCOOptions()
    devices: tuple[str, ...] | None = None
    if args.fleet:
        from terrazzo.placement.fleet import Fleet

        fleet = Fleet.from_yaml(args.fleet)
        devices = fleet.names
        if fleet.profile:
            profile = fleet.profile
        if "pricing" in fleet.model_fields_set:
            tco = fleet.pricing.to_tco_options()
    if args.devices:
        devices = tuple(d.strip() for d in args.devices.split(",") if d.strip())
    if args.pricing:
        tco = replace(tco, pricing=args.pricing)
    catalog = load_catalog(profile)
    if devices is not None:
        for d in devices:
            catalog[d]  # raises CostModelError naming the unknown device
    try:
        datasheet = load_catalog("datasheet")
    except TerrazzoError:
        datasheet = None
    opts = StudyOptions(
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        ttft_s=parse_duration_s(args.ttft),
        tbt_s=parse_duration_s(args.tbt),
        tco=tco,
        devices=devices,
    )
    result = run_study(catalog, opts, datasheet=datasheet, profile=str(profile))
    if args.output:
        from pathlib import Path

        Path(args.output).write_text(study_html(result))
    if args.json:
        print_json([r.to_json() for r in result.rows])
    else:
        print_study_summary(result)
        if args.output:
            print(f"wrote {args.output}")
    return 0
