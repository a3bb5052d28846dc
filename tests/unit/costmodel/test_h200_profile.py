"""The h200 calibration profile measured on a lent H200 (docs/gpu.md) loads and predicts the
stage times it was scored against."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from terrazzo.costmodel import CostModel, load_catalog, measured_calibration

RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "gpu_timing.json"


def test_profile_says_when_and_how_it_was_measured():
    prof = measured_calibration("h200")
    assert prof is not None and prof.applies_to == ("h200",)
    assert prof.meta["measured"].startswith("2026-")
    assert "H200" in prof.meta["gpu"] and "time_evaluator" in prof.meta["how"]
    assert prof.meta["model_mape_held_out_pct"] < 25
    assert measured_calibration("no-such-device") is None


def test_calibrated_model_predicts_measured_stage_times():
    """Within 60% on every transformer stage measured; the prior was off by 2.5-5x."""
    pytest.importorskip("tvm")
    from terrazzo import zoo
    from terrazzo.frontend import from_onnx

    rows = {r["model"]: r for r in json.loads(RESULTS.read_text())["rows"]}
    cat = load_catalog()
    calibrated, prior = CostModel(cat, calibration=measured_calibration("h200")), CostModel(cat)
    for name in ("bert", "gpt2"):
        graph = from_onnx(zoo.export_onnx(name, Path("/tmp/terrazzo-zoo")))
        got = sum(calibrated.op_latencies_s(graph, "h200").values()) * 1e3
        was = sum(prior.op_latencies_s(graph, "h200").values()) * 1e3
        measured = rows[name]["on_device_ms"]
        assert abs(got - measured) / measured < 0.6, (name, got, measured)
        assert abs(was - measured) / measured > abs(got - measured) / measured
