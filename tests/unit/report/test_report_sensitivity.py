"""Plan and study reports: price/traffic sensitivity, monthly/yearly totals, energy, assumptions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from terrazzo.report import sensitivity as S
from terrazzo.report import study_sensitivity as SS

TASKS = Path(__file__).resolve().parents[2] / "data" / "tasks" / "issue_example.yaml"


@pytest.fixture(scope="module")
def plans() -> dict[str, object]:
    from terrazzo.placement import plan, to_problem
    from terrazzo.report.plan_report import solve_baselines

    chosen = plan(TASKS)
    problem = to_problem(TASKS, None, chosen.sla, chosen.rps)
    baselines, _ = solve_baselines(problem, skip=chosen.solver)
    return {"chosen": chosen, **baselines}


def test_plan_cost_splits_usd_per_hour_exactly(plans: dict[str, object]) -> None:
    for name, pl in plans.items():
        c = S.plan_cost(name, pl)
        assert c.usd_per_hour == pytest.approx(pl.usd_per_hour, rel=1e-9)  # type: ignore[attr-defined]
        # at the planned traffic the re-count gives the plan's own devices and bill
        devs, usd = c.at_traffic(1.0)
        assert devs == dict(pl.devices)  # type: ignore[attr-defined]
        assert usd == pytest.approx(pl.usd_per_hour, rel=1e-9)  # type: ignore[attr-defined]


def test_price_sensitivity_scales_the_bill(plans: dict[str, object]) -> None:
    costs = [S.plan_cost(n, p) for n, p in plans.items()]
    rows = {r["scenario"]: r for r in S.price_sensitivity(costs)}
    base = costs[0].usd_per_hour
    assert rows["all prices ×0.7"]["chosen_usd_per_hour"] == pytest.approx(
        0.7 * costs[0].device_usd_per_hour() + costs[0].per_request_usd_per_hour
    )
    assert rows["all prices ×1.3"]["chosen_change"] == pytest.approx(
        0.3 * costs[0].device_usd_per_hour() / base
    )
    # uniform scaling never changes which option is cheapest
    assert (
        rows["all prices ×0.7"]["cheapest_unchanged"]
        and rows["all prices ×1.3"]["cheapest_unchanged"]
    )
    assert {f"{d} ×0.7" for d in costs[0].devices} <= set(rows)


def test_traffic_sensitivity_adds_devices_and_flags_the_fleet(plans: dict[str, object]) -> None:
    c = S.plan_cost("chosen", plans["chosen"])
    rows = [
        r
        for r in S.traffic_sensitivity([c], dict.fromkeys(c.devices, 1))
        if r["option"] == "chosen"
    ]
    assert [r["factor"] for r in rows] == list(S.TRAFFIC_FACTORS)
    usd = [r["usd_per_hour"] for r in rows]
    assert usd == sorted(usd) and usd[-1] > usd[1]
    three = rows[-1]
    for d, busy in c.busy_s_per_request.items():
        want = math.ceil(3 * c.rps * busy / c.target_utilisation - 1e-9)
        assert three["devices"][d] == want
    assert three["exceeds_fleet"] == sorted(d for d, n in three["devices"].items() if n > 1)


def test_totals_and_energy(plans: dict[str, object]) -> None:
    t = S.totals(2.0)
    assert t == {"usd_per_hour": 2.0, "usd_per_month": 1460.0, "usd_per_year": 17520.0}
    pl = plans["chosen"]
    e = S.energy(pl, dict.fromkeys(pl.devices, 100.0), 0.4)  # type: ignore[attr-defined]
    busy = pl.energy_j_per_request * pl.rps * 3600 * 730 / 3.6e6  # type: ignore[attr-defined]
    assert e["busy_kwh_per_month"] == pytest.approx(busy)
    assert e["busy_usd_per_month"] == pytest.approx(busy * 0.4)
    n = sum(pl.devices.values())  # type: ignore[attr-defined]
    assert e["provisioned_kwh_per_month"] == pytest.approx(n * 100 * 730 / 1000)
    assert S.energy(pl, {}, 0.4)["provisioned_kwh_per_month"] is None


def test_study_sensitivity_reprices_exactly() -> None:
    from terrazzo.costmodel import load_catalog
    from terrazzo.report import StudyOptions, run_study

    opts = StudyOptions(models=("llama3-8b",), precisions=("fp8",), slas=("offline",))
    r = run_study(load_catalog("paper-2025"), opts, profile="paper-2025")
    for row in r.rows:
        if row.feasible:
            assert SS._usd(row, r.device_usd_per_hour) == pytest.approx(row.usd_per_hour, rel=1e-9)
    sens = SS.price_sensitivity(r)
    assert len(sens) == 2 * len(r.device_usd_per_hour)
    best = {b.cell: b.pair for b in r.best_per_cell()}
    # making the winning decode class 30% dearer never makes it win more cells
    for cell_pair in set(best.values()):
        dec = cell_pair.split("::")[1]
        up = next(s for s in sens if s["device"] == dec and s["factor"] == 1.3)
        assert all(
            not ch.endswith(f"::{dec}") or ch.split(" → ")[0].endswith(f"::{dec}")
            for ch in up["changes"]
        )
    traffic = SS.traffic_sensitivity(r)
    for t in traffic:
        rel = t["relative_tokens_per_usd"]
        assert all(0 < v <= 1 + 1e-9 for v in rel.values())
    tot = SS.totals_and_energy(r, {d: 700.0 for d in r.device_usd_per_hour}, 0.4)
    assert all(x["usd_per_month"] == pytest.approx(730 * x["usd_per_hour"]) for x in tot)
    assert all(x["kwh_per_million_tokens"] > 0 for x in tot)


def test_report_json_has_assumptions_and_totals(plans: dict[str, object]) -> None:
    from terrazzo.report.plan_report import build_report, report_html

    rest = {k: v for k, v in plans.items() if k != "chosen"}
    rep = build_report(plans["chosen"], rest, "t")
    d = rep.to_json()
    assert {"Latency", "Utilisation target", "Prices", "Traffic"} <= set(d["assumptions"])
    assert "not a p99" in d["assumptions"]["Latency"]
    assert d["options"][0]["usd_per_year"] == pytest.approx(8760 * d["options"][0]["usd_per_hour"])
    assert d["latency_source"] in ("predicted", "measured")
    html = report_html(rep)
    assert 'class="tag ' in html and "USD/year" in html
