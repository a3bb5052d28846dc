"""Baseline after Mélange (Griggs et al., 2024): whole-model replicas of one or more device types.

Every request runs the whole graph on one class; a small integer program picks how many
devices of each class to rent and which share of the traffic each serves:
min Σ usd_per_hour[d]·y[d] + 3600·rps·Σ s[d]·cost[d]  s.t.  Σ s[d] = 1,
y[d] ≥ rps/u · s[d] · busy[d],  y[d] ≤ count[d],  s[d] = 0 where the class alone misses the
SLA or memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from terrazzo.placement.problem import Problem


@dataclass(frozen=True, slots=True)
class MelangeMix:
    """Devices and traffic share per class (indices into problem.devices)."""

    devices: np.ndarray
    share: np.ndarray
    usd_per_hour: float
    gap: float


def solve_melange(problem: Problem, time_limit_s: float = 10.0) -> MelangeMix | None:
    """The cheapest replica mix, or None when no single class can hold the whole graph."""
    p = problem
    nd = p.num_devices
    ok = np.zeros(nd, dtype=bool)
    busy = np.zeros(nd)
    direct = np.zeros(nd)
    for d in range(nd):
        a = np.full(p.n, d, dtype=np.int64)
        ev = p.evaluate(a)
        # a replica mix needs each class's own SLA/memory; count is shared, checked in the ILP
        bad = [v for v in ev.violations if "available" not in v]
        ok[d] = not bad
        busy[d] = ev.busy_s[d]
        direct[d] = float(p.cost_usd[:, d].sum())
    if not ok.any():
        return None
    # columns: y[0..nd), s[0..nd)
    c = np.concatenate([p.usd_per_hour, 3600.0 * p.rps * direct])
    integrality = np.concatenate([np.ones(nd), np.zeros(nd)])
    ub = np.concatenate([np.where(ok, np.minimum(p.count, 1e9), 0), ok.astype(float)])
    a_sum = np.concatenate([np.zeros(nd), np.ones(nd)])[None, :]
    a_cap = np.hstack([np.eye(nd), -np.diag(p.load_factor * busy)])
    # a class that serves traffic needs at least one device: y >= s (s ≤ 1)
    a_one = np.hstack([np.eye(nd), -np.eye(nd)])
    cons = [
        LinearConstraint(a_sum, 1.0, 1.0),
        LinearConstraint(a_cap, 0.0, np.inf),
        LinearConstraint(a_one, 0.0, np.inf),
    ]
    res = milp(c, constraints=cons, integrality=integrality, bounds=Bounds(np.zeros(2 * nd), ub),
               options={"time_limit": time_limit_s})  # fmt: skip
    if res.x is None:
        return None
    y = np.round(res.x[:nd]).astype(np.int64)
    s = np.clip(res.x[nd:], 0.0, 1.0)
    s[s < 1e-9] = 0.0
    s = s / s.sum()
    # the ILP leaves y free where a class costs nothing: size it to the traffic instead
    need = np.where(s > 0, np.maximum(1, np.ceil(p.load_factor * s * busy - 1e-9)), 0).astype(
        np.int64
    )
    y = np.where(p.usd_per_hour > 0, np.maximum(y, need), need)
    y[s == 0] = 0
    obj = float(res.fun)
    bound = float(getattr(res, "mip_dual_bound", obj) or obj)
    gap = 0.0 if obj <= 0 or not math.isfinite(bound) else max(0.0, (obj - bound) / obj)
    return MelangeMix(y, s, obj, gap)
