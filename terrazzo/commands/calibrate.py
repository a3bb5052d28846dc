"""``terrazzo calibrate``: time TVM-compiled ops and zoo models on this CPU, fit the cost model, report accuracy."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="measure ops on the local CPU with TVM, fit cost-model efficiencies, report accuracy",
        description="Compile and time representative ops (matmul, conv, elementwise, reduction, "
        "softmax, layernorm, data movement) and the zoo models with TVM on this CPU, fit the "
        "roofline efficiencies of the 'local-cpu' device, save them as a calibration profile "
        "and report MAPE and Spearman correlation on held-out ops and whole models.",
    )
    p.add_argument(
        "--out",
        metavar="PROFILE.json",
        help="write the fitted profile here (default: $TERRAZZO_CACHE or ~/.cache/terrazzo, "
        "calibration/local-cpu.json); load it with CostModel(catalog, calibration=PATH)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quick", action="store_true", help="half the op suite and two zoo models")
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated zoo models for the whole-model check (default: all small ones; "
        "'none' to skip)",
    )
    p.set_defaults(func=run)


def _models(arg: str | None) -> list[str] | None:
    if arg is None:
        return None
    if arg.strip().lower() == "none":
        return []
    from terrazzo import zoo

    names = [n.strip() for n in arg.split(",") if n.strip()]
    for n in names:
        zoo.spec(n)  # raises FrontendError naming the choices
    return names


def report_json(rep: Any) -> dict[str, Any]:
    """The calibration report as plain data."""
    return {
        "summary": rep.summary,
        "ops": [
            {
                "name": m.name,
                "kind": m.kind,
                "op_class": m.op_class,
                "flops": m.flops,
                "bytes": m.nbytes,
                "held_out": m.held_out,
                "measured_s": m.latency_s,
                "predicted_s": p,
            }
            for m, p in zip(rep.ops, rep.op_predicted_s, strict=True)
        ],
        "models": [
            {
                "name": m.name,
                "ops": m.ops,
                "flops": m.flops,
                "measured_s": m.latency_s,
                "predicted_s": m.predicted_s,
            }
            for m in rep.models
        ],
        "skipped_models": list(rep.skipped_models),
        "profile": rep.profile.to_json(),
    }


def run(args: argparse.Namespace) -> int:
    from terrazzo.commands._common import require_compiler

    require_compiler("calibrate")
    import os

    os.environ.setdefault("TVM_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    from terrazzo.pipeline import run_calibration

    models = _models(args.models)
    log = None if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    rep = run_calibration(quick=args.quick, models=models, log=log)
    from pathlib import Path

    out = args.out or str(
        Path(os.environ.get("TERRAZZO_CACHE", Path.home() / ".cache" / "terrazzo"))
        / "calibration"
        / "local-cpu.json"
    )
    rep.profile.save(out)
    if args.json:
        from terrazzo.commands._common import print_json

        print_json(report_json(rep))
        return 0
    print_report(rep)
    print(f"profile written to {out}")
    return 0


def print_report(rep: Any) -> None:
    """Accuracy tables (per op class on held-out ops, per zoo model) on the terminal."""
    from rich.console import Console
    from rich.table import Table

    from terrazzo.costmodel import mape, spearman

    s = rep.summary
    console = Console()
    t = Table(title=f"Held-out ops on {s['device']} (TVM {s['tvm']}, llvm, untuned)")
    for col in ("op class", "ops", "MAPE %", "Spearman"):
        t.add_column(col, justify="left" if col == "op class" else "right")
    by: dict[str, list[tuple[float, float]]] = {}
    for m, p in zip(rep.ops, rep.op_predicted_s, strict=True):
        if m.held_out:
            by.setdefault(m.op_class, []).append((p, m.latency_s))
    for cls, pts in sorted(by.items()):
        pr, me = [p for p, _ in pts], [x for _, x in pts]
        t.add_row(cls, str(len(pts)), f"{mape(pr, me):.1f}", f"{spearman(pr, me):.3f}")
    t.add_row(
        "all held-out",
        str(s["ops_held_out"]),
        f"{s['op_mape_pct_heldout']:.1f}",
        f"{s['op_spearman_heldout']:.3f}",
        style="bold",
    )
    t.add_row(
        "fit set", str(s["ops_measured"] - s["ops_held_out"]), f"{s['op_mape_pct_train']:.1f}", ""
    )
    t.add_row(
        "noise floor (pass 2 vs 1)", str(s["ops_measured"]), f"{s['op_repeat_noise_pct']:.1f}", ""
    )
    console.print(t)
    if rep.models:
        mt = Table(title="Whole zoo models (ONNX -> Relax -> llvm), predicted = sum of op costs")
        for col in ("model", "ops", "MFLOP", "measured ms", "predicted ms", "error %"):
            mt.add_column(col, justify="left" if col == "model" else "right")
        for m in rep.models:
            err = 100.0 * (m.predicted_s - m.latency_s) / m.latency_s
            mt.add_row(
                m.name,
                str(m.ops),
                f"{m.flops / 1e6:.1f}",
                f"{m.latency_s * 1e3:.2f}",
                f"{m.predicted_s * 1e3:.2f}",
                f"{err:+.1f}",
            )
        mt.add_row(
            "MAPE / Spearman",
            "",
            "",
            "",
            f"{s['model_mape_pct']:.1f}%",
            f"{s['model_spearman']:.3f}",
            style="bold",
        )
        console.print(mt)
    for sk in rep.skipped_models:
        console.print(f"skipped {sk}")
    console.print(
        f"launch overhead {s['launch_overhead_s'] * 1e6:.2f} us; peak {s['peak_fp32_gflops']:.0f} GFLOP/s fp32; "
        f"DRAM {s['mem_bw_gb_per_s']:.1f} GB/s; {s['seconds']:.0f} s. "
        "Targets: op MAPE <= 20%, whole-model MAPE <= 15%."
    )
