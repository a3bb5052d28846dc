"""Question: how much cheaper (USD/hour at the SLA) is the MILP plan than each baseline, and how close is the heuristic to the MILP?

Problems: the zoo models (mlp, cnn, bert, gpt2, llama; exported with ``terrazzo.zoo.export_onnx``,
imported with ``terrazzo.frontend.from_onnx``, costed by the cost model on a fleet of cpu, t4,
l4, a100-80g and h100), the agent-like graph and seeded synthetic graphs. The SLA of every
graph sits halfway between the fastest and the cheapest single-class latency so that it binds.
Second table: heuristic vs MILP USD/hour over several seeds of synthetic graphs ≤ 200 ops.
Writes ``benchmarks/results/placement_baselines.json`` through ``_common.write_result``.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/placement_baselines.py [--quick]``.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_result  # noqa: E402
from placement_synthetic import agent_problem, synthetic_problem  # noqa: E402

from terrazzo.errors import PlacementError  # noqa: E402
from terrazzo.placement import SLA, SOLVERS, Fleet, Problem, solve, to_problem  # noqa: E402

ZOO = ("mlp", "cnn", "bert", "gpt2", "llama")
FLEET = {
    "devices": {"cpu": {}, "t4": {}, "l4": {}, "a100-80g": {}, "h100": {}},
    "pricing": {"mode": "cloud"},
}


def binding_sla(prob: Problem) -> Problem:
    """The problem with its SLA halfway between the fastest and the cheapest single class."""
    homo = []
    for d in range(prob.num_devices):
        if prob.allowed()[:, d].all():
            ev = prob.evaluate(np.full(prob.n, d, dtype=np.int64))
            homo.append((ev.usd_per_hour, ev.latency_s))
    fastest = min(h[1] for h in homo)
    cheapest = min(homo)[1]
    sla_s = fastest + 0.5 * (cheapest - fastest) if cheapest > fastest else 1.2 * fastest
    return dataclasses.replace(prob, sla=SLA(sla_s), _cache={})


def zoo_problems(rps: float) -> list[Problem]:
    """The zoo models as placement problems on a five-class fleet."""
    from terrazzo import zoo
    from terrazzo.frontend import from_onnx

    fleet = Fleet.from_dict(FLEET)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ZOO:
            graph = from_onnx(zoo.export_onnx(name, tmp))
            prob = to_problem(graph, fleet, SLA(1e9), rps)
            out.append(dataclasses.replace(binding_sla(prob), name=f"zoo-{name}"))
    return out


def baselines(problems: list[Problem]) -> list[dict[str, object]]:
    rows = []
    for prob in problems:
        row: dict[str, object] = {
            "problem": prob.name,
            "ops": prob.n,
            "sla_ms": prob.sla.latency_s * 1e3,
        }
        for s in SOLVERS:
            t0 = time.perf_counter()
            try:
                p = solve(prob, s, time_limit_s=10.0)
                row[s] = p.usd_per_hour
                row[f"{s}_gap"] = p.gap
            except PlacementError as e:
                row[s] = None
                row[f"{s}_error"] = str(e)
            row[f"{s}_s"] = time.perf_counter() - t0
        rows.append(row)
        print(f"  {prob.name}: " + ", ".join(f"{s} {row[s]}" for s in SOLVERS), flush=True)
    return rows


def heuristic_vs_milp(sizes: list[tuple[int, int]], seeds: int) -> list[dict[str, object]]:
    rows = []
    for n, d in sizes:
        for k in range(seeds):
            prob = synthetic_problem(n, d, seed=1000 + 100 * k + n + d)
            t0 = time.perf_counter()
            h = solve(prob, "heuristic", time_limit_s=10.0)
            th = time.perf_counter() - t0
            t0 = time.perf_counter()
            m = solve(prob, "milp", time_limit_s=30.0)
            tm = time.perf_counter() - t0
            optimal = m.gap <= 1e-4
            rows.append({
                "ops": n, "classes": d, "seed": k, "heuristic_usd_h": h.usd_per_hour, "heuristic_s": th,
                "milp_usd_h": m.usd_per_hour, "milp_s": tm, "milp_gap": m.gap, "milp_optimal": optimal,
                "heuristic_vs_milp": h.usd_per_hour / m.usd_per_hour - 1.0,
            })  # fmt: skip
            print(
                f"  {n}x{d} seed {k}: heuristic {h.usd_per_hour:.4g} milp {m.usd_per_hour:.4g} gap {m.gap:.2g}",
                flush=True,
            )
    return rows


def main() -> None:
    quick = "--quick" in sys.argv
    problems = zoo_problems(rps=100.0) + [agent_problem(rps=20.0), synthetic_problem(50, 6, seed=1)]
    if not quick:
        problems.append(synthetic_problem(200, 10, seed=2))
    rows = baselines(problems)
    table = []
    for r in rows:
        base = r["milp"]
        t: dict[str, object] = {"problem": r["problem"], "ops": r["ops"], "sla ms": r["sla_ms"]}
        for s in SOLVERS:
            v = r[s]
            t[s] = "infeasible" if v is None else f"{v:.4g} ({v / base:.2f}x)"  # type: ignore[operator]
        t["milp gap"] = r["milp_gap"]
        table.append(t)
    print_table(
        table,
        ["problem", "ops", "sla ms", *SOLVERS, "milp gap"],
        title="USD/hour at the SLA (× MILP)",
    )
    sizes = [(10, 6), (20, 6), (50, 6), (50, 10)] + ([] if quick else [(100, 6), (200, 10)])
    gaps = heuristic_vs_milp(sizes, seeds=2 if quick else 4)
    print_table(gaps, ["ops", "classes", "seed", "heuristic_usd_h", "milp_usd_h", "milp_gap",
                       "heuristic_vs_milp", "heuristic_s", "milp_s"], title="heuristic vs MILP")  # fmt: skip
    proven = [g for g in gaps if g["milp_optimal"]]
    within = [g for g in proven if g["heuristic_vs_milp"] <= 0.02 + 1e-9]  # type: ignore[operator]
    summary = {
        "milp_proved_optimal": len(proven),
        "heuristic_within_2pct_of_proven": len(within),
        "worst_heuristic_vs_proven_milp": max(
            (g["heuristic_vs_milp"] for g in proven), default=None
        ),  # type: ignore[type-var]
    }
    print(
        f"heuristic within 2% of the MILP on {len(within)}/{len(proven)} instances the MILP proved optimal"
    )
    path = write_result(
        "placement_baselines", rows, {"heuristic_vs_milp": gaps, "summary": summary}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
