"""Exact placement: a mixed-integer program solved by HiGHS, warm-started by the heuristic.

Variables: x[i,d] ∈ {0,1} (task i on class d, only where allowed), f[i] ≥ 0 finish time of
i (in units of the SLA latency), t[e] ≥ 0 transfer latency and c[e] ≥ 0 transfer cost of edge
e, y[d] ∈ ℤ≥0 devices of class d. Constraints: each task on one class; f[i] ≥ lat(i) for
sources and f[i] ≥ f[j] + t[e] + lat(i) along every edge e = (j, i); f[i] ≤ 1 (latency SLA)
and f[i] ≤ TTFT/L for prefill tasks; t[e] ≥ Σ_b T_e[a,b]·x[i,b] − M_a·(1 − x[j,a]) for every
class a of the producer (the big-M term switches on the row of the producer's class), the
same for c[e]; y[d] ≥ rps/u · Σ_i lat(i,d)·x[i,d], y[d] ≤ count[d]; Σ_i mem(i)·x[i,d] ≤
mem(d). Objective: Σ_d usd_per_hour[d]·y[d] + 3600·rps·(Σ cost(i,d)·x[i,d] + Σ c[e]).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from terrazzo.errors import PlacementError
from terrazzo.placement.problem import LATENCY_RTOL, Problem

# The y_d >= x_id rows tighten the relaxation (used for the LP bound always), but in the MILP
# HiGHS's root cut separation on them ran 25-40 s past a 7 s limit on a 200-op graph (no
# interrupt check there): the MILP keeps them only up to this many tasks.
_CLASS_ROWS_MAX_TASKS = 100


@dataclass(frozen=True, slots=True)
class MILPResult:
    """Assignment found by the MILP, its objective, dual bound, relative gap and status."""

    assign: np.ndarray | None
    objective: float
    bound: float
    gap: float
    status: str
    solve_time_s: float
    num_cols: int
    num_rows: int


def solve_milp(
    problem: Problem,
    *,
    time_limit_s: float = 10.0,
    warm_start: np.ndarray | None = None,
    mip_rel_gap: float = 1e-6,
    threads: int | None = None,
    relax: bool = False,
    options: dict[str, object] | None = None,
) -> MILPResult:
    """Solve the placement MILP with HiGHS.

    Args:
        problem: the placement problem.
        time_limit_s: wall-clock cap for HiGHS; the best incumbent and its gap are returned.
        warm_start: an assignment (class index per task) given to HiGHS as a start solution.
        mip_rel_gap: relative gap at which HiGHS stops as optimal.
        threads: HiGHS thread count (default: HiGHS's choice).
        relax: solve the LP relaxation instead (every variable continuous); its optimum is
            a lower bound on the MILP's, returned as ``bound`` (``assign`` is None).
        options: extra HiGHS options (name → value), e.g. ``{"solver": "ipm"}``.

    Returns:
        MILPResult; ``assign`` is None when no feasible solution was found (status says why).
    """
    import highspy

    t0 = time.perf_counter()
    p = problem
    n, nd = p.n, p.num_devices
    L = p.sla.latency_s * (1 + LATENCY_RTOL)
    allowed = p.allowed()
    if not allowed.any(axis=1).all():
        return MILPResult(
            None, math.inf, math.inf, 1.0, "infeasible (a task fits no class)", 0.0, 0, 0
        )
    lat = np.where(allowed, p.latency_s, 0.0)

    # -- columns ---------------------------------------------------------------------------
    xcol = np.full((n, nd), -1, dtype=np.int64)
    ii, dd = np.nonzero(allowed)
    nx_ = len(ii)
    xcol[ii, dd] = np.arange(nx_)
    fcol0 = nx_
    m = len(p.edges)
    T = np.zeros((m, nd, nd))
    C = np.zeros((m, nd, nd))
    if m:
        T = (p.xfer_base_s[None] + p.edge_bytes[:, None, None] * p.xfer_s_per_byte[None]) / L
        C = np.broadcast_to(p.xfer_usd[None], (m, nd, nd))
    has_t = np.flatnonzero(T.reshape(m, -1).max(axis=1) > 0) if m else np.zeros(0, dtype=np.int64)
    has_c = np.flatnonzero(C.reshape(m, -1).max(axis=1) > 0) if m else np.zeros(0, dtype=np.int64)
    tcol = np.full(m, -1, dtype=np.int64)
    tcol[has_t] = fcol0 + n + np.arange(len(has_t))
    ccol = np.full(m, -1, dtype=np.int64)
    ccol0 = fcol0 + n + len(has_t)
    ccol[has_c] = ccol0 + np.arange(len(has_c))
    need_y = (p.usd_per_hour > 0) | np.isfinite(p.count)
    ydev = np.flatnonzero(need_y)
    ycol0 = ccol0 + len(has_c)
    ncol = ycol0 + len(ydev)

    cost = np.zeros(ncol)
    cost[:nx_] = 3600.0 * p.rps * p.cost_usd[ii, dd]
    cost[ccol[has_c]] = 3600.0 * p.rps
    cost[ycol0:] = p.usd_per_hour[ydev]
    lower = np.zeros(ncol)
    upper = np.full(ncol, np.inf)
    upper[:nx_] = 1.0
    upper[fcol0 : fcol0 + n] = 1.0
    if p.prefill is not None and p.sla.ttft_s is not None:
        upper[fcol0 + np.flatnonzero(p.prefill)] = min(1.0, p.sla.ttft_s * (1 + LATENCY_RTOL) / L)
    upper[ycol0:] = np.where(np.isfinite(p.count[ydev]), p.count[ydev], np.inf)
    integral = np.zeros(ncol, dtype=bool)
    if not relax:
        integral[:nx_] = True
        integral[ycol0:] = True

    # -- rows --------------------------------------------------------------------------------
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    rlo: list[np.ndarray] = []
    rhi: list[np.ndarray] = []
    r = 0

    def add(rr: np.ndarray, cc: np.ndarray, vv: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        nonlocal r
        keep = cc >= 0
        rows.append(rr[keep] + r)
        cols.append(cc[keep])
        vals.append(vv[keep])
        rlo.append(lo)
        rhi.append(hi)
        r += len(lo)

    # each task on exactly one class
    add(ii, xcol[ii, dd], np.ones(nx_), np.ones(n), np.ones(n))
    # sources: f_i - Σ lat x >= 0
    indeg = np.bincount(p.edges[:, 1], minlength=n) if m else np.zeros(n, dtype=np.int64)
    src = np.flatnonzero(indeg == 0)
    k = len(src)
    rr = np.concatenate([np.arange(k), np.repeat(np.arange(k), nd)])
    cc = np.concatenate([fcol0 + src, xcol[src].ravel()])
    vv = np.concatenate([np.ones(k), -(lat[src] / L).ravel()])
    add(rr, cc, vv, np.zeros(k), np.full(k, np.inf))
    if m:
        # precedence: f_i - f_j - t_e - Σ lat(i) x(i) >= 0
        j, i = p.edges[:, 0], p.edges[:, 1]
        er = np.arange(m)
        rr = np.concatenate([er, er, er, np.repeat(er, nd)])
        cc = np.concatenate([fcol0 + i, fcol0 + j, tcol, xcol[i].ravel()])
        vv = np.concatenate([np.ones(m), -np.ones(m), -np.ones(m), -(lat[i] / L).ravel()])
        add(rr, cc, vv, np.zeros(m), np.full(m, np.inf))
        for sel, M3, col in ((has_t, T, tcol), (has_c, C, ccol)):
            if not len(sel):
                continue
            M3s = M3[sel]  # (k, a, b)
            bigm = M3s.max(axis=2)  # (k, a)
            ks, as_ = np.nonzero((bigm > 0) & allowed[j[sel]])
            q = len(ks)
            if not q:
                continue
            esel = sel[ks]
            qr = np.arange(q)
            # t_e - Σ_b T[a,b] x(i,b) - M_a x(j,a) >= -M_a
            rr = np.concatenate([qr, qr, np.repeat(qr, nd)])
            cc = np.concatenate([col[esel], xcol[j[esel], as_], xcol[i[esel]].ravel()])
            vv = np.concatenate([np.ones(q), -bigm[ks, as_], -M3s[ks, as_, :].ravel()])
            add(rr, cc, vv, -bigm[ks, as_], np.full(q, np.inf))
    # devices: y_d - rps/u Σ lat x >= 0
    for q, d in enumerate(ydev):
        on = np.flatnonzero(allowed[:, d])
        rr = np.zeros(len(on) + 1, dtype=np.int64)
        cc = np.concatenate([[ycol0 + q], xcol[on, d]])
        vv = np.concatenate([[1.0], -p.load_factor * lat[on, d]])
        add(rr, cc, vv, np.zeros(1), np.full(1, np.inf))
    # a class that runs any task rents at least one device: y_d >= x_id (tightens the relaxation)
    for q, d in enumerate(ydev):
        on = np.flatnonzero(allowed[:, d])
        k = len(on)
        if k == 0 or not (relax or n <= _CLASS_ROWS_MAX_TASKS):
            continue
        rr = np.concatenate([np.arange(k), np.arange(k)])
        cc = np.concatenate([np.full(k, ycol0 + q), xcol[on, d]])
        vv = np.concatenate([np.ones(k), -np.ones(k)])
        add(rr, cc, vv, np.zeros(k), np.full(k, np.inf))
    # memory per class
    for d in range(nd):  # type: ignore[assignment]  # numpy int / Optional narrowing
        on = np.flatnonzero(allowed[:, d])
        if math.isfinite(p.device_mem_bytes[d]) and p.mem_bytes[on].sum() > p.device_mem_bytes[d]:
            scale = p.device_mem_bytes[d]
            add(np.zeros(len(on), dtype=np.int64), xcol[on, d], p.mem_bytes[on] / scale,
                np.full(1, -np.inf), np.ones(1))  # fmt: skip

    A = sp.csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r, ncol)
    )
    lp = highspy.HighsLp()
    lp.num_col_ = ncol
    lp.num_row_ = r
    lp.col_cost_ = cost
    lp.col_lower_ = lower
    lp.col_upper_ = upper
    lp.row_lower_ = np.concatenate(rlo)
    lp.row_upper_ = np.concatenate(rhi)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = A.indptr
    lp.a_matrix_.index_ = A.indices
    lp.a_matrix_.value_ = A.data
    lp.integrality_ = [
        highspy.HighsVarType.kInteger if b else highspy.HighsVarType.kContinuous for b in integral
    ]
    h = highspy.Highs()
    h.silent()
    h.passModel(lp)
    remaining = max(0.05, time_limit_s - (time.perf_counter() - t0))
    h.setOptionValue("time_limit", float(remaining))
    h.setOptionValue("mip_rel_gap", float(mip_rel_gap))
    if threads is not None:
        h.setOptionValue("threads", int(threads))
    for key, value in (options or {}).items():
        h.setOptionValue(key, value)  # type: ignore[arg-type]  # HiGHS validates by name
    if warm_start is not None and not relax:
        sol = _start_vector(
            p, np.asarray(warm_start, dtype=np.int64), xcol, fcol0, tcol, ccol, ydev, ycol0, ncol, L
        )
        if sol is not None:
            hs = highspy.HighsSolution()
            hs.col_value = sol.tolist()
            hs.value_valid = True
            h.setSolution(hs)
    # HiGHS checks its time limit only at some points (root cuts and heuristics can overrun
    # it several-fold on a loaded machine): interrupt from its callbacks at a hard deadline
    hard_deadline = t0 + time_limit_s * 1.05 + 0.1

    def _interrupt(e: object) -> None:
        if time.perf_counter() > hard_deadline:
            e.interrupt()  # type: ignore[attr-defined]

    h.cbMipInterrupt += _interrupt
    h.cbSimplexInterrupt += _interrupt
    h.cbIpmInterrupt += _interrupt
    h.run()
    status = h.modelStatusToString(h.getModelStatus())
    if h.getModelStatus() == highspy.HighsModelStatus.kInterrupt:
        status = "Time limit reached (interrupted)"
    info = h.getInfo()
    elapsed = time.perf_counter() - t0
    if relax:
        ok = h.getModelStatus() == highspy.HighsModelStatus.kOptimal
        bound = float(info.objective_function_value) if ok else -math.inf
        return MILPResult(None, bound, bound, math.nan, status, elapsed, ncol, r)
    if info.primal_solution_status != 2:  # kSolutionStatusFeasible
        return MILPResult(None, math.inf, float(info.mip_dual_bound), 1.0, status, elapsed, ncol, r)
    x = np.asarray(h.getSolution().col_value)[:nx_]
    assign = np.full(n, -1, dtype=np.int64)
    best = np.full(n, -1.0)
    for col_i, (ti, di) in enumerate(zip(ii, dd, strict=True)):
        if x[col_i] > best[ti]:
            best[ti] = x[col_i]
            assign[ti] = di
    obj = float(info.objective_function_value)
    # stopped before the root LP, HiGHS has no dual bound (-inf): the fluid bound is valid
    bound = max(float(info.mip_dual_bound), p.lower_bound_usd_per_hour())
    gap = 0.0 if obj <= 0 else max(0.0, (obj - bound) / abs(obj))
    if h.getModelStatus() == highspy.HighsModelStatus.kOptimal:
        gap = min(gap, mip_rel_gap)
    return MILPResult(assign, obj, bound, float(min(1.0, gap)), status, elapsed, ncol, r)


def _start_vector(
    p: Problem,
    assign: np.ndarray,
    xcol: np.ndarray,
    fcol0: int,
    tcol: np.ndarray,
    ccol: np.ndarray,
    ydev: np.ndarray,
    ycol0: int,
    ncol: int,
    L: float,
) -> np.ndarray | None:
    ev = p.evaluate(assign)
    if not ev.feasible:
        return None
    sol = np.zeros(ncol)
    cols = xcol[np.arange(p.n), assign]
    if (cols < 0).any():
        return None
    sol[cols] = 1.0
    sol[fcol0 : fcol0 + p.n] = np.minimum(ev.finish_s / L, 1.0)
    if len(p.edges):
        t = p.transfer_latency(assign) / L
        c = p.xfer_usd[assign[p.edges[:, 0]], assign[p.edges[:, 1]]]
        sel = tcol >= 0
        sol[tcol[sel]] = t[sel]
        sel = ccol >= 0
        sol[ccol[sel]] = c[sel]
    sol[ycol0 : ycol0 + len(ydev)] = ev.devices[ydev]
    return sol


def lp_lower_bound(problem: Problem, *, time_limit_s: float = 2.0, transfers: bool = True) -> float:
    """Optimum of the MILP's LP relaxation (a valid lower bound on USD/hour); -inf if unsolved.

    With ``transfers=False`` the transfer latencies and costs are dropped (set to zero): a
    further relaxation, still a valid bound, without the per-edge big-M rows (3-4× faster
    at 200 ops × 10 classes, ~6% lower there).
    """
    if not problem.allowed().any(axis=1).all():
        return -math.inf
    if not transfers:
        zero = np.zeros_like(problem.xfer_base_s)
        problem = dataclasses.replace(
            problem, xfer_base_s=zero, xfer_s_per_byte=zero, xfer_usd=zero, _cache={}
        )
    return solve_milp(problem, time_limit_s=time_limit_s, relax=True).bound


def require_solution(res: MILPResult, time_limit_s: float) -> np.ndarray:
    """The MILP's assignment, or PlacementError when it found none in time."""
    if res.assign is None:
        raise PlacementError(
            f"the MILP found no feasible placement ({res.status}) within {time_limit_s:g} s"
        )
    return res.assign
