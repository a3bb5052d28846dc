"""Baseline: every task on one device class; the cheapest class that meets every constraint."""

from __future__ import annotations

import numpy as np

from terrazzo.placement.problem import Problem


def solve_homogeneous(problem: Problem) -> np.ndarray | None:
    """All tasks on the single class with the lowest USD/hour among the feasible ones, or None."""
    best: tuple[float, np.ndarray] | None = None
    for d in range(problem.num_devices):
        a = np.full(problem.n, d, dtype=np.int64)
        ev = problem.evaluate(a)
        if ev.feasible and (best is None or ev.usd_per_hour < best[0]):
            best = (ev.usd_per_hour, a)
    return None if best is None else best[1]
