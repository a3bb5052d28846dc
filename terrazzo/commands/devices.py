"""``terrazzo devices``: list the device catalog (a profile or a YAML file) with its sources."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "devices",
        help="list the device catalog (peaks, memory, prices, TVM targets) with sources",
        description="List the device classes the cost model knows, with a source for every number.",
    )
    p.add_argument(
        "--profile",
        default="datasheet",
        help="catalog profile: datasheet (default), paper-2025 (arXiv 2507.19635 Table 5 as "
        "published), or a path to a catalog YAML file",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--no-sources", action="store_true", help="omit the table of sources")
    p.set_defaults(func=run)


def _fmt(v: float | None, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def _target(d: Any) -> str:
    if d.tvm_target is None:
        return f"none -> {d.fallback_target.get('kind', '?')} (fallback)"
    return " ".join(f"{k}={v}" for k, v in d.tvm_target.items())


def _usd_h(d: Any, pricing: str) -> float | None:
    from terrazzo.costmodel import TCOOptions, usd_per_hour
    from terrazzo.errors import CostModelError

    try:
        return usd_per_hour(d, TCOOptions(pricing=pricing))
    except CostModelError:
        return None


def run(args: argparse.Namespace) -> int:
    from terrazzo.commands._common import print_json
    from terrazzo.costmodel import load_catalog

    cat = load_catalog(args.profile)
    paper = cat.profile == "paper-2025"
    datasheet = load_catalog("datasheet") if paper else None
    if args.json:
        devices = {}
        for name, d in cat.items():
            row = d.to_json()
            row["usd_per_hour_capex"] = _usd_h(d, "capex")
            row["usd_per_hour_cloud"] = _usd_h(d, "cloud")
            if datasheet is not None and name in datasheet:
                ds = datasheet[name]
                row["datasheet"] = {
                    "capex_usd": ds.capex_usd,
                    "mem_bytes": ds.mem_bytes,
                    "mem_bw_bytes_per_s": ds.mem_bw_bytes_per_s,
                    "peak_tflops": dict(ds.peak_tflops),
                }
            devices[name] = row
        print_json({"profile": cat.profile, "description": cat.description, "devices": devices})
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console()
    if paper:
        _paper_table(console, cat, datasheet)
    else:
        t = Table(title=f"Device catalog: {cat.profile} — {cat.description}", show_lines=False)
        for col, just in (
            ("device", "left"),
            ("model", "left"),
            ("year", "right"),
            ("FP32 TF", "right"),
            ("FP16 TF", "right"),
            ("FP8 TF", "right"),
            ("INT8 TOPS", "right"),
            ("mem GB", "right"),
            ("BW GB/s", "right"),
            ("TDP W", "right"),
            ("capex $", "right"),
            ("TCO $/h", "right"),
            ("cloud $/h", "right"),
            ("cloud (provider, date)", "left"),
            ("chassis", "right"),
            ("scale-up GB/s", "right"),
            ("scale-out Gb/s", "right"),
            ("TVM target", "left"),
        ):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for name, d in cat.items():
            pk = d.peak_tflops
            t.add_row(
                name,
                d.model,
                str(d.year),
                _fmt(pk["fp32"], ",.1f"),
                _fmt(pk["fp16"] or pk["bf16"], ",.1f"),
                _fmt(pk["fp8"], ",.1f") if pk["fp8"] else "-",
                _fmt(pk["int8"], ",.1f") if pk["int8"] else "-",
                _fmt(d.mem_bytes / 1e9),
                _fmt(d.mem_bw_bytes_per_s / 1e9, ",.1f"),
                _fmt(d.tdp_w),
                _fmt(d.capex_usd),
                _fmt(_usd_h(d, "capex"), ".3f"),
                _fmt(d.cloud_usd_per_hour, ".3f"),
                f"{d.cloud_provider} ({d.cloud_price_date})"
                if d.cloud_price_date
                else d.cloud_provider,
                str(d.chassis_size),
                _fmt(d.scaleup_bw_bytes_per_s / 1e9),
                _fmt(d.scaleout_bw_bits_per_s / 1e9),
                _target(d),
            )
        console.print(t)
        console.print(
            "TFLOPs are dense (no sparsity); TCO $/h = capex over 4 y at 8% + TDP at $0.40/kWh, PUE 1.0."
        )
    if not args.no_sources:
        s = Table(title="Sources", show_lines=False)
        s.add_column("device")
        s.add_column("field")
        s.add_column("source")
        for name, d in cat.items():
            for field, src in d.sources.items():
                s.add_row(name, field, src)
            if d.fallback_reason:
                s.add_row(name, "tvm_target", d.fallback_reason)
        console.print(s)
    return 0


def _paper_table(console: Any, cat: Any, datasheet: Any) -> None:
    from rich.table import Table

    t = Table(
        title="arXiv 2507.19635 Table 5 as published (reseller prices, June 2025), with datasheet values"
    )
    for col in (
        "device",
        "Cost ($)",
        "Memory (GB)",
        "Bandwidth (GB/s)",
        "TFLOPs (FP16)",
        "Operating cost ($/hr)",
        "datasheet FP16 dense",
        "datasheet mem GB",
        "TCO $/h",
        "caveat",
    ):
        t.add_column(col, justify="left" if col in ("device", "caveat") else "right")
    for name, d in cat.items():
        ds = datasheet[name] if name in datasheet else None
        t.add_row(
            f"{d.published_name or name} ({name})",
            _fmt(d.capex_usd),
            _fmt(d.mem_bytes / 1e9),
            _fmt(d.mem_bw_bytes_per_s / 1e9),
            _fmt(d.peak_tflops["fp16"], ",.0f"),
            _fmt(d.operating_usd_per_hour, ".2f"),
            _fmt(ds.peak_tflops["fp16"], ",.1f") if ds else "-",
            _fmt(ds.mem_bytes / 1e9) if ds else "-",
            _fmt(_usd_h(d, "capex"), ".3f"),
            "; ".join(d.notes.values()),
        )
    console.print(t)
    console.print("TCO $/h = Cost as a 4-year annuity at 8% + the published operating cost.")
