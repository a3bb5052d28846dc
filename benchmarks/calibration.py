"""Question: how well does the calibrated roofline predict TVM-compiled op and whole-model latency on this CPU?

Runs ``terrazzo.pipeline.run_calibration`` (times ~108 single ops and the small
zoo models with TVM for llvm, built as ``terrazzo compile`` builds CPU stages without
tuning), prints the accuracy tables, writes ``benchmarks/results/calibration.json``. Targets: held-out op MAPE <= 20%, whole-model
MAPE <= 15%.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TVM_NUM_THREADS", "2")

from _common import print_table, write_result  # noqa: E402

from terrazzo.commands.calibrate import print_report, report_json  # noqa: E402
from terrazzo.pipeline import run_calibration  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="half the ops, two zoo models")
    ap.add_argument("--profile-out", help="also save the fitted profile JSON here")
    args = ap.parse_args()
    rep = run_calibration(quick=args.quick, log=lambda s: print(s, file=sys.stderr, flush=True))
    print_report(rep)
    rows = [
        {
            "name": m.name,
            "class": m.op_class,
            "held_out": m.held_out,
            "measured_ms": m.latency_s * 1e3,
            "predicted_ms": p * 1e3,
            "error_pct": 100.0 * (p - m.latency_s) / m.latency_s,
        }
        for m, p in zip(rep.ops, rep.op_predicted_s, strict=True)
        if m.held_out
    ]
    print_table(
        rows, ["name", "class", "measured_ms", "predicted_ms", "error_pct"], title="Held-out ops"
    )
    doc = report_json(rep)
    path = write_result(
        "calibration",
        rows,
        {"summary": rep.summary, "models": doc["models"], "profile": doc["profile"]},
    )
    if args.profile_out:
        rep.profile.save(args.profile_out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
