"""Re-plan: which device class runs each op group, and how many replicas each stage needs.

A served model is a chain of tasks (op groups, in order); an ``AdaptPlan`` assigns each task a
device class, and consecutive tasks on one class form one stage (one worker per replica).
Placement is re-solved with the compile-time placement solver (``terrazzo.placement.solve``
on a ``make_problem`` built from the calibrated latency table, live prices and availability);
replica counts follow from the planned rate: ``ceil(rps * stage_latency / utilisation)``.
Cost here is what the served fleet pays: one device per replica at its class price.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from terrazzo.errors import PlacementError


@dataclass(frozen=True, slots=True)
class StagePlan:
    """One serving stage: consecutive tasks on one class, and its replica count."""

    tasks: tuple[str, ...]
    device: str
    replicas: int

    def to_json(self) -> dict[str, object]:
        return {"tasks": list(self.tasks), "device": self.device, "replicas": self.replicas}


@dataclass(frozen=True, slots=True)
class AdaptPlan:
    """A served plan with the prediction it was chosen on."""

    stages: tuple[StagePlan, ...]
    usd_per_hour: float
    latency_s: float  # predicted service latency (execution + hops, no queueing)
    rps: float  # rate it was sized for
    solver: str = ""

    @property
    def assignment(self) -> dict[str, str]:
        return {t: s.device for s in self.stages for t in s.tasks}

    @property
    def replicas(self) -> int:
        return sum(s.replicas for s in self.stages)

    def layout(self) -> tuple[tuple[tuple[str, ...], str], ...]:
        """The placement without counts (what a swap must rebuild when it changes)."""
        return tuple((s.tasks, s.device) for s in self.stages)

    def describe(self) -> str:
        return " | ".join(f"{'+'.join(s.tasks)}@{s.device}x{s.replicas}" for s in self.stages)

    def to_json(self) -> dict[str, object]:
        return {
            "stages": [s.to_json() for s in self.stages],
            "usd_per_hour": round(self.usd_per_hour, 6),
            "latency_s": round(self.latency_s, 6),
            "rps": round(self.rps, 3),
            "solver": self.solver,
            "text": self.describe(),
        }


def group(tasks: Sequence[str], assignment: Mapping[str, str]) -> list[tuple[tuple[str, ...], str]]:
    """Consecutive tasks on one class become one stage."""
    out: list[tuple[tuple[str, ...], str]] = []
    for t in tasks:
        d = assignment[t]
        if out and out[-1][1] == d:
            out[-1] = (out[-1][0] + (t,), d)
        else:
            out.append(((t,), d))
    return out


def wait_p99_s(replicas: int, rps: float, service_s: float) -> float:
    """p99 queueing delay of a stage: M/M/c (Erlang C), halved for near-constant service times.

    ``inf`` when the stage cannot keep up. Conservative for the deterministic-ish service of
    a compiled stage (M/D/c waits are about half of M/M/c's, the factor used here).
    """
    a = rps * service_s
    c = replicas
    if not math.isfinite(a) or a >= c:
        return math.inf
    if a <= 0:
        return 0.0
    # Erlang C via the Erlang B recursion (stable for large c)
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    erlang_c = b / (1 - (a / c) * (1 - b))
    if erlang_c <= 0.01:
        return 0.0
    return 0.5 * math.log(erlang_c / 0.01) / (c / service_s - rps)


def size_plan(
    tasks: Sequence[str],
    assignment: Mapping[str, str],
    latency: Mapping[str, Mapping[str, float]],
    rps: float,
    prices: Mapping[str, float],
    utilisation: float,
    hop_s: float = 0.0,
    solver: str = "",
    latency_budget_s: float | None = None,
) -> AdaptPlan:
    """Replica counts and predicted cost / p99 latency of one assignment at ``rps``.

    Each stage gets ``ceil(rps * latency / utilisation)`` replicas; with a latency budget,
    replicas are then added where they cut the predicted p99 (service + queueing + hops)
    most per dollar until it fits (or adding no longer helps).
    """
    groups = group(tasks, assignment)
    service = [sum(latency[t][dev] for t in ts) for ts, dev in groups]
    reps = [
        max(1, math.ceil(rps * s / utilisation - 1e-9)) if math.isfinite(s) else 1 << 30
        for s in service
    ]

    def total(reps: list[int]) -> float:
        return _p99_s(service, reps, rps, hop_s)

    if latency_budget_s is not None and all(math.isfinite(s) for s in service):
        for _ in range(64):
            now = total(reps)
            if now <= latency_budget_s:
                break
            best_i, best_gain = -1, 0.0
            for i, (ts_dev, r) in enumerate(zip(groups, reps, strict=True)):
                gain = (wait_p99_s(r, rps, service[i]) - wait_p99_s(r + 1, rps, service[i])) / max(
                    prices[ts_dev[1]], 1e-9
                )
                if gain > best_gain:
                    best_i, best_gain = i, gain
            if best_i < 0:
                break
            reps[best_i] += 1
    stages = tuple(StagePlan(ts, dev, r) for (ts, dev), r in zip(groups, reps, strict=True))
    usd = sum(s.replicas * prices[s.device] for s in stages)
    return AdaptPlan(stages, usd, total(reps), rps, solver)


def _p99_s(service: Sequence[float], reps: Sequence[int], rps: float, hop_s: float) -> float:
    return sum(s + wait_p99_s(r, rps, s) + hop_s for s, r in zip(service, reps, strict=True))


def predict_p99_s(
    plan: AdaptPlan, latency: Mapping[str, Mapping[str, float]], rps: float, hop_s: float = 0.0
) -> float:
    """Predicted p99 (service + queueing + hops) of ``plan``'s replicas as they are, at ``rps``.

    ``size_plan`` gives the prediction a plan was chosen on; this one re-judges a deployed plan
    after recalibration or a change of rate, without re-sizing it.
    """
    service = [sum(latency[t][s.device] for t in s.tasks) for s in plan.stages]
    return _p99_s(service, [s.replicas for s in plan.stages], rps, hop_s)


def with_replicas(
    plan: AdaptPlan,
    stage: int,
    latency: Mapping[str, Mapping[str, float]],
    prices: Mapping[str, float],
    hop_s: float = 0.0,
) -> AdaptPlan:
    """``plan`` with one more replica on ``stage``, re-priced and re-predicted."""
    stages = tuple(
        replace(s, replicas=s.replicas + 1) if i == stage else s for i, s in enumerate(plan.stages)
    )
    bumped = replace(
        plan, stages=stages, usd_per_hour=sum(s.replicas * prices[s.device] for s in stages)
    )
    return replace(bumped, latency_s=predict_p99_s(bumped, latency, plan.rps, hop_s))


def _usable(prices: Mapping[str, float], available: Mapping[str, int | None]) -> list[str]:
    """Classes a plan may use: priced and not out of devices."""
    return [d for d in prices if available.get(d) is None or (available.get(d) or 0) > 0]


def utilisation(plan: AdaptPlan, latency: Mapping[str, Mapping[str, float]], rps: float) -> float:
    """Busiest stage's busy fraction at ``rps`` (requests x seconds each / replicas)."""
    return max(rps * sum(latency[t][s.device] for t in s.tasks) / s.replicas for s in plan.stages)


def feasible(
    plan: AdaptPlan, latency_budget_s: float, available: Mapping[str, int | None]
) -> list[str]:
    """Why ``plan`` cannot serve (empty: it can): latency over budget, a class short of devices."""
    why = []
    if not math.isfinite(plan.latency_s) or plan.latency_s > latency_budget_s * (1 + 1e-9):
        why.append(
            f"latency {plan.latency_s * 1e3:.1f} ms > budget {latency_budget_s * 1e3:.1f} ms"
        )
    used: dict[str, int] = {}
    for s in plan.stages:
        used[s.device] = used.get(s.device, 0) + s.replicas
    for d, n in used.items():
        cap = available.get(d)
        if cap is not None and n > cap:
            why.append(f"{d}: needs {n} devices, {cap} available")
    return why


_SOLVED: dict[tuple[object, ...], dict[str, str] | None] = {}


def solve_assignment(
    tasks: Sequence[str],
    latency: Mapping[str, Mapping[str, float]],
    rps: float,
    prices: Mapping[str, float],
    available: Mapping[str, int | None],
    utilisation: float,
    latency_budget_s: float,
    hop_s: float,
    solver: str = "milp",
    reject: Callable[[AdaptPlan], bool] | None = None,
) -> AdaptPlan | None:
    """Cheapest feasible plan from the placement solver (None: nothing feasible).

    The solver sees the calibrated table with unavailable classes removed, each class change
    priced at the measured hop; its per-class device count is re-sized here per stage, then
    refined by ``improve``. A plan ``reject`` refuses (e.g. one whose p99 broke the SLA at this
    rate) is not returned: the search goes on from it to its cheapest acceptable neighbour.
    """
    from terrazzo.placement import SLA, make_problem, solve

    usable = _usable(prices, available)
    table = {
        t: {d: v for d, v in latency[t].items() if d in usable and math.isfinite(v)} for t in tasks
    }
    if not usable or any(not row for row in table.values()):
        return None
    pairs = {(a, b): hop_s for a in usable for b in usable if a != b}
    # The controller asks every tick; the same inputs (to 3 significant digits) give the same
    # answer, so the solver runs only when the calibrated table, rate, prices or classes move.
    key = (
        tuple(tasks),
        tuple(sorted((t, d, float(f"{v:.3g}")) for t, row in table.items() for d, v in row.items())),
        float(f"{rps:.3g}"),
        tuple(sorted((d, prices[d], available.get(d)) for d in usable)),
        utilisation, float(f"{latency_budget_s:.3g}"), float(f"{hop_s:.2g}"), solver,
    )  # fmt: skip
    if key not in _SOLVED:
        if len(_SOLVED) > 4096:
            _SOLVED.clear()
        try:
            problem = make_problem(
                list(tasks),
                usable,
                table,
                edges=list(itertools.pairwise(tasks)),
                sla=SLA(max(latency_budget_s - hop_s, 1e-6)),
                rps=max(rps, 1e-3),
                target_utilisation=utilisation,
                usd_per_hour={d: prices[d] for d in usable},
                count={d: float(c) for d in usable if (c := available.get(d)) is not None},
                transfer_s=pairs,
                name="adapt",
            )
            _SOLVED[key] = dict(solve(problem, solver, time_limit_s=0.5).assignment)
        except PlacementError:
            _SOLVED[key] = None
    assignment = _SOLVED[key]
    if assignment is None:
        return None
    return improve(
        size_plan(
            tasks, assignment, latency, rps, prices, utilisation, hop_s, solver, latency_budget_s
        ),
        tasks, latency, prices, available, utilisation, latency_budget_s, hop_s, reject,
    )  # fmt: skip


def improve(
    plan: AdaptPlan,
    tasks: Sequence[str],
    latency: Mapping[str, Mapping[str, float]],
    prices: Mapping[str, float],
    available: Mapping[str, int | None],
    utilisation: float,
    latency_budget_s: float,
    hop_s: float,
    reject: Callable[[AdaptPlan], bool] | None = None,
) -> AdaptPlan | None:
    """Local search on the served cost (one replica per stage device, per-stage ceilings).

    The placement solver prices a class by its summed busy time; served stages round up
    one by one, so its answer can be a replica or two off. Moving one task at a time to
    another class, or adding one replica to a stage, while that lowers the served cost and
    stays feasible, closes the gap. When ``plan`` itself is infeasible or rejected, the search
    starts from its cheapest acceptable neighbour instead; None when there is none.
    """

    def acceptable(p: AdaptPlan) -> bool:
        return not feasible(p, latency_budget_s, available) and not (reject and reject(p))

    best = plan if acceptable(plan) else None
    at = plan
    while True:
        better = [
            c
            for c in neighbours(at, tasks, latency, prices, available, utilisation, hop_s,
                                latency_budget_s)
            if (best is None or c.usd_per_hour < best.usd_per_hour - 1e-9) and acceptable(c)
        ]  # fmt: skip
        if not better:
            return best
        best = at = min(better, key=lambda c: (c.usd_per_hour, c.latency_s))


def neighbours(
    plan: AdaptPlan,
    tasks: Sequence[str],
    latency: Mapping[str, Mapping[str, float]],
    prices: Mapping[str, float],
    available: Mapping[str, int | None],
    utilisation: float,
    hop_s: float,
    latency_budget_s: float | None,
) -> list[AdaptPlan]:
    """Plans one step from ``plan``: a run of consecutive tasks moved to another usable class
    (re-sized), or one more replica on one stage.

    Runs, not single tasks: a stage is a run of tasks, and moving a two-task stage one task at
    a time passes through a three-stage plan that costs more than either end, so a one-task
    local search stops short of it (the scenario's lost class: cpu x4 never reached
    pre@cpu | enc+head@gpu-m, which is cheaper).
    """
    out = []
    assignment = plan.assignment
    usable = _usable(prices, available)
    for i in range(len(tasks)):
        for j in range(i + 1, len(tasks) + 1):
            run = tasks[i:j]
            for d in usable:
                if all(assignment[t] == d for t in run):
                    continue
                moved = {**assignment, **dict.fromkeys(run, d)}
                out.append(
                    size_plan(
                        tasks,
                        moved,
                        latency,
                        plan.rps,
                        prices,
                        utilisation,
                        hop_s,
                        plan.solver,
                        latency_budget_s,
                    )
                )
    out += [with_replicas(plan, i, latency, prices, hop_s) for i in range(len(plan.stages))]
    return out


def best_static(
    tasks: Sequence[str],
    latency: Mapping[str, Mapping[str, float]],
    rps: float,
    prices: Mapping[str, float],
    available: Mapping[str, int | None],
    utilisation: float,
    latency_budget_s: float,
    hop_s: float = 0.0,
) -> AdaptPlan | None:
    """Exhaustive cheapest feasible plan (small chains only): the hindsight baseline."""
    devices = _usable(prices, available)
    best: AdaptPlan | None = None
    for combo in itertools.product(devices, repeat=len(tasks)):
        plan = size_plan(
            tasks, dict(zip(tasks, combo, strict=True)), latency, rps, prices, utilisation, hop_s,
            "exhaustive", latency_budget_s,
        )  # fmt: skip
        if feasible(plan, latency_budget_s, available):
            continue
        if best is None or plan.usd_per_hour < best.usd_per_hour - 1e-12:
            best = plan
    if best is None and not tasks:
        raise PlacementError("nothing to place")
    return best
