"""Baseline: HEFT (Topcuoglu et al., 2002), makespan-minimising list scheduling, blind to cost.

One processor per device class; tasks in decreasing upward rank (mean latency over the
classes that can run them plus mean transfer latency) take the class giving the earliest
finish time, with insertion into idle gaps. Memory per class is respected.
"""

from __future__ import annotations

import numpy as np

from terrazzo.placement.problem import Problem


def solve_heft(problem: Problem) -> np.ndarray | None:
    """The HEFT assignment (class index per task), or None when a task fits no class."""
    p = problem
    st = p.structure()
    allowed = p.allowed()
    if not allowed.any(axis=1).all():
        return None
    lat = np.where(allowed, p.latency_s, np.nan)
    mean_lat = np.nanmean(lat, axis=1)
    nd = p.num_devices
    off = ~np.eye(nd, dtype=bool)
    mean_base = float(p.xfer_base_s[off].mean()) if nd > 1 else 0.0
    mean_spb = float(p.xfer_s_per_byte[off].mean()) if nd > 1 else 0.0
    rank = np.zeros(p.n)
    for u in range(p.n - 1, -1, -1):
        best = 0.0
        for e in st["succs"][u]:
            v = int(p.edges[e, 1])
            best = max(best, mean_base + p.edge_bytes[e] * mean_spb + rank[v])
        rank[u] = mean_lat[u] + best
    # decreasing rank is a topological order (rank[u] > rank[v] for u -> v when latencies > 0);
    # break ties by topological position to stay safe with zero latencies.
    order = sorted(range(p.n), key=lambda i: (-rank[i], i))
    pos = {i: k for k, i in enumerate(order)}
    for u, v in p.edges.tolist():
        if pos[u] > pos[v]:
            order = list(range(p.n))
            break
    slots: list[list[tuple[float, float]]] = [[] for _ in range(nd)]
    assign = np.full(p.n, -1, dtype=np.int64)
    finish = np.zeros(p.n)
    mem = np.zeros(nd)
    for i in order:
        best_t: tuple[float, int, float] | None = None
        for d in np.flatnonzero(allowed[i]):
            if mem[d] + p.mem_bytes[i] > p.device_mem_bytes[d]:
                continue
            ready = 0.0
            for e in st["preds"][i]:
                u = int(p.edges[e, 0])
                a = assign[u]
                ready = max(
                    ready,
                    finish[u] + p.xfer_base_s[a, d] + p.edge_bytes[e] * p.xfer_s_per_byte[a, d],
                )
            dur = float(p.latency_s[i, d])
            start = _earliest_slot(slots[d], ready, dur)
            if best_t is None or start + dur < best_t[0]:
                best_t = (start + dur, int(d), start)
        if best_t is None:
            return None
        f, d, s = best_t  # type: ignore[assignment]  # numpy int / Optional narrowing
        assign[i] = d
        finish[i] = f
        mem[d] += p.mem_bytes[i]
        slots[d].append((s, f))
        slots[d].sort()
    return assign


def _earliest_slot(busy: list[tuple[float, float]], ready: float, dur: float) -> float:
    t = ready
    for s, f in busy:
        if t + dur <= s:
            return t
        t = max(t, f)
    return t
