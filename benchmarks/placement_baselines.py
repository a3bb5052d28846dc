"""Question: how much cheaper (USD/hour at the SLA) is the MILP plan than each baseline?

On the agent-like graph and seeded synthetic model graphs. Prints a table and writes JSON.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from placement_synthetic import agent_problem, synthetic_problem  # noqa: E402

from terrazzo.errors import PlacementError  # noqa: E402
from terrazzo.placement import SOLVERS, solve  # noqa: E402


def main() -> None:
    problems = [agent_problem(rps=20.0), synthetic_problem(50, 6, seed=1), synthetic_problem(200, 10, seed=2)]
    rows = []
    for prob in problems:
        row: dict[str, object] = {"problem": prob.name, "sla_ms": prob.sla.latency_s * 1e3}
        for s in SOLVERS:
            try:
                p = solve(prob, s, time_limit_s=10.0)
                row[s] = p.usd_per_hour
                row[f"{s}_gap"] = p.gap
            except PlacementError as e:
                row[s] = None
                row[f"{s}_error"] = str(e)
        rows.append(row)
    print(f"{'problem':<26} " + " ".join(f"{s:>11}" for s in SOLVERS) + "   (USD/h; vs milp)")
    for r in rows:
        base = r["milp"]
        cells = []
        for s in SOLVERS:
            v = r[s]
            cells.append(f"{'infeasible':>11}" if v is None else f"{v:>6.3g} {v / base:>4.2f}x")  # type: ignore[operator]
        print(f"{r['problem']:<26} " + " ".join(cells))
    out = Path(os.environ.get("TZ_BENCH_OUT", "benchmarks/results")) / "placement_baselines.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
