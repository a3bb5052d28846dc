"""Question: how long does placement take as graphs (10 → 10,000 ops) and fleets (6 → 20 classes) grow?

Seeded synthetic model-like graphs (``placement_synthetic``). For each size: the heuristic
(with its gap against the LP-relaxation bound where that solves), the MILP warm-started by
the heuristic (≤ 1,000 ops; its proven gap), and the best single class. Targets: ≤ 1 s for
200 ops × 10 classes; ≤ 10 s for 10,000 ops; heuristic within 2 % of the MILP where the MILP
proves optimality. Writes ``benchmarks/results/placement_scaling.json`` via ``_common``.

``heuristic_s`` is the whole ``solve(..., "heuristic")`` call: ``heuristic_search_s`` finding the
placement plus ``heuristic_bound_s`` computing the lower bound that certifies its gap (the
LP relaxation, ~0.5 s at 200 × 10 on 2 loaded cores).

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/placement_scaling.py [--quick]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_result  # noqa: E402
from placement_synthetic import synthetic_problem  # noqa: E402

from terrazzo.placement import solve  # noqa: E402


def main() -> None:
    quick = "--quick" in sys.argv
    sizes = [10, 50, 200, 1000] + ([] if quick else [10000])
    classes = [6, 10, 20]
    rows = []
    for n in sizes:
        for d in classes:
            prob = synthetic_problem(n, d, seed=n + d)
            row: dict[str, object] = {"ops": n, "classes": d, "edges": int(len(prob.edges))}
            t0 = time.perf_counter()
            h = solve(prob, "heuristic", time_limit_s=10.0)
            row["heuristic_s"] = time.perf_counter() - t0
            row["heuristic_usd_h"] = h.usd_per_hour
            row["heuristic_gap"] = h.gap
            row["heuristic_bound"] = "LP" if any("LP relaxation" in s for s in h.notes) else "fluid"
            # the placement itself vs the lower bound that certifies its gap (api.solve's note)
            split = [s for s in h.notes if "; search " in s]
            if split:
                row["heuristic_search_s"] = float(split[0].split("; search ")[1].split(" s")[0])
                row["heuristic_bound_s"] = float(split[0].split("bound ")[-1].split(" s")[0])
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
            print(
                {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()},
                flush=True,
            )
    cols = ["ops", "classes", "heuristic_s", "heuristic_search_s", "heuristic_bound_s", "heuristic_gap", "heuristic_bound", "milp_s", "milp_gap",
            "heuristic_vs_milp", "heuristic_usd_h", "milp_usd_h", "homogeneous_usd_h"]  # fmt: skip
    print_table(rows, cols, title="placement solve time and quality vs size")
    path = write_result("placement_scaling", rows, {"quick": quick})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
