"""The HTML reports rendered in a real headless Chromium: labels apart, values in cells, no errors.

The browser is Debian's chromium-headless-shell (``make browser``, run by ``make test``);
without one on PATH these tests skip with that instruction.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

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


def _pareto_page(tmp: Path, rep: PlanReport) -> Path:
    """The report's Pareto plot (ids ``pareto-label-*``) and, for contrast, the old drawing of the
    same points, each label beside its point and nothing moved (ids ``raw-label-*``)."""
    from terrazzo.report import plan_report as PR

    placed = PR._pareto(rep)
    fig, ax = H.new_figure(7.5, 4.2)
    for i, o in enumerate(rep.options):
        ax.scatter(o.latency_s * 1e3, o.usd_per_hour)
        ax.annotate(o.name, (o.latency_s * 1e3, o.usd_per_hour), fontsize=7, xytext=(3, 3),
                    textcoords="offset points", gid=f"raw-label-{i}")  # fmt: skip
    p = tmp / "pareto.html"
    sections = [H.Section("Pareto", H.figure_svg(placed)), H.Section("Old", H.figure_svg(fig))]
    p.write_text(H.page("pareto", sections))
    return p


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The plan report of the issue example with its baselines, a clustered Pareto page and a
    70B FP16 study, written as HTML."""
    from terrazzo.costmodel import load_catalog
    from terrazzo.placement import plan, to_problem
    from terrazzo.report import StudyOptions, run_study, study_html
    from terrazzo.report.plan_report import solve_baselines

    tmp = tmp_path_factory.mktemp("pages")
    chosen = plan(TASKS)
    problem = to_problem(TASKS, None, chosen.sla, chosen.rps)
    baselines, notes = solve_baselines(problem, skip=chosen.solver)
    rep = build_report(chosen, baselines, "issue example", notes)
    (tmp / "plan.html").write_text(report_html(rep))
    (tmp / "plan.json").write_text(json.dumps(rep.to_json()))
    opts = StudyOptions(models=("llama3-70b",), precisions=("fp16",))
    result = run_study(load_catalog("paper-2025"), opts, profile="paper-2025")
    (tmp / "study.html").write_text(study_html(result))
    (tmp / "study.json").write_text(json.dumps(result.to_json()))
    return {
        "plan": tmp / "plan.html",
        "pareto": _pareto_page(tmp, _clustered()),
        "study": tmp / "study.html",
    }


@pytest.fixture(scope="module")
def seen(pages: dict[str, Path]) -> dict[str, B.PageCheck]:
    """What one headless Chromium saw on each page."""
    specs = [
        B.PageSpec(pages["plan"], ("pareto-label",), ("pareto-label",)),
        B.PageSpec(pages["pareto"], ("pareto-label-", "raw-label-")),
        B.PageSpec(
            pages["study"],
            ("heat-cell-", "heat-infeasible-", "heat-colorbar", "heat-legend"),
            ("heat-cell-",),
            (("svg >> nth=1", pages["study"].parent / "heatmaps.png"),),
        ),
    ]
    return dict(zip(pages, B.check_pages(specs), strict=True))


def test_no_console_or_page_errors(seen: dict[str, B.PageCheck]) -> None:
    for name, chk in seen.items():
        assert chk.console_errors == () and chk.page_errors == (), name


def test_plan_report_labels_apart_and_drawn(
    pages: dict[str, Path], seen: dict[str, B.PageCheck]
) -> None:
    rep = json.loads(pages["plan"].with_suffix(".json").read_text())
    chk = seen["plan"]
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
    text = pages["plan"].read_text()
    for heading in ("Assumptions", "Sensitivity to prices", "Sensitivity to traffic",
                    "Monthly and yearly totals", "Energy"):  # fmt: skip
        assert f"<h2>{heading}" in text


def test_clustered_labels_do_not_overlap_and_the_check_catches_overlap(
    seen: dict[str, B.PageCheck],
) -> None:
    chk = seen["pareto"]
    assert len(chk.boxes["pareto-label-"]) == 1 + 9  # the axes and nine labels
    pairs = [p for p in chk.overlapping("pareto-label-") if "axes" not in p[0] + p[1]]
    assert pairs == []
    # the same points with labels drawn beside them (the old plot): the check must fail
    assert len(chk.overlapping("raw-label-")) >= 3


def test_study_heatmaps_have_values_one_scale_and_an_infeasible_legend(
    pages: dict[str, Path], seen: dict[str, B.PageCheck]
) -> None:
    rows = json.loads(pages["study"].with_suffix(".json").read_text())["rows"]
    chk = seen["study"]
    feasible = [r for r in rows if r["feasible"] and r["tco_benefit"] is not None]
    cells = chk.boxes["heat-cell-"]
    assert len(cells) == len(feasible)
    # every value is printed, legible (ink and contrast in its box) and a number
    for b in cells:
        float(b.text)
        assert b.ink > 0.03 and b.contrast > 0.3, b
    assert sorted(round(float(b.text), 2) for b in cells) == sorted(
        round(r["tco_benefit"], 2) for r in feasible
    )
    assert len(chk.boxes["heat-infeasible-"]) == sum(1 for r in rows if not r["feasible"]) > 0
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
