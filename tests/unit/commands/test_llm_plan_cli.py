"""``terrazzo llm plan``: the LLM-scale planner from the command line, with baselines and a report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from terrazzo.cli import main

ARGS = ["llm", "plan", "--model", "llama3-8b", "--isl", "512", "--osl", "128", "--rps", "20",
        "--ttft-ms", "1000", "--tbt-ms", "50", "--devices", "l4,a100-80g,h100", "--time-budget-s", "0.5"]  # fmt: skip


def test_llm_plan_json_with_baselines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "llm.html"
    assert main([*ARGS, "--compare", "--json", "-o", str(out)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert list(d["plans"]) == ["pipeline (chosen)", "single-class P::D", "melange"]
    chosen = d["plans"]["pipeline (chosen)"]
    assert 0.0 <= chosen["gap"] <= 1.0
    assert chosen["lower_bound_usd_per_hour"] <= chosen["usd_per_hour"] + 1e-9
    assert chosen["ttft_s"] <= 1.0 + 1e-9 and chosen["tbt_s"] <= 0.05 + 1e-9
    assert chosen["usd_per_month"] == pytest.approx(730 * chosen["usd_per_hour"])
    assert {s["device"] for s in chosen["stages"]} <= {"l4", "a100-80g", "h100"}
    # single-class P::D lies inside the planner's space: the planner is never worse (its ratio ≥ 1
    # up to its certified gap)
    assert d["ratios"]["single-class P::D"] >= 1 - chosen["gap"] - 1e-9
    html = out.read_text()
    assert "<h2>Stages of the chosen plan" in html and "certified gap" in html


def test_llm_plan_unknown_device_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    args = [a if a != "l4,a100-80g,h100" else "l4,nope" for a in ARGS]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
