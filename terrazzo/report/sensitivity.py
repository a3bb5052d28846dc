"""What a plan costs when prices or traffic move, and what it costs per month, per year and in energy.

Reads ``placement.Plan`` values (the chosen plan and its baselines) and the catalog; the plan
report renders the results. The placement is held fixed: prices and traffic change what it
costs, not which ops run where (re-plan with ``terrazzo plan --rps`` to see that).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from terrazzo.report.html import HOURS_PER_MONTH, HOURS_PER_YEAR

PRICE_FACTORS = (0.7, 1.3)
TRAFFIC_FACTORS = (0.5, 1.0, 2.0, 3.0)
J_PER_KWH = 3.6e6


@dataclass(frozen=True, slots=True)
class PlanCost:
    """A plan's USD/hour split into device-hours per class and what scales with requests."""

    name: str
    devices: Mapping[str, int]
    usd_per_device_hour: Mapping[str, float]
    busy_s_per_request: Mapping[str, float]
    per_request_usd_per_hour: float  # measured per-request costs and transfer (hop) costs
    rps: float
    target_utilisation: float
    meets_sla: bool

    @property
    def usd_per_hour(self) -> float:
        return self.device_usd_per_hour() + self.per_request_usd_per_hour

    def device_usd_per_hour(self, price_factor: Mapping[str, float] | None = None) -> float:
        f = price_factor or {}
        return sum(
            n * self.usd_per_device_hour.get(d, 0.0) * f.get(d, 1.0)
            for d, n in self.devices.items()
        )

    def at_traffic(self, factor: float) -> tuple[dict[str, int], float]:
        """Devices per class and USD/hour at ``factor`` × the planned requests/s."""
        u = self.target_utilisation or 1.0
        devs: dict[str, int] = {}
        for d, busy in self.busy_s_per_request.items():
            if busy > 0:
                devs[d] = max(1, math.ceil(factor * self.rps * busy / u - 1e-9))
        for d, n in self.devices.items():  # classes that carry no busy time keep their count
            devs.setdefault(d, n)
        usd = sum(n * self.usd_per_device_hour.get(d, 0.0) for d, n in devs.items())
        return devs, usd + factor * self.per_request_usd_per_hour


def plan_cost(name: str, plan: Any) -> PlanCost:
    """Split a plan's USD/hour: device-hours per class (from its stages) and the rest."""
    busy: dict[str, float] = {}
    stage_usd: dict[str, float] = {}
    for s in plan.stages:
        busy[s.device] = busy.get(s.device, 0.0) + s.latency_s * s.traffic_share
        stage_usd[s.device] = stage_usd.get(s.device, 0.0) + s.usd_per_hour
    unit = {d: stage_usd.get(d, 0.0) / n for d, n in plan.devices.items() if n}
    device_usd = sum(n * unit.get(d, 0.0) for d, n in plan.devices.items())
    return PlanCost(
        name=name,
        devices=dict(plan.devices),
        usd_per_device_hour=unit,
        busy_s_per_request=busy,
        per_request_usd_per_hour=max(0.0, plan.usd_per_hour - device_usd),
        rps=plan.rps,
        target_utilisation=plan.target_utilisation,
        meets_sla=plan.latency_s <= plan.sla.latency_s * (1 + 1e-6),
    )


def price_sensitivity(costs: Sequence[PlanCost]) -> list[dict[str, Any]]:
    """USD/hour of the first plan and the cheapest SLA-meeting option when prices move ±30%.

    ``cheapest_unchanged`` says whether the cheapest option is the one at list prices.

    Scenarios: every price × 0.7 and × 1.3, then each device class alone × 0.7 and × 1.3.
    """
    classes = sorted({d for c in costs for d in c.devices})
    scenarios: list[tuple[str, dict[str, float]]] = []
    for f in PRICE_FACTORS:
        scenarios.append((f"all prices ×{f:g}", dict.fromkeys(classes, f)))
    for d in classes:
        for f in PRICE_FACTORS:
            scenarios.append((f"{d} ×{f:g}", {d: f}))
    ok = [c for c in costs if c.meets_sla]
    base = min(ok, key=lambda c: c.usd_per_hour).name if ok else None
    rows = []
    for label, fac in scenarios:
        usd = {c.name: c.device_usd_per_hour(fac) + c.per_request_usd_per_hour for c in costs}
        cheapest = min(ok, key=lambda c: usd[c.name]).name if ok else None
        first = costs[0].name
        rows.append({
            "scenario": label,
            "chosen_usd_per_hour": usd[first],
            "chosen_change": usd[first] / costs[0].usd_per_hour - 1 if costs[0].usd_per_hour else 0.0,
            "cheapest_option": cheapest,
            "chosen_still_cheapest": cheapest == first,
            "cheapest_unchanged": cheapest == base,
            "usd_per_hour": usd,
        })  # fmt: skip
    return rows


def traffic_sensitivity(
    costs: Sequence[PlanCost], fleet_counts: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """Devices and USD/hour of every option at 0.5×–3× the planned traffic (placement fixed)."""
    rows = []
    for f in TRAFFIC_FACTORS:
        for c in costs:
            devs, usd = c.at_traffic(f)
            over = sorted(
                d for d, n in devs.items() if fleet_counts and n > fleet_counts.get(d, math.inf)
            )
            rps = f * c.rps
            rows.append({
                "factor": f, "option": c.name, "rps": rps, "devices": devs, "usd_per_hour": usd,
                "usd_per_million_requests": usd / (3600 * rps) * 1e6 if rps else math.inf,
                "exceeds_fleet": over,
            })  # fmt: skip
    return rows


def totals(usd_per_hour: float) -> dict[str, float]:
    """USD per hour, per month (730 h) and per year (8,760 h) of an always-on fleet."""
    return {
        "usd_per_hour": usd_per_hour,
        "usd_per_month": usd_per_hour * HOURS_PER_MONTH,
        "usd_per_year": usd_per_hour * HOURS_PER_YEAR,
    }


def energy(plan: Any, tdp_w: Mapping[str, float], usd_per_kwh: float) -> dict[str, float | None]:
    """Energy of a plan per month: busy (ops × TDP at the planned traffic) and provisioned (TDP × devices).

    ``busy`` is the cost model's energy per request × requests; ``provisioned`` bounds it from
    above (every device at TDP all month). Costs use ``usd_per_kwh`` (a cloud rental's price
    already includes power: the figures then say what the power is worth, not an extra bill).
    """
    busy_kwh = plan.energy_j_per_request * plan.rps * 3600 * HOURS_PER_MONTH / J_PER_KWH
    known = all(d in tdp_w for d in plan.devices)
    prov = (
        sum(n * tdp_w[d] for d, n in plan.devices.items()) * HOURS_PER_MONTH / 1000
        if known
        else None
    )
    return {
        "kwh_per_million_requests": plan.energy_j_per_request * 1e6 / J_PER_KWH,
        "busy_kwh_per_month": busy_kwh,
        "busy_usd_per_month": busy_kwh * usd_per_kwh,
        "provisioned_kwh_per_month": prov,
        "provisioned_usd_per_month": None if prov is None else prov * usd_per_kwh,
        "usd_per_kwh": usd_per_kwh,
    }
