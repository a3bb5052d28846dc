"""RuntimeMetrics.tally: per-thread accumulators folded at scrape time read as direct updates."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import generate_latest

from terrazzo.runtime.gateway import ModelStats
from terrazzo.runtime.metrics import RuntimeMetrics
from terrazzo.runtime.protos import grpc_service_pb2 as pb

VALUES = [0.0001, 0.0005, 0.0007, 0.003, 0.2, 7.0, 100.0, 0.001]


def _scrape(m: RuntimeMetrics) -> list[str]:
    # _created samples carry creation times, which differ between two registries; float sums
    # are compared apart (added in another order, they may differ in the last bit)
    text = generate_latest(m.registry).decode()
    return [line for line in text.splitlines() if "_created" not in line and "_sum{" not in line]


def test_tally_scrape_equals_direct_updates_across_threads():
    direct, tallied = RuntimeMetrics(), RuntimeMetrics()
    for v in VALUES * 4:  # the same updates, straight to the children
        direct.requests.labels(model="m", status="OK").inc()
        direct.request_latency.labels(model="m").observe(v)
        direct.device_busy.labels(device="cpu").inc(0.25)
    t = tallied.tally
    req = tallied.requests.labels(model="m", status="OK")
    lat = tallied.request_latency.labels(model="m")
    busy = tallied.device_busy.labels(device="cpu")

    def work(values: list[float]) -> None:
        for v in values:
            t.inc(req)
            t.observe(lat, v)
            t.inc(busy, 0.25)

    threads = [threading.Thread(target=work, args=(VALUES,)) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    first = _scrape(tallied)  # folds the three threads' updates
    work(VALUES)  # more after a fold: only the difference is added at the next one
    assert first != _scrape(tallied)
    assert _scrape(tallied) == _scrape(direct)  # folding twice adds nothing
    key = ("terrazzo_request_latency_seconds_sum", {"model": "m"})
    assert tallied.registry.get_sample_value(*key) == pytest.approx(
        direct.registry.get_sample_value(*key), rel=1e-12
    )
    assert (
        tallied.registry.get_sample_value(
            "terrazzo_request_latency_seconds_bucket", {"model": "m", "le": "0.0005"}
        )
        == 4 * 2
    )  # 0.0001 and 0.0005 (le is inclusive), from each of 4 passes


def test_model_stats_sums_threads():
    stats = ModelStats()
    phases = {"queue": 1e-6, "compute_input": 2e-6, "compute_infer": 3e-6, "compute_output": 4e-6}

    def work() -> None:
        for _ in range(100):
            stats.record(True, 1e-5, phases)
        stats.record(False, 2e-5, {})

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out = pb.ModelStatistics()
    stats.fill(out)
    assert out.inference_count == out.execution_count == 400
    assert out.last_inference > 0
    s = out.inference_stats
    assert (s.success.count, s.fail.count, s.compute_infer.count) == (400, 4, 400)
    assert s.success.ns == 400 * 10_000
    assert s.fail.ns == 4 * 20_000
    assert s.compute_output.ns == 400 * 4_000
