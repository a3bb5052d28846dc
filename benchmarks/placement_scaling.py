"""Question: how long does placement take as graphs (10 → 10,000 ops) and fleets (6 → 20 classes) grow?

Prints a table and writes JSON. Targets: ≤ 1 s for 200 ops × 10 classes (MILP), ≤ 10 s for
10,000 ops (heuristic), heuristic within 2 % of the MILP where the MILP proves optimality.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from placement_synthetic import synthetic_problem  # noqa: E402

from terrazzo.placement import solve  # noqa: E402


def _commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except Exception:
        return "unknown"


def main() -> None:
    quick = "--quick" in sys.argv
    sizes = [10, 50, 200, 1000] + ([] if quick else [10000])
    classes = [6, 10, 20]
    rows = []
    for n in sizes:
        for d in classes:
            prob = synthetic_problem(n, d, seed=n + d)
            row = {"ops": n, "classes": d, "edges": int(len(prob.edges))}
            t0 = time.perf_counter()
            h = solve(prob, "heuristic", time_limit_s=10.0)
            row["heuristic_s"] = time.perf_counter() - t0
            row["heuristic_usd_h"] = h.usd_per_hour
            if n <= 1000:
                t0 = time.perf_counter()
                m = solve(prob, "milp", time_limit_s=10.0)
                row["milp_s"] = time.perf_counter() - t0
                row["milp_usd_h"] = m.usd_per_hour
                row["milp_gap"] = m.gap
                row["heuristic_vs_milp"] = h.usd_per_hour / m.usd_per_hour - 1.0
            hom = solve(prob, "homogeneous")
            row["homogeneous_usd_h"] = hom.usd_per_hour
            rows.append(row)
            print(json.dumps(row), flush=True)
    hdr = f"{'ops':>6} {'cls':>4} {'heur s':>8} {'milp s':>8} {'milp gap':>9} {'heur/milp-1':>12} {'USD/h milp':>11} {'USD/h homog':>12}"
    print(hdr)
    for r in rows:
        print(f"{r['ops']:>6} {r['classes']:>4} {r['heuristic_s']:>8.3f} {r.get('milp_s', float('nan')):>8.3f} "
              f"{r.get('milp_gap', float('nan')):>9.2e} {r.get('heuristic_vs_milp', float('nan')):>12.2%} "
              f"{r.get('milp_usd_h', r['heuristic_usd_h']):>11.4g} {r['homogeneous_usd_h']:>12.4g}")  # fmt: skip
    out = Path(os.environ.get("TZ_BENCH_OUT", "benchmarks/results")) / "placement_scaling.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                               "commit": _commit(), "rows": rows}, indent=2))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
