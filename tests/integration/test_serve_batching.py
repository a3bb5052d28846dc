"""Dynamic batching served end to end: a tiny BERT bundle with a symbolic batch, the stock gRPC client.

Concurrent requests of batch sizes 1, 2 and 3 are merged by the stage worker and must come back
equal to running each request alone; the worker's counters (stats RPC and /metrics) must show
fewer executions than requests.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEQ = 8


def _single_stage_bundle(onnx_path: Path, out: Path, max_batch: int) -> Path:
    """Compile a dynamic-batch ONNX model with every op on the CPU class."""
    from terrazzo.frontend import from_onnx
    from terrazzo.pipeline import compile_model
    from terrazzo.placement import SLA, Fleet, build_plan, to_problem

    fleet = Fleet.from_dict({"devices": {"cpu": {"count": 1}}})
    sla = SLA(latency_s=1.0)
    shapes = {"input_ids": f"1..{max_batch}x{SEQ}", "attention_mask": f"1..{max_batch}x{SEQ}"}
    prob = to_problem(from_onnx(onnx_path, shapes=shapes), fleet, sla, 1.0)
    plan = build_plan(prob, np.zeros(len(prob.tasks), dtype=int), "all-cpu", 0.0)
    res = compile_model(
        onnx_path, fleet, sla, out_path=out, plan=plan, shapes=shapes, include_reference=False
    )
    return Path(res.path)


@pytest.fixture(scope="module")
def bert_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from tests.unit.frontend.test_dynamic_shapes import _bert_onnx

    d = tmp_path_factory.mktemp("batching")
    return _single_stage_bundle(_bert_onnx(d / "bert.onnx"), d / "bert.tzb", 16)


def _feeds(rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((rows, SEQ), np.int64)
    mask[:, SEQ - 1 - seed % 3 :] = 0  # padded tails differ between requests
    return {"input_ids": rng.integers(0, 100, (rows, SEQ)).astype(np.int64), "attention_mask": mask}


def _infer(port: int, feeds: dict[str, np.ndarray], model: str = "bert") -> dict[str, np.ndarray]:
    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        inputs = []
        for name, a in feeds.items():
            t = tc.InferInput(name, list(a.shape), "INT64")
            t.set_data_from_numpy(a)
            inputs.append(t)
        r = client.infer(model, inputs)
        return {n: r.as_numpy(n) for n in ("last_hidden_state", "pooler_output")}
    finally:
        client.close()


def test_concurrent_mixed_batches_equal_unbatched_and_fewer_executions(bert_bundle: Path) -> None:
    from dataclasses import replace

    from terrazzo.bundle import open_bundle
    from terrazzo.runtime import BatchingOptions, ServingPlan, serve

    requests = [_feeds(rows, seed) for seed, rows in enumerate([1, 2, 3] * 8)]
    with open_bundle(bert_bundle, allow_unsigned=True) as b:  # unbatched: one run per request
        runners = b.load_stages()
        expected = [b.run(f, runners) for f in requests]

    plan = ServingPlan.from_bundle(bert_bundle, allow_unsigned=True)
    plan = replace(plan, model_name="bert")
    batching = BatchingOptions(max_batch_size=16, max_queue_delay_us=50_000)
    with serve(plan, 0, metrics_port=0, allow_unsigned=True, batching=batching) as server:
        barrier = threading.Barrier(len(requests))

        def one(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            barrier.wait(30)  # arrive together
            return _infer(server.port, f)

        with ThreadPoolExecutor(len(requests)) as ex:
            got = list(ex.map(one, requests))
        stats = {row["stage"]: row for row in server.worker_stats.fetch()}
        assert server.metrics_port is not None
        page = (
            urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
            .read()
            .decode()
        )

    for want, have, f in zip(expected, got, requests, strict=True):
        for name in ("last_hidden_state", "pooler_output"):
            assert have[name].shape[0] == f["input_ids"].shape[0]
            np.testing.assert_allclose(have[name], want[name], rtol=0, atol=1e-6)

    main = stats[0]  # the stage holding the encoder
    assert main["batching"] is True
    assert main["request_count"] == len(requests)
    assert main["inference_count"] == sum(f["input_ids"].shape[0] for f in requests)
    assert main["execution_count"] < main["request_count"]
    assert max(s["batch_size"] for s in main["batch_stats"]) > 3  # requests were merged
    assert (
        'terrazzo_stage_execution_count_total{device="cpu",model="bert",replica="0",stage="0"}'
        in page
    )
    executions = _sample(page, "terrazzo_stage_execution_count_total", 'stage="0"')
    requests_ok = _sample(page, "terrazzo_stage_request_success_total", 'stage="0"')
    assert executions == main["execution_count"] < requests_ok == len(requests)
    assert _sample(page, "terrazzo_stage_batch_size_count", 'stage="0"') == executions
    # stages without a provable batch dimension (the planner's empty shape branches) run unbatched
    for index, row in stats.items():
        if index != 0:
            assert row["batching"] is False and row["execution_count"] == row["request_count"]


def _sample(page: str, name: str, label: str) -> float:
    for line in page.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} with {label} not in /metrics")


def test_cli_flags_turn_batching_on_for_every_stage(bert_bundle: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "terrazzo.cli", "serve", str(bert_bundle), "--port", "0",
         "--metrics-port", "0", "--max-batch-size", "16", "--max-queue-delay-us", "50000",
         "--preferred-batch-size", "16", "--priority-levels", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out = ""
        while not any(line.startswith("ready") for line in out.splitlines()):
            got_line = proc.stdout.readline() if proc.stdout else ""
            assert got_line, f"server exited: {proc.stderr.read() if proc.stderr else ''}"
            out += got_line
        port = int(re.search(r"on 127\.0\.0\.1:(\d+)", out).group(1))  # type: ignore[union-attr]
        metrics = int(re.search(r"127\.0\.0\.1:(\d+)/metrics", out).group(1))  # type: ignore[union-attr]
        name = re.search(r"serving model '([^']+)'", out).group(1)  # type: ignore[union-attr]
        requests = [_feeds(rows, seed) for seed, rows in enumerate([1, 2, 3] * 4)]
        barrier = threading.Barrier(len(requests))

        def one(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            barrier.wait(30)
            return _infer(port, f, name)

        with ThreadPoolExecutor(len(requests)) as ex:
            got = list(ex.map(one, requests))
        assert [g["pooler_output"].shape[0] for g in got] == [1, 2, 3] * 4
        # ModelConfig reports the batching it serves with; the client's priority reaches the
        # stage worker's batcher (3 is outside its 2 levels: refused there, by name)
        client = tc.InferenceServerClient(f"127.0.0.1:{port}")
        cfg = client.get_model_config(name).config
        assert cfg.max_batch_size == 16 and list(cfg.input[0].dims) == [SEQ]
        assert list(cfg.dynamic_batching.preferred_batch_size) == [16]
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 50000
        assert cfg.dynamic_batching.priority_levels == 2
        inputs = []
        for key, a in _feeds(1, 0).items():
            inputs.append(tc.InferInput(key, list(a.shape), "INT64"))
            inputs[-1].set_data_from_numpy(a)
        assert client.infer(name, inputs, priority=2).as_numpy("pooler_output").shape[0] == 1
        with pytest.raises(InferenceServerException, match=r"priority 3 is outside 0\.\.2"):
            client.infer(name, inputs, priority=3)
        client.close()
        page = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read()
        page_text = page.decode()
        executions = _sample(page_text, "terrazzo_stage_execution_count_total", 'stage="0"')
        assert executions < _sample(page_text, "terrazzo_stage_request_success_total", 'stage="0"')
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    off = re.findall(r"(stage\d+): dynamic batching stays off: (.*)", err)
    # the dynamic-sequence BERT is one symbolic stage, and it batches (a stage that cannot
    # says so here, once, by name: tests/unit/runtime/test_batcher.py)
    assert off == []


def test_cli_refuses_bad_batching_flags_in_one_line(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "terrazzo.cli", "serve", str(tmp_path / "absent.tzb"),
         "--max-batch-size", "4", "--preferred-batch-size", "8"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "preferred_batch_sizes must lie in 1..max_batch_size (4)" in r.stderr
