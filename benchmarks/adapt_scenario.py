"""Adaptive runtime scenario (issue 19): does re-placing and re-sizing while serving beat static plans?

    .venv/bin/python benchmarks/adapt_scenario.py [--seconds 10] [--modes full,replicas,off]

SIMULATED DEVICES: the four device classes are CPU worker processes that sleep for each
class's declared service time (terrazzo.runtime.adapt.sim); slowdowns and the lost class are
injected. No accelerator is used; the figures test the controller and the hot swap, not
device speed. Phases: 1x warm-up, load 1x -> 3x -> 0.5x, gpu-s slowed 5x, gpu-l lost (4 s
preemption notice), gpu-m price 2.5x. The same phases run with adaptation full (re-place +
re-size), replicas (counts only: what Ray Serve / Dynamo autoscalers do) and off (the plan
for 1x). Writes benchmarks/results/adapt_scenario.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("COLUMNS", "230")  # the per-phase table is wide

from benchmarks._common import machine_info, print_table, write_result  # noqa: E402
from terrazzo.runtime.adapt.scenario import default_phases, run_scenario  # noqa: E402
from terrazzo.runtime.adapt.sim import SIM_BANNER  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per phase")
    ap.add_argument("--modes", default="full,replicas,off")
    ap.add_argument("--rps", type=float, default=12.0, help="1x load, requests/s")
    ap.add_argument("--name", default="adapt_scenario")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print("!" * 100)
    print("!! " + SIM_BANNER)
    print("!" * 100)
    load_before = os.getloadavg()
    results = {}
    for mode in args.modes.split(","):
        log = Path(f"/tmp/adapt_decisions_{mode}.jsonl")
        log.unlink(missing_ok=True)
        results[mode] = run_scenario(
            mode, default_phases(args.seconds), base_rps=args.rps, decision_log=str(log)
        )
    rows = []
    for mode, r in results.items():
        for ph in r["phases"]:
            rows.append({"mode": mode, **{k: v for k, v in ph.items() if k != "decisions"}})
    cols = [
        "mode",
        "phase",
        "requests",
        "failed",
        "wrong",
        "sla_attainment",
        "sla_attainment_after_reaction",
        "usd_per_hour",
        "hindsight_usd_per_hour",
        "vs_hindsight",
        "vs_hindsight_after_reaction",
        "react_s",
        "swap_s",
        "settled_s",
    ]
    print_table(rows, cols, title="adapt scenario (SIMULATED devices) per phase")
    summary = []
    for mode, r in results.items():
        judged = [p for p in r["phases"] if p["judged"]]
        usd = sum(p["usd_per_hour"] for p in judged) / len(judged)
        best = sum(p["hindsight_usd_per_hour"] or 0 for p in judged) / len(judged)
        summary.append(
            {
                "mode": mode,
                "requests": r["requests"],
                "failed": r["failed"],
                "wrong": r["wrong"],
                "swaps": r["swaps"],
                "peak_workers": r["peak_workers"],
                "mean_usd_per_hour": round(usd, 4),
                "hindsight_mean_usd_per_hour": round(best, 4),
                "phases_within_10pct": sum((p["vs_hindsight"] or 9) <= 1.10 for p in judged),
                "phases_within_10pct_after_reaction": sum(
                    (p["vs_hindsight_after_reaction"] or 9) <= 1.10 for p in judged
                ),
                "phases_sla_99_after_reaction": sum(
                    p["sla_attainment_after_reaction"] >= 0.99 for p in judged
                ),
                "min_sla_after_reaction": min(p["sla_attainment_after_reaction"] for p in judged),
                "wall_s": r["wall_s"],
            }
        )
    by = {s["mode"]: s for s in summary}
    if "full" in by and "replicas" in by:
        by["full"]["cheaper_than_replicas_only"] = round(
            1 - by["full"]["mean_usd_per_hour"] / by["replicas"]["mean_usd_per_hour"], 3
        )
    print_table(
        summary,
        list(dict.fromkeys(k for row in summary for k in row)),  # full's extra column once
        title="summary (judged phases)",
    )
    path = write_result(
        args.name,
        rows,
        {
            "simulated_devices": SIM_BANNER,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "seconds_per_phase": args.seconds,
            "rps_1x": args.rps,
            "summary": summary,
            "decisions": {
                m: [d for p in r["phases"] for d in p["decisions"]] for m, r in results.items()
            },
            "calibration": {m: r["calibration"] for m, r in results.items()},
        },
    )
    m = machine_info()
    print(
        f"machine: {m.get('cpu')} ({m.get('cpu_count')} cores); load average before "
        f"{' '.join(f'{x:.2f}' for x in load_before)}, after "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"wrote {path}")
    print("!! " + SIM_BANNER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
