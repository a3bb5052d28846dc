"""terrazzo report: plan JSON → options with baselines, Pareto front, timeline, utilisation, HTML/JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from terrazzo.cli import main
from terrazzo.errors import TerrazzoError
from terrazzo.report.plan_report import (
    build_report,
    load_plans,
    pareto_front,
    timeline,
    utilisation,
)

TASKS = Path(__file__).resolve().parents[2] / "data" / "tasks" / "issue_example.yaml"


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from terrazzo.placement import plan

    p = tmp_path_factory.mktemp("plan") / "plan.json"
    p.write_text(json.dumps(plan(TASKS).to_json()))
    return p


def test_pareto_front() -> None:
    pts = [(1.0, 5.0), (2.0, 3.0), (3.0, 3.0), (0.5, 9.0), (2.5, 1.0)]
    assert pareto_front(pts) == {0, 1, 3, 4}


def test_timeline_and_utilisation(plan_file: Path) -> None:
    chosen, _, _, _ = load_plans(plan_file)
    items = timeline(chosen)
    stages = [t for t in items if t.kind == "stage"]
    # prefill (80 ms on hp) → transfer 10 ms → decode (30 ms on co): ends at the plan's latency.
    assert stages[-1].end_s == pytest.approx(chosen.latency_s)
    assert any(t.kind == "transfer" and t.start_s == pytest.approx(0.080) for t in items)
    u = utilisation(chosen)
    assert u["hp"] == pytest.approx(0.080 * chosen.rps / chosen.devices["hp"])


def test_cli_report_with_baselines(
    plan_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.html"
    assert main(["report", str(plan_file), "--compare", str(TASKS), "--json", "-o", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [o["name"] for o in data["options"]]
    assert names[0] == "chosen (milp)" and {"homogeneous", "heft", "melange"} <= set(names)
    chosen = data["options"][0]
    # The MILP plan is never dearer than a baseline that meets the same SLA.
    assert all(
        chosen["usd_per_hour"] <= o["usd_per_hour"] + 1e-9
        for o in data["options"]
        if o["meets_sla"]
    )
    assert chosen["usd_per_million_requests"] == pytest.approx(95000.0)
    html = out.read_text()
    assert html.count("<svg") == 4 and "Pareto" in html and "<script" not in html


def test_combined_json_and_errors(plan_file: Path, tmp_path: Path) -> None:
    plan = json.loads(plan_file.read_text())
    combo = tmp_path / "combo.json"
    combo.write_text(json.dumps({"plan": plan, "baselines": {"heft": plan}}))
    chosen, base, _, _ = load_plans(combo)
    rep = build_report(chosen, base, "t")
    assert [o.name for o in rep.options] == ["chosen (milp)", "heft"]
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(TerrazzoError, match="not a plan"):
        load_plans(bad)
    with pytest.raises(TerrazzoError, match="does not exist"):
        load_plans(tmp_path / "missing.json")
