"""Question: does the fleet study's analytical P::D model agree with a trace-driven simulation of the
same plans (within 15% on throughput and TBT), and where not, which assumption differs?

For the best pair of every study cell (and ``--pairs``), ``terrazzo.report.sim_check`` runs the
discrete-event simulator three times: decode-bound (capacity per decode instance, TBT at the
planned batch), prefill-bound (the plan's tokens/s per prefill instance) and at ``--utilisation``
of the planned fleet's capacity (TTFT p50/p99, SLA attainment), and bisects the highest load at
which 99% of requests meet the interactive SLA (the headroom the plan leaves out). Also times the simulator on
10,000 requests of the Azure 2023 conversation trace. Prints a table and writes
benchmarks/results/sim_vs_analytical.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from terrazzo.costmodel import llm
from terrazzo.costmodel.catalog import load_catalog
from terrazzo.costmodel.llm_sim import FleetSpec, PhasePool, SimOptions, simulate
from terrazzo.costmodel.traces import synthetic_trace
from terrazzo.report.sim_check import check_study, print_checks
from terrazzo.report.study import StudyOptions, run_study


def _speed(repeats: int) -> dict[str, object]:
    """Seconds to simulate 10k Azure-conversation requests on a 70B FP16 h100 fleet."""
    h100 = load_catalog("datasheet")["h100"]
    fleet = FleetSpec(
        llm.PRESETS["llama3-70b"], "fp16", PhasePool(h100, 2, 4), PhasePool(h100, 4, 4)
    )
    trace = synthetic_trace("azure-conv-2023", 10_000, 10.0, "poisson", seed=0)
    times = []
    res = None
    for _ in range(repeats):
        t = time.perf_counter()
        res = simulate(fleet, trace, SimOptions(ttft_s=2.0, tbt_s=0.1))
        times.append(time.perf_counter() - t)
    assert res is not None
    return {
        "requests": 10_000,
        "trace": "synthetic:azure-conv-2023 at 10 req/s",
        "fleet": "llama3-70b fp16, prefill 2x(4xh100) :: decode 4x(4xh100)",
        "events": res.events,
        "seconds_median": statistics.median(times),
        "seconds_all": times,
        "load_average_1m": os.getloadavg()[0],
        "sla_attainment": res.sla_attainment,
        "ttft_p99_s": res.ttft_p99_s,
        "tbt_p99_s": res.tbt_p99_s,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="paper-2025")
    ap.add_argument("--models", default="llama3-8b,llama3-70b")
    ap.add_argument("--pairs", default="", help="extra P::D pairs to check, comma-separated")
    ap.add_argument("--utilisation", type=float, default=0.8)
    ap.add_argument("--max-requests", type=int, default=150_000)
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats of the 10k-request run")
    ap.add_argument("--no-headroom", action="store_true", help="skip the SLA-headroom bisection")
    args = ap.parse_args()

    speed = _speed(args.repeats)
    print(
        f"simulator: 10,000 requests ({speed['events']} events) in {speed['seconds_median']:.2f} s "
        f"(median of {args.repeats}; load average {speed['load_average_1m']:.1f})"
    )
    cat = load_catalog(args.profile)
    ds = load_catalog("datasheet")
    res = run_study(
        cat,
        StudyOptions(models=tuple(m for m in args.models.split(",") if m)),
        datasheet=ds,
        profile=args.profile,
    )
    t = time.perf_counter()
    pairs = tuple(p for p in args.pairs.split(",") if p) or None
    checks = check_study(
        res, cat, ds, pairs=pairs, utilisation=args.utilisation, max_requests=args.max_requests,
        headroom=not args.no_headroom,
    )  # fmt: skip
    secs = time.perf_counter() - t
    print_checks(checks)
    for c in checks:
        if c.sla_headroom_utilisation is not None:
            print(f"{c.cell} {c.pair}: ≥99% of requests meet TTFT ≤ {res.options.ttft_s * 1e3:.0f} ms and "
                  f"TBT ≤ {res.options.tbt_s * 1e3:.0f} ms up to {c.sla_headroom_utilisation:.0%} of the "
                  "planned capacity")  # fmt: skip
    ok = sum(c.within_target for c in checks)
    print(f"\n{ok}/{len(checks)} plans within 15% on prefill throughput, decode throughput and TBT "
          f"({secs:.0f} s of simulation)")  # fmt: skip
    p = write_result(
        "sim_vs_analytical",
        [c.to_json() for c in checks],
        {
            "profile": args.profile,
            "utilisation": args.utilisation,
            "max_requests": args.max_requests,
            "within_target": f"{ok}/{len(checks)}",
            "simulation_seconds": secs,
            "speed": speed,
        },
    )
    print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
