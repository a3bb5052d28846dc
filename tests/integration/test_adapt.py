"""The adaptive runtime end to end on SIMULATED devices: a load step, a slowed class, hot swaps.

Real gateway, real worker processes, a real gRPC client checking every answer; the device
classes are CPU workers that sleep for their declared service time (terrazzo.runtime.adapt.sim).
"""

from __future__ import annotations

import pytest

from terrazzo.runtime.adapt.scenario import Phase, run_scenario

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_load_step_and_slow_device_swap_without_failed_requests(tmp_path):
    log = tmp_path / "decisions.jsonl"
    phases = [
        Phase("warmup 1x", 1.0, 4.0, judged=False),
        Phase("load 3x", 3.0, 7.0),
        Phase("enc class slowed 5x", 3.0, 8.0, slow_current=5.0),
    ]
    r = run_scenario("full", phases, base_rps=12.0, decision_log=str(log))
    assert r["requests"] > 250
    assert r["failed"] == 0, [p["errors"] for p in r["phases"]]
    assert r["wrong"] == 0
    assert r["swaps"] >= 2 and not r["errors"]
    load, slow = r["phases"][1], r["phases"][2]
    assert load["decisions"], "the 3x step must change the plan"
    assert any(d["new"]["usd_per_hour"] > d["old"]["usd_per_hour"] for d in load["decisions"])
    assert slow["decisions"], "the slowed class must change the plan"
    slowed = set(slow["decisions"][0]["old"]["text"].split("@")[1:])  # classes before
    assert slow["decisions"][-1]["new"]["text"] != slow["decisions"][0]["old"]["text"]
    assert slowed
    assert log.read_text().count("\n") == r["swaps"]
