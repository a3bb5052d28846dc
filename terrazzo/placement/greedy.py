"""Baseline: greedy cheapest-feasible, one pass in topological order with a latency look-ahead.

Each task takes the class with the lowest fluid USD/hour whose finish time (within TTFT for prefill tasks) plus the fastest
possible remainder of the longest path behind it (every later task on its fastest class, no
transfers) stays within the SLA, and whose memory and count still fit; when none does, the
class that finishes it earliest.
"""

from __future__ import annotations

import math

import numpy as np

from terrazzo.placement.problem import LATENCY_RTOL, Problem


def solve_greedy(problem: Problem) -> np.ndarray | None:
    """A greedy assignment (class index per task), or None when a task fits no class."""
    p = problem
    st = p.structure()
    allowed = p.allowed()
    if not allowed.any(axis=1).all():
        return None
    fastest = np.where(allowed, p.latency_s, np.inf).min(axis=1)
    tail = np.zeros(p.n)  # longest fastest-path strictly after i
    for u in range(p.n - 1, -1, -1):
        for e in st["succs"][u]:
            v = int(p.edges[e, 1])
            tail[u] = max(tail[u], fastest[v] + tail[v])
    w = p.fluid_cost()
    L = p.sla.latency_s * (1 + LATENCY_RTOL)
    is_prefill = p.prefill if p.prefill is not None else np.zeros(p.n, dtype=bool)
    ttft = math.inf if p.sla.ttft_s is None else p.sla.ttft_s * (1 + LATENCY_RTOL)
    assign = np.full(p.n, -1, dtype=np.int64)
    finish = np.zeros(p.n)
    busy = np.zeros(p.num_devices)
    mem = np.zeros(p.num_devices)
    for i in range(p.n):
        best_ok: tuple[float, int, float] | None = None
        best_fast: tuple[float, int] | None = None
        for d in np.flatnonzero(allowed[i]):
            start = 0.0
            xusd = 0.0
            for e in st["preds"][i]:
                u = int(p.edges[e, 0])
                a = assign[u]
                start = max(
                    start,
                    finish[u] + p.xfer_base_s[a, d] + p.edge_bytes[e] * p.xfer_s_per_byte[a, d],
                )
                xusd += p.xfer_usd[a, d]
            f = start + p.latency_s[i, d]
            if best_fast is None or f < best_fast[0]:
                best_fast = (f, int(d))
            fits = (
                mem[d] + p.mem_bytes[i] <= p.device_mem_bytes[d]
                and max(1, math.ceil((busy[d] + p.latency_s[i, d]) * p.load_factor - 1e-9))
                <= p.count[d]
            )
            ttft_ok = not is_prefill[i] or f <= ttft
            if f + tail[i] <= L and fits and ttft_ok:
                c = float(w[i, d]) + 3600.0 * p.rps * xusd
                if best_ok is None or c < best_ok[0]:
                    best_ok = (c, int(d), f)
        if best_ok is not None:
            d, f = best_ok[1], best_ok[2]  # type: ignore[assignment]  # numpy int / Optional narrowing
        else:
            assert best_fast is not None
            f, d = best_fast  # type: ignore[assignment]  # numpy int / Optional narrowing
        assign[i] = d
        finish[i] = f
        busy[d] += p.latency_s[i, d]
        mem[d] += p.mem_bytes[i]
    return assign
