"""The placement entry point: dispatch to a solver, build the Plan, explain infeasibility.

``plan`` takes an ``ir.Graph`` (costed through the fleet and the cost model), a measured
task graph (file or ``TaskGraph``) or a ready ``Problem``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from terrazzo.errors import PlacementError
from terrazzo.ir import Graph
from terrazzo.placement.adapters import (
    TaskGraph,
    load_task_graph,
    problem_from_graph,
    problem_from_tasks,
)
from terrazzo.placement.fleet import SLA, Fleet
from terrazzo.placement.greedy import solve_greedy
from terrazzo.placement.heft import solve_heft
from terrazzo.placement.heuristic import solve_heuristic
from terrazzo.placement.homogeneous import solve_homogeneous
from terrazzo.placement.melange import solve_melange
from terrazzo.placement.milp import lp_lower_bound, solve_milp
from terrazzo.placement.plan import Plan, Stage, build_plan, relative_gap
from terrazzo.placement.problem import LATENCY_RTOL, Problem

if TYPE_CHECKING:
    from terrazzo.costmodel import Catalog, CostModel

SOLVERS = ("milp", "heuristic", "heft", "homogeneous", "greedy", "melange")


def plan(
    graph_or_tasks: Graph | TaskGraph | Problem | str | Path,
    fleet: Fleet | None = None,
    sla: SLA | None = None,
    rps: float = 1.0,
    solver: str = "milp",
    *,
    time_limit_s: float = 10.0,
    target_utilisation: float = 0.8,
    catalog: Catalog | None = None,
    cost_model: CostModel | None = None,
) -> Plan:
    """Place a graph on a fleet at the lowest USD/hour that meets the SLA at ``rps``.

    Args:
        graph_or_tasks: an ``ir.Graph``, a measured ``TaskGraph`` or its YAML path, or a Problem.
        fleet: device classes and pricing (required for an ir.Graph; optional for task graphs,
            where it restricts the classes and applies counts).
        sla: latency bounds (a task graph's own ``sla:`` is used when omitted).
        rps: traffic target, requests per second.
        solver: one of ``SOLVERS``.
        time_limit_s: cap on solver time (MILP returns its best incumbent and gap).
        target_utilisation: busy fraction devices are sized for.
        catalog, cost_model: override the cost model's catalog / model (graphs only).

    Returns:
        A verified Plan naming its solver and optimality gap.

    Raises:
        PlacementError: unknown solver, or no placement meets the constraints (the message
            names the binding constraint and the closest option).
    """
    if solver not in SOLVERS:
        raise PlacementError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    problem = to_problem(
        graph_or_tasks, fleet, sla, rps, target_utilisation=target_utilisation,
        catalog=catalog, cost_model=cost_model,
    )  # fmt: skip
    return solve(problem, solver, time_limit_s=time_limit_s)


def to_problem(
    graph_or_tasks: Graph | TaskGraph | Problem | str | Path,
    fleet: Fleet | None,
    sla: SLA | None,
    rps: float,
    *,
    target_utilisation: float = 0.8,
    catalog: Catalog | None = None,
    cost_model: CostModel | None = None,
) -> Problem:
    """Build the Problem for any accepted input (see ``plan``)."""
    if isinstance(graph_or_tasks, Problem):
        return graph_or_tasks
    if isinstance(graph_or_tasks, str | Path):
        graph_or_tasks = load_task_graph(graph_or_tasks)
    if isinstance(graph_or_tasks, TaskGraph):
        return problem_from_tasks(
            graph_or_tasks, fleet=fleet, sla=sla, rps=rps, target_utilisation=target_utilisation
        )
    if isinstance(graph_or_tasks, Graph):
        if fleet is None:
            raise PlacementError("placing a model graph needs a fleet (--fleet fleet.yaml)")
        if sla is None:
            raise PlacementError("placing a model graph needs an SLA (--sla 50ms)")
        return problem_from_graph(
            graph_or_tasks, fleet, sla, rps=rps, target_utilisation=target_utilisation,
            catalog=catalog, cost_model=cost_model,
        )  # fmt: skip
    raise PlacementError(f"cannot place a {type(graph_or_tasks).__name__}")


def solve(problem: Problem, solver: str = "milp", *, time_limit_s: float = 10.0) -> Plan:
    """Run one solver on a Problem and return a verified Plan (PlacementError if infeasible)."""
    t0 = time.perf_counter()
    if problem.n == 0:
        raise PlacementError("nothing to place: the graph has no ops")
    if solver == "melange":
        return _melange_plan(problem, t0, time_limit_s)
    notes: list[str] = []
    if solver == "milp":
        warm = solve_heuristic(problem, time_limit_s=max(0.2, time_limit_s * 0.3))
        res = solve_milp(
            problem,
            time_limit_s=max(0.1, time_limit_s - (time.perf_counter() - t0)),
            warm_start=warm,
        )
        assign = res.assign
        gap = res.gap
        if assign is None and warm is not None:
            assign = warm
            gap = relative_gap(
                problem.evaluate(warm).usd_per_hour,
                max(res.bound, problem.lower_bound_usd_per_hour())
                if math.isfinite(res.bound)
                else problem.lower_bound_usd_per_hour(),
            )
            notes.append(f"MILP stopped without an incumbent ({res.status}); heuristic plan kept")
        elif assign is not None and warm is not None:
            ew, em = problem.evaluate(warm), problem.evaluate(assign)
            if not em.feasible or ew.usd_per_hour < em.usd_per_hour - 1e-12:
                assign = warm  # HiGHS's tolerance can leave a marginally worse/invalid point
                gap = relative_gap(ew.usd_per_hour, res.bound)
        if res.status != "Optimal" and assign is not None:
            notes.append(f"MILP status: {res.status} after {res.solve_time_s:.2f} s")
    else:
        fn = {
            # time_limit_s caps the whole call: keep room for the bound and the plan
            "heuristic": lambda p: solve_heuristic(p, time_limit_s=0.7 * time_limit_s),
            "heft": solve_heft,
            "homogeneous": solve_homogeneous,
            "greedy": solve_greedy,
        }[solver]
        assign = fn(problem)
        gap = math.nan
    if assign is None or not problem.evaluate(assign).feasible:
        reason = "" if assign is None else "; ".join(problem.evaluate(assign).violations)
        raise PlacementError(diagnose(problem, solver, reason))
    if math.isnan(gap):
        t_bound = time.perf_counter()
        left = time_limit_s - (t_bound - t0)
        bound, how = lower_bound(
            problem, time_limit_s=min(2.0, max(0.1, left - 0.05 * time_limit_s)), quick=True
        )
        gap = relative_gap(problem.evaluate(assign).usd_per_hour, bound)
        notes.append(
            f"gap against the {how}; search {t_bound - t0:.3g} s, "
            f"bound {time.perf_counter() - t_bound:.3g} s"
        )
    return build_plan(problem, assign, solver, gap, time.perf_counter() - t0, tuple(notes)).verify()


# LP relaxations above this many (task, class) columns take seconds; use the simple bound
_LP_BOUND_MAX_COLS = 30_000


# above this many per-edge big-M rows (edges × classes) the LP relaxation with transfers
# takes ~0.5 s or more; the fast solvers' gap then uses the LP without transfers
_LP_BOUND_MAX_XFER_ROWS = 1500


def lower_bound(
    problem: Problem, *, time_limit_s: float = 2.0, quick: bool = False
) -> tuple[float, str]:
    """The best cheap lower bound on USD/hour and its name: the MILP's LP relaxation (with
    the at-least-one-device rows) where it solves in time, else the fluid bound.

    ``quick`` drops the transfers from the LP when the graph has more than
    ``_LP_BOUND_MAX_XFER_ROWS`` edge × class rows (a weaker bound at a quarter of the time).
    """
    simple = problem.lower_bound_usd_per_hour()
    if int(problem.allowed().sum()) <= _LP_BOUND_MAX_COLS:
        rows = len(problem.edges) * problem.num_devices
        with_xfer = not quick or rows <= _LP_BOUND_MAX_XFER_ROWS
        lp = lp_lower_bound(problem, time_limit_s=time_limit_s, transfers=with_xfer)
        if math.isfinite(lp) and lp >= simple:
            return lp, "MILP's LP relaxation bound" + ("" if with_xfer else " without transfers")
    return simple, "fluid lower bound (no SLA, transfers or integrality)"


def _melange_plan(problem: Problem, t0: float, time_limit_s: float) -> Plan:
    mix = solve_melange(problem, time_limit_s=time_limit_s)
    if mix is None:
        raise PlacementError(
            diagnose(
                problem, "melange", "no single device class holds the whole graph within the SLA"
            )
        )
    p = problem
    used = [d for d in range(p.num_devices) if mix.share[d] > 0]
    stages = []
    lat = 0.0
    energy = 0.0
    ttft = None
    for k, d in enumerate(sorted(used, key=lambda d: -mix.share[d])):
        a = np.full(p.n, d, dtype=np.int64)
        ev = p.evaluate(a)
        lat = max(lat, ev.latency_s)
        energy += mix.share[d] * ev.energy_j
        if ev.ttft_s is not None:
            ttft = max(ttft or 0.0, ev.ttft_s)
        usd = float(
            mix.devices[d] * p.usd_per_hour[d]
            + 3600 * p.rps * mix.share[d] * p.cost_usd[:, d].sum()
        )
        stages.append(
            Stage(
                k,
                p.devices[d],
                p.tasks,
                int(mix.devices[d]),
                float(ev.busy_s[d]),
                usd,
                float(mix.share[d]),
            )
        )
    primary = stages[0].device
    usd_h = float(sum(s.usd_per_hour for s in stages))
    cap = sum(s.replicas / s.latency_s for s in stages if s.latency_s > 0) * p.target_utilisation
    return Plan(
        solver="melange",
        gap=mix.gap,
        assignment={t: primary for t in p.tasks},
        stages=tuple(stages),
        transfers=(),
        latency_s=lat,
        throughput_rps=cap if cap > 0 else math.inf,
        usd_per_hour=usd_h,
        usd_per_request=usd_h / (3600 * p.rps),
        energy_j_per_request=energy,
        sla=p.sla,
        rps=p.rps,
        devices={s.device: s.replicas for s in stages},
        ttft_s=ttft,
        solve_time_s=time.perf_counter() - t0,
        target_utilisation=p.target_utilisation,
        notes=(
            "whole-model replicas; traffic split "
            + ", ".join(f"{s.device} {s.traffic_share:.0%}" for s in stages),
        ),
    ).verify()


def diagnose(problem: Problem, solver: str = "milp", found: str = "") -> str:
    """One line naming the binding constraint and the closest option."""
    p = problem
    allowed = p.allowed()
    ms = 1e3
    # 1. a task no class can run
    for i in range(p.n):
        if allowed[i].any():
            continue
        t = p.tasks[i]
        finite = np.isfinite(p.latency_s[i])
        if not finite.any():
            return f"task {t!r} has no latency on any device class in the fleet ({', '.join(p.devices)})"
        if p.decode_steps is not None and p.decode_steps[i] > 0 and p.sla.tbt_s is not None:
            step = np.where(finite, p.latency_s[i] / max(1, p.decode_steps[i]), np.inf)
            d = int(np.argmin(step))
            if step[d] > p.sla.tbt_s * (1 + LATENCY_RTOL):
                return (
                    f"no device meets TBT ≤ {p.sla.tbt_s * ms:.4g} ms for {t}; "
                    f"best is {p.devices[d]} at {step[d] * ms:.4g} ms"
                )
        big = int(np.argmax(p.device_mem_bytes))
        return (
            f"task {t!r} needs {p.mem_bytes[i] / 2**30:.3g} GiB; the largest device "
            f"({p.devices[big]}) has {p.device_mem_bytes[big] / 2**30:.3g} GiB"
        )
    # 2. latency: lower bound with every task on its fastest class and free transfers
    fastest = np.where(allowed, p.latency_s, np.inf).argmin(axis=1)
    lb_fast = fastest.copy()
    lat_lb = _critical_no_transfer(p, p.latency_s[np.arange(p.n), lb_fast])
    homo = []
    for d in range(p.num_devices):
        if allowed[:, d].all():
            ev = p.evaluate(np.full(p.n, d, dtype=np.int64))
            homo.append((ev.latency_s, p.devices[d], ev))
    homo.sort(key=lambda h: h[0])
    best_homo = (
        f"; fastest single class is all-on {homo[0][1]} at {homo[0][0] * ms:.4g} ms" if homo else ""
    )
    if lat_lb > p.sla.latency_s * (1 + LATENCY_RTOL):
        return (
            f"no placement meets latency ≤ {p.sla.latency_s * ms:.4g} ms: even with every task on "
            f"its fastest class and free transfers the critical path takes {lat_lb * ms:.4g} ms{best_homo}"
        )
    evf = p.evaluate(fastest)
    if (
        p.sla.ttft_s is not None
        and evf.ttft_s is not None
        and evf.ttft_s > p.sla.ttft_s * (1 + LATENCY_RTOL)
    ):
        return (
            f"no placement meets TTFT ≤ {p.sla.ttft_s * ms:.4g} ms; fastest placement gives "
            f"{evf.ttft_s * ms:.4g} ms{best_homo}"
        )
    # 3. memory / counts / transfers: report the closest option and what it breaks
    options = [(len(ev.violations), f"all-on {name}", ev) for _, name, ev in homo]
    options.append((len(evf.violations), "every task on its fastest class", evf))
    options.sort(key=lambda o: (o[0], o[2].latency_s))
    n_v, name, ev = options[0]
    if n_v == 0:
        what = f"{solver} found no feasible placement" + (f" ({found})" if found else "")
        return f"{what}; a feasible option exists: {name} at {ev.latency_s * ms:.4g} ms, {ev.usd_per_hour:.4g} USD/h"
    binding = "; ".join(ev.violations)
    return (
        f"no placement found by {solver} meets latency ≤ {p.sla.latency_s * ms:.4g} ms, memory and "
        f"device counts{' (' + found + ')' if found else ''}; closest is {name}: {binding}"
    )


def _critical_no_transfer(p: Problem, lat: np.ndarray) -> float:
    f = lat.copy()
    st = p.structure()
    for v in range(p.n):
        for e in st["preds"][v]:
            u = int(p.edges[e, 0])
            f[v] = max(f[v], f[u] + lat[v])
    return float(f.max())
