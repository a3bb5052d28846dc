"""``terrazzo plan-history`` over a decision log written by the controller's DecisionLog."""

from __future__ import annotations

import json
import time

from terrazzo.cli import main
from terrazzo.runtime.adapt import AdaptPlan, Decision, DecisionLog, StagePlan


def _log(path) -> None:
    old = AdaptPlan((StagePlan(("pre", "enc"), "gpu-s", 2),), 1.0, 0.12, 12.0, "milp")
    new = AdaptPlan(
        (StagePlan(("pre",), "cpu", 1), StagePlan(("enc",), "gpu-l", 2)), 2.3, 0.09, 36.0, "milp"
    )
    log = DecisionLog(path)
    log.write(
        Decision(time.time(), "sla", "forecast 36 rps", old, new, 30.0, 36.0, 0.5, 0.8).to_json()
    )
    log.write(
        Decision(time.time(), "traffic", "50% cheaper", new, old, 6.0, 6.0, 0.1, 0.4).to_json()
    )


def test_table_and_json(tmp_path, capsys):
    path = tmp_path / "decisions.jsonl"
    _log(path)
    assert main(["plan-history", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pre@cpux1 | enc@gpu-lx2" in out and "traffic" in out and "1.00 -> 2.30" in out
    assert main(["plan-history", str(path), "--json", "--last", "1"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["reason"] for e in entries] == ["traffic"]
    assert entries[0]["predicted_usd_per_hour"] == 1.0


def test_bad_log_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"reason": "sla", "new": {}}\nnot json\n')
    assert main(["plan-history", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "line 2 is not JSON" in err and err.count("\n") == 1
    assert main(["plan-history", str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read decision log" in capsys.readouterr().err


def test_serve_adapt_bad_policy_exit_2(tmp_path, capsys):
    policy = tmp_path / "p.yaml"
    policy.write_text("sla_p99_s: 0.2\nhysteresis: 5\nfleet: {cpu: {usd_per_hour: 1}}\n")
    assert main(["serve", str(tmp_path / "none.tzb"), "--adapt", str(policy)]) == 2
    err = capsys.readouterr().err
    assert "field 'hysteresis'" in err and err.count("\n") == 1
