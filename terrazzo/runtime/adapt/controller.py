"""The controller: from a window of observations to a decision to re-plan (or to hold).

Each tick (``AdaptPolicy.interval_s``) the controller folds the window into the profile and
re-solves placement and replica counts for the rate forecast over ``horizon_s``. It changes
the served plan when

- (a) ``sla``: the measured p99 breaks the SLA, or it is about to: the deployed replicas are
  fewer than the forecast rate needs, or the recalibrated model predicts them over the latency
  budget (confirmed by the rate's lower bound or by the measured p99);
- (b) ``traffic``: the rate moved and another plan is cheaper by at least ``hysteresis``;
- (c) ``device``: a class in the plan is slow (measured/prior >= ``slow_factor``), unhealthy,
  or gone (a preemption notice or no healthy worker);
- (d) ``recalibration``: at the same traffic, the recalibrated model finds a plan cheaper by
  at least ``hysteresis``.

Cost-saving changes (b, d) wait ``cooldown_s`` after the last change; every change counts
against ``max_changes_per_hour``. ``decide`` is a pure function of its inputs, so the policy
is unit-tested without servers; ``AdaptRuntime`` runs it against a live ``Server``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from terrazzo.errors import ServingError
from terrazzo.runtime.adapt.observe import Snapshot
from terrazzo.runtime.adapt.planner import (
    AdaptPlan,
    feasible,
    predict_p99_s,
    size_plan,
    solve_assignment,
    utilisation,
    with_replicas,
)
from terrazzo.runtime.adapt.policy import AdaptPolicy
from terrazzo.runtime.adapt.recalibrate import Profile


@dataclass(frozen=True, slots=True)
class Decision:
    """A change of plan, with why and what was predicted."""

    t: float  # wall clock (time.time())
    reason: str  # sla | traffic | device | recalibration
    detail: str
    old: AdaptPlan
    new: AdaptPlan
    rate_rps: float
    forecast_rps: float
    p99_s: float
    swap_s: float | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "time": self.t,
            "reason": self.reason,
            "detail": self.detail,
            "old": self.old.to_json(),
            "new": self.new.to_json(),
            "predicted_usd_per_hour": round(self.new.usd_per_hour, 6),
            "predicted_latency_s": round(self.new.latency_s, 6),
            "rate_rps": round(self.rate_rps, 3),
            "forecast_rps": round(self.forecast_rps, 3),
            "p99_s": round(self.p99_s, 6),
            "swap_s": None if self.swap_s is None else round(self.swap_s, 3),
            **self.extra,
        }


def _key(plan: AdaptPlan) -> tuple[object, ...]:
    return tuple((s.tasks, s.device, s.replicas) for s in plan.stages)


class DecisionLog:
    """Append-only JSONL of decisions (``terrazzo plan-history`` reads it)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self.entries: list[dict[str, object]] = []

    def write(self, entry: dict[str, object]) -> None:
        with self._lock:
            self.entries.append(entry)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as f:
                    f.write(json.dumps(entry, sort_keys=True) + "\n")


class Controller:
    """Decides plan changes for one served chain of tasks.

    Args:
        policy: the adaptation policy (SLA, hysteresis, limits, fleet).
        profile: calibrated latency per (task, device class).
        tasks: the model's op groups, in chain order.
    """

    def __init__(self, policy: AdaptPolicy, profile: Profile, tasks: tuple[str, ...]):
        self.policy = policy
        self.profile = profile
        self.tasks = tasks
        profile.step_factor = policy.slow_factor
        self.prices = {d: c.usd_per_hour for d, c in policy.fleet.items()}
        self.available: dict[str, int | None] = {d: c.count for d, c in policy.fleet.items()}
        self._priced = dict(self.prices)  # prices at the last change
        self._changes: deque[float] = deque()
        self._last_change = -math.inf
        self._last_rps: float | None = None
        # plans left because they could not hold the rate (their measured p99 broke the SLA, or
        # recalibration predicts it would): plan -> (until, rate). Not chosen again until then
        # at that rate or above; a plan that held too little at 3x may serve 1x a while later
        self._avoid: dict[tuple[object, ...], tuple[float, float]] = {}
        self.avoid_s = 30.0

    def avoid(self, plan: AdaptPlan, from_rps: float = 0.0) -> None:
        """Do not choose ``plan`` for ``avoid_s`` at ``from_rps`` or more (0: at any rate, e.g.
        it could not be deployed)."""
        self._avoid[_key(plan)] = (time.time() + self.avoid_s, from_rps)

    def avoided(self, plan: AdaptPlan, rps: float) -> bool:
        """True when ``plan`` is not to be chosen at ``rps`` now (see ``avoid``)."""
        until, from_rps = self._avoid.get(_key(plan), (0.0, 0.0))
        return until > time.time() and rps >= from_rps

    @property
    def latency_budget_s(self) -> float:
        """Predicted p99 (service + queueing + hops) a plan may reach: 80% of the SLA, the rest is
        margin for what the queueing model misses (gateway, client, bursts)."""
        return 0.8 * self.policy.sla_p99_s

    def initial(self, rps: float) -> AdaptPlan:
        """The plan to start with (the cheapest feasible at ``rps``)."""
        plan = self._candidate(None, self.profile.table(), rps, set(), full=True)
        if plan is None:
            raise ServingError(
                f"adapt: no plan meets the SLA of {self.policy.sla_p99_s:g} s at {rps:g} rps "
                "on the policy's fleet"
            )
        self._last_rps = rps
        self._last_change = time.time()
        return plan

    def _candidate(
        self,
        deployed: AdaptPlan | None,
        table: Mapping[str, Mapping[str, float]],
        rps: float,
        down: set[str],
        full: bool = False,
    ) -> AdaptPlan | None:
        p = self.policy
        avail = {d: (0 if d in down else c) for d, c in self.available.items()}
        hop = self.profile.hop_s()

        def reject(o: AdaptPlan) -> bool:
            return self.avoided(o, rps)

        options = []
        if deployed is not None:
            resized = size_plan(
                self.tasks, deployed.assignment, table, rps, self.prices, p.target_utilisation, hop,
                "resize", None if p.mode == "replicas" else self.latency_budget_s,
            )  # fmt: skip
            # one more replica on a stage: the step up when the sized plan is avoided
            bumped = [
                with_replicas(resized, i, table, self.prices, hop)
                for i in range(len(resized.stages))
            ]
            if p.mode == "replicas":
                if not reject(resized):
                    return resized
                busiest = max(
                    range(len(resized.stages)),
                    key=lambda i: (
                        rps
                        * sum(table[t][resized.stages[i].device] for t in resized.stages[i].tasks)
                        / resized.stages[i].replicas
                    ),
                )
                return bumped[busiest]
            options += [resized, *bumped]
        if p.mode == "full" or full:
            solved = solve_assignment(
                self.tasks, table, rps, self.prices, avail, p.target_utilisation,
                self.latency_budget_s, hop, p.solver, reject,
            )  # fmt: skip
            if solved is not None:
                options.append(solved)
        ok = [o for o in options if not feasible(o, self.latency_budget_s, avail) and not reject(o)]
        if p.budget_usd_per_hour is not None:
            ok = [o for o in ok if o.usd_per_hour <= p.budget_usd_per_hour] or ok
        if not ok:
            return None
        return min(ok, key=lambda o: (o.usd_per_hour, o.latency_s))

    def _under_provisioned(
        self, deployed: AdaptPlan, table: Mapping[str, Mapping[str, float]], rps: float
    ) -> bool:
        """True when a deployed stage would be busier than ``max_utilisation`` at ``rps``."""
        return utilisation(deployed, table, rps) > self.policy.max_utilisation

    def decide(
        self,
        snap: Snapshot,
        deployed: AdaptPlan,
        unhealthy: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> Decision | None:
        """One tick: fold ``snap`` in and return the change to make, or None to hold."""
        p = self.policy
        self.profile.update(snap, p.min_samples)
        if p.mode == "off":
            return None
        recent = snap.rate_rps
        forecast = snap.forecast_rps(p.horizon_s)
        rps = max(recent, forecast, 1e-3) * p.headroom
        # Poisson noise of the rate estimate: scale down only to a plan that fits two sigmas
        # above it, scale up only when two sigmas below it already overloads a stage; the band
        # between is the hysteresis that keeps noise from flapping the plan
        sigma = math.sqrt(rps / max(snap.rate_span_s, 1e-3))
        ucb, lcb = rps + 2.0 * sigma, max(rps - 2.0 * sigma, 1e-3)
        table = self.profile.table()
        used = {s.device for s in deployed.stages}
        slow = {d for d in used if self.profile.jumps.get(d, 0.0) >= p.slow_factor}
        down = {d for d, c in self.available.items() if c == 0} | set(unhealthy)
        now = time.time()
        measured = snap.requests >= p.min_samples
        # a measured p99 over the SLA (requests since the last change only): this plan is not
        # enough at this rate whatever the model says; avoid it for a while at this rate
        # (lower bound) and above, so the controller does not flap back to it
        breach = measured and snap.p99_s > p.sla_p99_s
        # about to break: the recalibrated model says the deployed replicas miss the latency
        # budget at the planned rate, and either the rate's lower bound or the measured p99
        # agrees (the model alone at a noisy rate estimate would flap the plan). Utilisation
        # alone (``_under_provisioned``) misses a plan that is busy below ``max_utilisation``
        # yet too slow: one the prior chose before recalibration corrected it, or one chosen
        # at a low reading of the rate. Full mode only: ``replicas`` stays the utilisation-sized
        # autoscaler it stands for (Ray Serve / Dynamo style)
        hop = self.profile.hop_s()
        budget = self.latency_budget_s
        predicted = predict_p99_s(deployed, table, rps, hop)
        at_risk = (
            p.mode == "full"
            and predicted > budget
            and (
                predict_p99_s(deployed, table, lcb, hop) > budget
                or (measured and snap.p99_s > budget)
            )
        )
        if breach or at_risk:
            self.avoid(deployed, lcb)
        cand = None
        leave = used & slow if p.mode == "full" else set()
        if leave:
            # a class judged slow is left, not scaled: the window still mixes samples from
            # before the slowdown, so its calibrated time trails the truth and a plan with more
            # replicas of it looks feasible when it is not (the scenario's slowed phase took
            # three changes to settle that way)
            cand = self._candidate(deployed, table, rps, down | leave)
        if cand is None:
            cand = self._candidate(deployed, table, rps, down)
        if cand is None:
            return None
        while self._changes and self._changes[0] < now - 3600:
            self._changes.popleft()
        if len(self._changes) >= p.max_changes_per_hour:
            return None
        need = {s.tasks + (s.device,): s.replicas for s in cand.stages}
        have = {s.tasks + (s.device,): s.replicas for s in deployed.stages}
        same = need == have
        if same:
            return None
        reason = detail = ""
        bad = (used & down) | (used & slow if p.mode == "full" else set())
        if bad:
            reason = "device"
            why = [f"{d} {'gone/unhealthy' if d in down else 'slow'}" for d in sorted(bad)]
            detail = "; ".join(
                w + (f" ({self.profile.jumps[d]:.1f}x its calibrated time)" if d in slow else "")
                for w, d in zip(why, sorted(bad), strict=True)
            )
        elif self._under_provisioned(deployed, table, lcb):
            reason = "sla"
            detail = (
                f"{rps:.1f} rps planned (now {recent:.1f}, forecast {forecast:.1f}) would load "
                f"a stage to {utilisation(deployed, table, rps):.0%}"
            )
        elif at_risk:
            reason = "sla"
            detail = (
                f"predicted p99 {predicted * 1e3:.0f} ms at {rps:.1f} rps > budget "
                f"{budget * 1e3:.0f} ms (measured p99 {snap.p99_s * 1e3:.0f} ms)"
            )
        elif breach and cand.usd_per_hour >= deployed.usd_per_hour:
            reason, detail = (
                "sla",
                f"p99 {snap.p99_s * 1e3:.0f} ms > SLA {p.sla_p99_s * 1e3:.0f} ms",
            )
        else:
            # the deployed plan at today's prices (a price change moves its cost, not its layout)
            now_usd = sum(st.replicas * self.prices[st.device] for st in deployed.stages)
            saving = 1 - cand.usd_per_hour / now_usd if now_usd else 0.0
            if saving < p.hysteresis or now - self._last_change < p.cooldown_s:
                return None
            if (
                utilisation(cand, table, ucb) > p.max_utilisation
                or predict_p99_s(cand, table, ucb, hop) > p.sla_p99_s
            ):
                # the saving holds only if the rate is not at its noisy high end: a low reading
                # (a short level after a stall of the serving process looks like a drop) must not
                # buy a plan that the next reading finds at risk
                return None
            moved = self._last_rps is not None and abs(rps - self._last_rps) > 0.1 * max(
                self._last_rps, 1e-9
            )
            repriced = self._priced != self.prices
            reason = "price" if repriced else "traffic" if moved else "recalibration"
            detail = f"{saving:.0%} cheaper at {rps:.1f} rps planned"
        self._changes.append(now)
        self._last_change = now
        self._last_rps = rps
        self._priced = dict(self.prices)
        return Decision(now, reason, detail, deployed, cand, recent, forecast, snap.p99_s)
