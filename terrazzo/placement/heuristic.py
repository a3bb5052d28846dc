"""Fast placement for large graphs: chain coarsening, Lagrangian dynamic programming, local search.

1. Coarsen: split the DAG into maximal chains (runs whose inner links are the only edge out
   of one task and into the next).
2. Lagrangian DP: for a price λ on latency (USD/hour per second), place each chain by a
   Viterbi pass over its tasks (exact for the chain given its already-placed producers)
   minimising fluid USD/hour + λ·(latency + transfers); bisect λ to the cheapest placement
   that meets the SLA.
3. Repair memory/count violations, then local search: move single tasks or whole chains to
   another class when the exact objective (device integrality included) drops and the
   longest path through the moved tasks stays within the SLA.
The result warm-starts the MILP.
"""

from __future__ import annotations

import math
import time

import numpy as np

from terrazzo.placement.problem import LATENCY_RTOL, Problem


def chains(problem: Problem) -> list[list[int]]:
    """Maximal chains in topological order: u→v joins a chain when it is u's only out-edge and v's only in-edge."""
    st = problem.structure()
    n = problem.n
    nxt = np.full(n, -1, dtype=np.int64)
    has_prev = np.zeros(n, dtype=bool)
    for u in range(n):
        if len(st["succs"][u]) == 1:
            v = int(problem.edges[st["succs"][u][0], 1])
            if len(st["preds"][v]) == 1:
                nxt[u] = v
                has_prev[v] = True
    out = []
    for u in range(n):
        if not has_prev[u]:
            c = [u]
            while nxt[c[-1]] >= 0:
                c.append(int(nxt[c[-1]]))
            out.append(c)
    out.sort(key=lambda c: c[0])
    return out


def _edge_matrix(problem: Problem, e: int) -> np.ndarray:
    return problem.xfer_base_s + problem.edge_bytes[e] * problem.xfer_s_per_byte


def lagrangian_assign(problem: Problem, lam: float, chain_list: list[list[int]], allowed: np.ndarray) -> np.ndarray:
    """Place every chain by Viterbi, minimising fluid cost + lam·latency given placed producers."""
    p = problem
    st = p.structure()
    w = np.where(allowed, p.fluid_cost(), np.inf)
    lat = np.where(allowed, p.latency_s, np.inf)
    score = w + lam * lat
    xcost = 3600.0 * p.rps * p.xfer_usd
    assign = np.full(p.n, -1, dtype=np.int64)
    # chains are topologically ordered by head position, and a head's producers are in
    # earlier chains, but tasks of an earlier chain may come after the head; process chains
    # in order of their head's level to keep producers placed before consumers.
    level = st["level"]
    order = sorted(chain_list, key=lambda c: (int(level[c[0]]), c[0]))
    for c in order:
        head = c[0]
        cur = score[head].copy()
        for e in st["preds"][head]:
            u = int(p.edges[e, 0])
            a = assign[u]
            cur = cur + lam * _edge_matrix(p, e)[a] + xcost[a]
        if len(c) == 1:
            assign[head] = int(np.argmin(cur))
            continue
        back = np.zeros((len(c), p.num_devices), dtype=np.int64)
        for k in range(1, len(c)):
            e = st["preds"][c[k]][0]
            trans = cur[:, None] + lam * _edge_matrix(p, e) + xcost  # (prev, cur)
            back[k] = np.argmin(trans, axis=0)
            cur = trans[back[k], np.arange(p.num_devices)] + score[c[k]]
        d = int(np.argmin(cur))
        for k in range(len(c) - 1, -1, -1):
            assign[c[k]] = d
            d = int(back[k, d])
    return assign


class _Search:
    """Incremental state for local search: loads, memory, longest paths."""

    def __init__(self, p: Problem, assign: np.ndarray) -> None:
        self.p = p
        self.a = assign.copy()
        self.lat = np.where(np.isfinite(p.latency_s), p.latency_s, np.inf)
        self.busy = np.bincount(assign, weights=self.lat[np.arange(p.n), assign], minlength=p.num_devices)
        self.cnt = np.bincount(assign, minlength=p.num_devices)
        self.mem = np.bincount(assign, weights=p.mem_bytes, minlength=p.num_devices)
        self.L = p.sla.latency_s * (1 + LATENCY_RTOL)
        self.st = p.structure()
        self.refresh()

    def refresh(self) -> None:
        self.f, self.g = self.p.longest_paths(self.a)

    def devices(self, busy: float, cnt: int) -> float:
        return 0.0 if cnt == 0 else max(1.0, math.ceil(busy * self.p.load_factor - 1e-9))

    def class_cost(self, d: int, busy: float, cnt: int) -> float:
        return self.devices(busy, cnt) * self.p.usd_per_hour[d]

    def move_delta(self, group: list[int], b: int) -> tuple[float, float, float, bool] | None:
        """Moving ``group`` (one class, a chain) to class b: (exact Δ USD/hour, fluid Δ, worst
        increase of any path through the group, whether the longest path through it stays
        within the SLA by the current f/g), or None when memory or counts forbid it."""
        p, a = self.p, int(self.a[group[0]])
        if a == b:
            return None
        lat_a = float(self.lat[group, a].sum())
        lat_b = float(self.lat[group, b].sum())
        if not math.isfinite(lat_b):
            return None
        k = len(group)
        mem = float(p.mem_bytes[group].sum())
        if self.mem[b] + mem > p.device_mem_bytes[b]:
            return None
        nb = self.devices(self.busy[b] + lat_b, self.cnt[b] + k)
        if nb > p.count[b]:
            return None
        head, tail = group[0], group[-1]
        xb, xs = p.xfer_base_s, p.xfer_s_per_byte
        enter = 0.0
        d_in = 0.0
        for e in self.st["preds"][head]:
            u = int(p.edges[e, 0])
            au = self.a[u]
            t_new = xb[au, b] + p.edge_bytes[e] * xs[au, b]
            t_old = xb[au, a] + p.edge_bytes[e] * xs[au, a]
            enter = max(enter, self.f[u] + t_new)
            d_in = max(d_in, t_new - t_old)
        leave = 0.0
        d_out = 0.0
        for e in self.st["succs"][tail]:
            v = int(p.edges[e, 1])
            av = self.a[v]
            t_new = xb[b, av] + p.edge_bytes[e] * xs[b, av]
            t_old = xb[a, av] + p.edge_bytes[e] * xs[a, av]
            leave = max(leave, self.g[v] + t_new)
            d_out = max(d_out, t_new - t_old)
        own_ok = enter + lat_b + leave <= self.L
        inc = d_in + (lat_b - lat_a) + d_out
        old = self.class_cost(a, self.busy[a], self.cnt[a]) + self.class_cost(b, self.busy[b], self.cnt[b])
        new = self.class_cost(a, self.busy[a] - lat_a, self.cnt[a] - k) + self.class_cost(b, self.busy[b] + lat_b, self.cnt[b] + k)
        dx = 0.0
        xu = p.xfer_usd
        for e in self.st["preds"][head]:
            u = int(p.edges[e, 0])
            dx += xu[self.a[u], b] - xu[self.a[u], a]
        for e in self.st["succs"][tail]:
            v = int(p.edges[e, 1])
            dx += xu[b, self.a[v]] - xu[a, self.a[v]]
        direct = float(p.cost_usd[group, b].sum() - p.cost_usd[group, a].sum())
        per_req = 3600.0 * p.rps * (direct + dx)
        exact = new - old + per_req
        fluid = p.load_factor * (lat_b * p.usd_per_hour[b] - lat_a * p.usd_per_hour[a]) + per_req
        return exact, fluid, inc, own_ok

    def apply(self, group: list[int], b: int) -> None:
        a = int(self.a[group[0]])
        k = len(group)
        self.busy[a] -= float(self.lat[group, a].sum())
        self.busy[b] += float(self.lat[group, b].sum())
        self.cnt[a] -= k
        self.cnt[b] += k
        mem = float(self.p.mem_bytes[group].sum())
        self.mem[a] -= mem
        self.mem[b] += mem
        self.a[group] = b


def local_search(problem: Problem, assign: np.ndarray, chain_list: list[list[int]], deadline: float) -> np.ndarray:
    """Improve a feasible assignment by single-task and whole-chain moves until no move helps.

    Moves are taken in rounds against one longest-path computation: the first move of a
    round is checked exactly; later ones only while the sum of their worst path increases
    fits in the round's global slack (so every path stays within the SLA).
    """
    p = problem
    # TTFT bounds the finish of prefill tasks anywhere in the graph: check moves exactly
    full_check = p.prefill is not None and p.sla.ttft_s is not None
    s = _Search(p, assign)
    allowed = p.allowed()
    groups = [c for c in chain_list if len(c) > 1] + [[i] for i in range(p.n)]
    for _ in range(50):
        s.refresh()
        budget = s.L - float(s.f.max())
        used = 0.0
        accepted = 0
        deferred = False
        for grp in groups:
            if time.perf_counter() > deadline:
                return s.a
            a = int(s.a[grp[0]])
            if any(int(s.a[i]) != a for i in grp):
                continue
            best = None
            for b in range(p.num_devices):
                if b == a or not allowed[grp, b].all():
                    continue
                dl = s.move_delta(grp, b)
                if dl is None:
                    continue
                exact, fluid, inc, own_ok = dl
                if not (exact < -1e-9 or (exact <= 1e-9 and fluid < -1e-9)):
                    continue
                safe = used + max(0.0, inc) <= budget or (accepted == 0 and own_ok)
                if not safe:
                    deferred = True
                    continue
                if full_check:
                    trial = s.a.copy()
                    trial[grp] = b
                    if not p.evaluate(trial).feasible:
                        continue
                if best is None or (exact, fluid) < best[0]:
                    best = ((exact, fluid), b, inc)
            if best is not None:
                s.apply(grp, best[1])
                used += max(0.0, best[2])
                accepted += 1
        if accepted == 0 or (not deferred and accepted == 0):
            break
    return s.a


def solve_heuristic(problem: Problem, *, time_limit_s: float = 10.0) -> np.ndarray | None:
    """A feasible assignment (class index per task), or None when none was found."""
    t0 = time.perf_counter()
    deadline = t0 + time_limit_s
    p = problem
    allowed = p.allowed()
    if not allowed.any(axis=1).all():
        return None
    ch = chains(p)
    candidates: list[np.ndarray] = []

    def feasible(a: np.ndarray) -> bool:
        return p.evaluate(a).feasible

    a0 = lagrangian_assign(p, 0.0, ch, allowed)
    if feasible(a0):
        candidates.append(a0)
    else:
        # scale λ so that latency and cost terms are comparable, then bisect in log space
        w = p.fluid_cost()
        lat = np.where(allowed, p.latency_s, np.nan)
        spread_w = float(np.nanmax(np.where(np.isfinite(w), w, np.nan)) or 1.0)
        spread_l = float(np.nanmin(lat[lat > 0]) if np.any(lat > 0) else 1e-6)
        lo, hi = 0.0, max(1e-12, spread_w / spread_l)
        found = None
        for _ in range(40):
            a = lagrangian_assign(p, hi, ch, allowed)
            if feasible(a):
                found = a
                break
            hi *= 8.0
            if time.perf_counter() > deadline:
                break
        if found is None:
            fast = np.where(allowed, p.latency_s, np.inf).argmin(axis=1)
            if feasible(fast):
                found = fast
            else:
                repaired = _repair(p, fast, ch, deadline)
                if repaired is None:
                    return None
                found = repaired
        else:
            lo = hi / 8.0 if hi > 0 else 0.0
            for _ in range(14):
                if time.perf_counter() > deadline:
                    break
                mid = math.sqrt(lo * hi) if lo > 0 else hi / 64.0
                a = lagrangian_assign(p, mid, ch, allowed)
                if feasible(a):
                    hi, found = mid, a
                else:
                    lo = mid
                if hi / max(lo, 1e-300) < 1.05:
                    break
        candidates.append(found)
    # single-class starts: device integrality often favours few classes over the DP's spread
    homo = []
    for d in range(p.num_devices):
        if allowed[:, d].all():
            a = np.full(p.n, d, dtype=np.int64)
            ev = p.evaluate(a)
            if ev.feasible:
                homo.append((ev.usd_per_hour, d, a))
    homo.sort(key=lambda h: h[0])
    candidates.extend(h[2] for h in homo[:2])
    feas = []
    for c in candidates:
        if not p.evaluate(c).feasible:
            c = _repair(p, c, ch, deadline)
        if c is not None:
            feas.append(c)
    if not feas:
        return None
    results = []
    for k, c in enumerate(feas):
        # share the remaining time between the starts
        left = deadline - time.perf_counter()
        results.append(local_search(p, c, ch, time.perf_counter() + max(0.0, left / (len(feas) - k))))
    return min(results, key=lambda a: p.evaluate(a).usd_per_hour)


def _repair(p: Problem, assign: np.ndarray, ch: list[list[int]], deadline: float) -> np.ndarray | None:
    """Move tasks off classes that exceed memory or count, preferring the least costly moves."""
    a = assign.copy()
    allowed = p.allowed()
    for _ in range(p.n * p.num_devices):
        ev = p.evaluate(a)
        if ev.feasible:
            return a
        if time.perf_counter() > deadline:
            return None
        mem = np.bincount(a, weights=p.mem_bytes, minlength=p.num_devices)
        over = [d for d in range(p.num_devices) if mem[d] > p.device_mem_bytes[d] or ev.devices[d] > p.count[d]]
        if not over:
            return None  # latency infeasible and nothing to repair
        d = over[0]
        on = np.flatnonzero(a == d)
        best = None
        for i in on:
            for b in range(p.num_devices):
                if b == d or not allowed[i, b]:
                    continue
                a2 = a.copy()
                a2[i] = b
                e2 = p.evaluate(a2)
                key = (len(e2.violations), e2.latency_s > p.sla.latency_s, e2.usd_per_hour)
                if best is None or key < best[0]:
                    best = (key, i, b)
        if best is None:
            return None
        a[best[1]] = best[2]
    return None
