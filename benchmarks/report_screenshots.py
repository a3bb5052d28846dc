"""Screenshots of the TCO reports as a reader sees them (headless Chromium), for docs/img.

Question: are the plan report and the fleet study readable (labels apart, values in heatmap
cells, assumptions, sensitivity, totals)? Writes small PNGs under docs/img and a JSON with the
browser's measurements (label overlaps, console errors) to benchmarks/results.

    .venv/bin/python benchmarks/report_screenshots.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIGHT_FLEET = """# A tight mixed fleet: two CPU sockets, one T4, one L4
devices:
  cpu: {count: 2}
  t4: {count: 1}
  l4: {count: 1}
pricing: {mode: cloud}
"""


def _shrink(path: Path, max_width: int = 1200) -> None:
    """Palette PNG at most ``max_width`` wide: a few tens of KB for the docs."""
    from PIL import Image

    im = Image.open(path).convert("RGB")
    if im.width > max_width:
        im = im.resize((max_width, round(im.height * max_width / im.width)), Image.LANCZOS)
    im.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def _crop_top(path: Path, height_px: int) -> None:
    from PIL import Image

    im = Image.open(path)
    im.crop((0, 0, im.width, min(im.height, height_px))).save(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "docs" / "img"))
    ap.add_argument("--rps", type=float, default=2500.0)
    args = ap.parse_args()
    out = Path(args.out)

    from terrazzo import zoo
    from terrazzo.costmodel import load_catalog
    from terrazzo.frontend import from_onnx
    from terrazzo.placement import SLA, Fleet, solve, to_problem
    from terrazzo.report import browser as B
    from terrazzo.report import run_study, study_html
    from terrazzo.report.plan_report import build_report, report_html, solve_baselines

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="tz-shots-"))
    (tmp / "fleet.yaml").write_text(TIGHT_FLEET)
    fleet = Fleet.from_yaml(tmp / "fleet.yaml")
    graph = from_onnx(zoo.export_onnx("cnn", tmp))
    problem = to_problem(graph, fleet, SLA(0.005), args.rps)
    chosen = solve(problem, "milp")
    baselines, notes = solve_baselines(problem, skip="milp")
    rep = build_report(chosen, baselines, f"cnn on a tight cpu/t4/l4 fleet, {args.rps:g} req/s", notes,
                       pricing="cloud", fleet_counts={d: fleet.count(d) for d in fleet.names})  # fmt: skip
    plan_page = tmp / "plan.html"
    plan_page.write_text(report_html(rep))
    # as `terrazzo tco study --profile paper-2025` runs it (efficiencies from the datasheet profile)
    study = run_study(
        load_catalog("paper-2025"), datasheet=load_catalog("datasheet"), profile="paper-2025"
    )
    study_page = tmp / "study.html"
    study_page.write_text(study_html(study))

    shots = {
        "report-plan-top.png": (plan_page, "page"),
        "report-pareto.png": (plan_page, 'h2:has-text("Pareto") + svg'),
        "report-sensitivity.png": (plan_page, 'h2:has-text("Sensitivity to prices") + table'),
        "study-heatmaps.png": (study_page, 'h2:has-text("every prefill") + svg'),
    }
    checks = {}
    for page, prefixes in (
        (plan_page, ["pareto-label-"]),
        (study_page, ["heat-cell-", "heat-legend"]),
    ):
        mine = [(sel, out / name) for name, (p, sel) in shots.items() if p == page]
        chk = B.check_page(page, prefixes, shots=mine)
        checks[page.stem] = {
            "console_errors": list(chk.console_errors),
            "page_errors": list(chk.page_errors),
            "label_overlaps": [
                p for p in chk.overlapping("pareto-label-") if "axes" not in p[0] + p[1]
            ],
            "elements": {k: len(v) for k, v in chk.boxes.items()},
        }
    _crop_top(out / "report-plan-top.png", 1500)
    for name in shots:
        _shrink(out / name)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "benchmark": "report_screenshots",
        "machine": {"platform": platform.platform(), "browser": B.find_browser()},
        "commit": commit,
        "plan": {"stages": len(chosen.stages), "usd_per_hour": chosen.usd_per_hour,
                 "options": {o.name: o.usd_per_hour for o in rep.options}},
        "checks": checks,
        "screenshots": {n: (out / n).stat().st_size for n in shots},
        "wall_s": time.perf_counter() - t0,
    }  # fmt: skip
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "report_screenshots.json").write_text(
        json.dumps(result, indent=2)
    )
    print(f"{'screenshot':28} {'bytes':>8}")
    for n, size in result["screenshots"].items():
        print(f"{n:28} {size:8d}")
    print(json.dumps(checks, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
