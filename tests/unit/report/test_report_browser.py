"""The HTML reports rendered in a real headless Chromium: labels apart, values in cells, no errors.

The browser is Debian's chromium-headless-shell (``make browser``, run by ``make test``);
without one on PATH these tests skip with that instruction.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from terrazzo.report import StudyResult
from terrazzo.report import browser as B
from terrazzo.report import html as H
from terrazzo.report.plan_report import FleetOption, PlanReport, build_report, report_html

TASKS = Path(__file__).resolve().parents[2] / "data" / "tasks" / "issue_example.yaml"

pytestmark = pytest.mark.skipif(
    B.find_browser() is None, reason="no headless Chromium on PATH: run `make browser`"
)


def _clustered(n: int = 8) -> PlanReport:
    """Options within a few percent of each other and one far away: the cluster is squeezed into a
    corner, so labels drawn beside their points sit on top of each other."""
    far = FleetOption(name="homogeneous", solver="homogeneous", usd_per_hour=400.0, usd_per_million_requests=1.0,
                      latency_s=0.0003, throughput_rps=None, energy_j_per_request=1.0, devices={"h100": 8},
                      meets_sla=True, pareto=True)  # fmt: skip
    opts = tuple(
        FleetOption(
            name=f"option-{i} (mix {i})", solver="milp", usd_per_hour=10.0 + 0.05 * i,
            usd_per_million_requests=1.0, latency_s=0.0040 + 0.00002 * i, throughput_rps=None,
            energy_j_per_request=1.0, devices={"l4": 1}, meets_sla=i % 3 != 0, pareto=i < 2,
        )
        for i in range(n)
    ) + (far,)  # fmt: skip
    return PlanReport("clustered", opts[0].name, opts, (), {}, 0.005, 100.0)


def _pareto_page(tmp: Path, rep: PlanReport, placed: bool = True) -> Path:
    from terrazzo.report import plan_report as PR

    if placed:
        fig = PR._pareto(rep)
    else:  # the old drawing: each label beside its point, nothing moved
        fig, ax = H.new_figure(7.5, 4.2)
        ax.set_gid("pareto-label-axes")
        for i, o in enumerate(rep.options):
            ax.scatter(o.latency_s * 1e3, o.usd_per_hour)
            ax.annotate(o.name, (o.latency_s * 1e3, o.usd_per_hour), fontsize=7, xytext=(3, 3),
                        textcoords="offset points", gid=f"pareto-label-{i}")  # fmt: skip
    p = tmp / ("pareto.html" if placed else "pareto-unplaced.html")
    p.write_text(H.page("pareto", [H.Section("Pareto", H.figure_svg(fig))]))
    return p


@pytest.fixture(scope="module")
def plan_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from terrazzo.placement import plan, to_problem
    from terrazzo.report.plan_report import solve_baselines

    chosen = plan(TASKS)
    problem = to_problem(TASKS, None, chosen.sla, chosen.rps)
    baselines, notes = solve_baselines(problem, skip=chosen.solver)
    rep = build_report(chosen, baselines, "issue example", notes)
    p = tmp_path_factory.mktemp("plan") / "plan.html"
    p.write_text(report_html(rep))
    (p.parent / "plan.json").write_text(json.dumps(rep.to_json()))
    return p


@pytest.fixture(scope="module")
def study() -> StudyResult:
    from terrazzo.costmodel import load_catalog
    from terrazzo.report import StudyOptions, run_study

    opts = StudyOptions(models=("llama3-70b",), precisions=("fp16",))
    return run_study(load_catalog("paper-2025"), opts, profile="paper-2025")


def test_plan_report_renders_without_errors_and_labels_apart(plan_page: Path) -> None:
    rep = json.loads((plan_page.parent / "plan.json").read_text())
    chk = B.check_page(plan_page, ["pareto-label"], ink_prefixes=["pareto-label"])
    assert chk.console_errors == () and chk.page_errors == ()
    labels = [b for b in chk.boxes["pareto-label"] if b.id != "pareto-label-axes"]
    axes = next(b for b in chk.boxes["pareto-label"] if b.id == "pareto-label-axes")
    # one label per distinct point; options at the same point share it ("a = b")
    named = sorted(n for b in labels for n in b.text.split(" = "))
    assert named == sorted(o["name"] for o in rep["options"])
    assert [p for p in chk.overlapping("pareto-label") if "axes" not in p[0] + p[1]] == []
    for b in labels:
        assert b.width > 5 and b.height > 5, b
        assert b.inside(axes, tol_px=40), (b, axes)  # near the plot, not flung off the page
        assert b.ink > 0.02, b  # something is drawn where the label is
    # the sections a planner needs are on the page
    text = plan_page.read_text()
    for heading in ("Assumptions", "Sensitivity to prices", "Sensitivity to traffic",
                    "Monthly and yearly totals", "Energy"):  # fmt: skip
        assert f"<h2>{heading}" in text


def test_clustered_labels_do_not_overlap_and_the_check_catches_overlap(tmp_path: Path) -> None:
    rep = _clustered()
    placed = B.check_page(_pareto_page(tmp_path, rep), ["pareto-label-"])
    pairs = [p for p in placed.overlapping("pareto-label-") if "axes" not in p[0] + p[1]]
    assert pairs == []
    # the same points with labels drawn beside them (the old plot): the check must fail
    raw = B.check_page(_pareto_page(tmp_path, rep, placed=False), ["pareto-label-"])
    bad = [p for p in raw.overlapping("pareto-label-") if "axes" not in p[0] + p[1]]
    assert len(bad) >= 3


def test_study_heatmaps_have_values_one_scale_and_an_infeasible_legend(
    tmp_path: Path, study: StudyResult
) -> None:
    from terrazzo.report import study_html

    page = tmp_path / "study.html"
    page.write_text(study_html(study))
    chk = B.check_page(
        page,
        ["heat-cell-", "heat-infeasible-", "heat-colorbar", "heat-legend"],
        ink_prefixes=["heat-cell-"],
        shots=[("svg >> nth=1", tmp_path / "heatmaps.png")],
    )
    assert chk.console_errors == () and chk.page_errors == ()
    rows = study.rows
    feasible = [r for r in rows if r.feasible and r.tco_benefit is not None]
    cells = chk.boxes["heat-cell-"]
    assert len(cells) == len(feasible)
    # every value is printed, legible (ink and contrast in its box) and a number
    for b in cells:
        float(b.text)
        assert b.ink > 0.03 and b.contrast > 0.3, b
    assert sorted(round(float(b.text), 2) for b in cells) == sorted(
        round(r.tco_benefit, 2) for r in feasible
    )
    assert len(chk.boxes["heat-infeasible-"]) == sum(1 for r in rows if not r.feasible) > 0
    assert len(chk.boxes["heat-colorbar"]) == 1  # one shared scale
    legend = chk.boxes["heat-legend"]
    assert len(legend) == 1 and "infeasible" in legend[0].text and legend[0].width > 50
    assert chk.screenshots[0].stat().st_size > 10_000


def test_missing_browser_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from terrazzo.errors import TerrazzoError

    monkeypatch.setattr(B, "find_browser", lambda: None)
    with pytest.raises(TerrazzoError, match="make browser"):
        B.check_page(tmp_path / "x.html")


def test_box_geometry() -> None:
    a = B.Box("a", "", 0, 0, 10, 10)
    assert a.overlaps(dataclasses.replace(a, id="b", x=5))
    assert not a.overlaps(dataclasses.replace(a, id="c", x=10.2))
    assert dataclasses.replace(a, x=1, width=5).inside(a)
