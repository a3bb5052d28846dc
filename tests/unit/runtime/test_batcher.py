"""Dynamic batcher: merging, splitting, preferred sizes, delay, priorities, queue timeouts, with real threads."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from terrazzo.errors import ServingError
from terrazzo.ir import TensorSpec
from terrazzo.runtime.batcher import (
    BatchDimension,
    BatchingOptions,
    BatchRejectedError,
    DynamicBatcher,
    batch_dimension,
    options_for_stage,
)

DIM = BatchDimension("batch", 1, 64)


def _spec(name: str, dims: tuple[str, ...], hi: int = 64) -> TensorSpec:
    shape = tuple(-1 if d else 4 for d in dims)
    bounds = tuple((1, hi) if d else (4, 4) for d in dims)
    return TensorSpec(name, "float32", shape, dims, bounds)


class _Model:
    """A row-independent "attention" stage: softmax(x Wq (x Wk)^T) x per row, plus a row sum.

    Records the batch sizes it was called with; ``gate`` (when set) holds each call until
    released, so tests can let a queue build up deterministically.
    """

    def __init__(self, gate: threading.Event | None = None, delay_s: float = 0.0):
        rng = np.random.default_rng(0)
        self.wq = rng.standard_normal((8, 8)).astype(np.float32)
        self.wk = rng.standard_normal((8, 8)).astype(np.float32)
        self.calls: list[int] = []
        self.firsts: list[float] = []  # x[0, 0, 0] of every call: which request ran when
        self.gate = gate
        self.delay_s = delay_s
        self.started = threading.Event()

    def __call__(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        x = values["x"]  # (batch, seq, 8)
        self.calls.append(x.shape[0])
        self.firsts.append(float(x[0, 0, 0]))
        q, k = x @ self.wq, x @ self.wk
        s = q @ np.swapaxes(k, 1, 2) / np.float32(np.sqrt(8))
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        a = s / s.sum(axis=-1, keepdims=True)
        return {"y": a @ x, "pooled": (a @ x).sum(axis=1)}


def _batcher(model: _Model, **kw: object) -> DynamicBatcher:
    return DynamicBatcher(model, ("x",), ("y", "pooled"), BatchingOptions(**kw), DIM, "stage0")  # type: ignore[arg-type]


def _x(rows: int, seed: int, seq: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, seq, 8)).astype(np.float32)


def test_concurrent_mixed_batch_sizes_equal_unbatched() -> None:
    reference = _Model()
    gate = threading.Event()
    model = _Model(gate)
    b = _batcher(model, max_batch_size=32)
    sizes = [1, 2, 3, 1, 3, 2, 2, 1, 3, 1]
    inputs = [_x(n, seed) for seed, n in enumerate(sizes)]
    try:
        with ThreadPoolExecutor(len(sizes) + 1) as ex:
            first = ex.submit(b.submit, {"x": _x(1, 99)})  # occupies the stage
            assert model.started.wait(5)
            futs = [ex.submit(b.submit, {"x": x}) for x in inputs]
            deadline = time.monotonic() + 5
            while b.stats.snapshot()["request_count"] == 0 and len(b._queue) < len(sizes):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            gate.set()
            first.result(5)
            results = [f.result(10) for f in futs]
    finally:
        b.close()
    for x, got in zip(inputs, results, strict=True):
        want = reference({"x": x})
        assert got.outputs["y"].shape == x.shape
        np.testing.assert_allclose(got.outputs["y"], want["y"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(got.outputs["pooled"], want["pooled"], rtol=0, atol=1e-6)
    assert model.calls == [1, sum(sizes)]  # everything queued behind the first ran as one
    stats = b.stats.snapshot()
    assert stats["request_count"] == len(sizes) + 1
    assert stats["inference_count"] == sum(sizes) + 1
    assert stats["execution_count"] == 2 < stats["request_count"]
    assert {s["batch_size"]: s["count"] for s in stats["batch_stats"]} == {1: 1, sum(sizes): 1}
    assert all(r.batch_rows == sum(sizes) for r in results)
    assert sum(r.compute_s for r in results) == pytest.approx(
        stats["batch_stats"][1]["compute_infer_s"]
    )


def test_max_batch_size_limits_rows_and_mismatched_shapes_run_apart() -> None:
    gate = threading.Event()
    model = _Model(gate)
    b = _batcher(model, max_batch_size=4)
    try:
        with ThreadPoolExecutor(8) as ex:
            first = ex.submit(b.submit, {"x": _x(1, 0)})
            assert model.started.wait(5)
            futs = [ex.submit(b.submit, {"x": _x(2, i)}) for i in range(3)]  # 6 rows: 4 + 2
            other = ex.submit(b.submit, {"x": _x(1, 7, seq=3)})  # other seq: cannot merge
            big = ex.submit(b.submit, {"x": _x(9, 8)})  # beyond max_batch_size: alone
            while len(b._queue) < 5:
                time.sleep(0.01)
            gate.set()
            for f in [first, *futs, other, big]:
                f.result(10)
    finally:
        b.close()
    assert sorted(model.calls) == sorted([1, 4, 2, 1, 9])
    assert max(c for c in model.calls if c != 9) <= 4


def test_preferred_size_executes_without_waiting_for_the_delay() -> None:
    model = _Model()
    b = _batcher(model, max_batch_size=8, preferred_batch_sizes=(2,), max_queue_delay_us=5_000_000)
    try:
        with ThreadPoolExecutor(2) as ex:
            t0 = time.monotonic()
            futs = [ex.submit(b.submit, {"x": _x(1, i)}) for i in range(2)]
            for f in futs:
                f.result(10)
            took = time.monotonic() - t0
    finally:
        b.close()
    assert model.calls == [2] and took < 2.0  # not the 5 s delay


def test_queue_delay_waits_for_a_fuller_batch() -> None:
    model = _Model()
    b = _batcher(model, max_batch_size=8, max_queue_delay_us=300_000)
    try:
        with ThreadPoolExecutor(3) as ex:
            t0 = time.monotonic()
            futs = [ex.submit(b.submit, {"x": _x(1, 0)})]
            time.sleep(0.05)
            futs += [ex.submit(b.submit, {"x": _x(2, i)}) for i in range(2)]
            for f in futs:
                f.result(10)
            took = time.monotonic() - t0
    finally:
        b.close()
    assert model.calls == [5] and 0.25 <= took < 3.0


def test_priority_levels_run_higher_priority_first() -> None:
    gate = threading.Event()
    model = _Model(gate)
    b = _batcher(model, max_batch_size=1, priority_levels=2, default_priority_level=2)
    low_x, high_x = _x(1, 1), _x(1, 2)
    try:
        with ThreadPoolExecutor(4) as ex:
            first = ex.submit(b.submit, {"x": _x(1, 0)})
            assert model.started.wait(5)
            low = ex.submit(b.submit, {"x": low_x}, 0)  # 0: the default level, 2
            while len(b._queue) < 1:
                time.sleep(0.01)
            high = ex.submit(b.submit, {"x": high_x}, 1)
            while len(b._queue) < 2:
                time.sleep(0.01)
            gate.set()
            for f in (first, low, high):
                f.result(10)
        with pytest.raises(BatchRejectedError, match="priority 3 is outside 0..2") as e:
            b.submit({"x": _x(1, 0)}, priority=3)
        assert e.value.code == "INVALID_ARGUMENT"
    finally:
        b.close()
    assert model.firsts[1:] == [float(high_x[0, 0, 0]), float(low_x[0, 0, 0])]


def test_queue_timeout_rejects_and_cancelled_callers_leave_the_queue() -> None:
    gate = threading.Event()
    model = _Model(gate)
    b = _batcher(model, max_batch_size=8, default_queue_timeout_us=100_000)
    try:
        with ThreadPoolExecutor(3) as ex:
            first = ex.submit(b.submit, {"x": _x(1, 0)}, queue_timeout_us=0)
            assert model.started.wait(5)
            late = ex.submit(b.submit, {"x": _x(1, 1)})
            alive = threading.Event()
            alive.set()
            gone = ex.submit(b.submit, {"x": _x(1, 2)}, queue_timeout_us=0, is_active=alive.is_set)
            time.sleep(0.05)
            alive.clear()
            with pytest.raises(BatchRejectedError, match="caller went away") as e:
                gone.result(5)
            assert e.value.code == "CANCELLED"
            with pytest.raises(BatchRejectedError, match="timed out in the batch queue") as e:
                late.result(5)
            assert e.value.code == "UNAVAILABLE"
            gate.set()
            first.result(5)
    finally:
        b.close()
    assert model.calls == [1]
    assert b.stats.snapshot()["rejected_count"] == 2


def test_timeout_action_delay_keeps_the_request() -> None:
    gate = threading.Event()
    model = _Model(gate)
    b = _batcher(model, max_batch_size=1, default_queue_timeout_us=50_000, timeout_action="DELAY")
    try:
        with ThreadPoolExecutor(2) as ex:
            first = ex.submit(b.submit, {"x": _x(1, 0)})
            assert model.started.wait(5)
            late = ex.submit(b.submit, {"x": _x(1, 1)})
            time.sleep(0.2)
            gate.set()
            first.result(5)
            assert late.result(5).outputs["y"].shape == (1, 5, 8)
    finally:
        b.close()


def test_a_stage_error_reaches_every_request_of_its_batch() -> None:
    gate = threading.Event()
    calls: list[int] = []

    def broken(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(values["x"].shape[0])
        gate.wait(10)
        if values["x"].shape[0] > 1:
            raise RuntimeError("device fault")
        return {"y": values["x"], "pooled": values["x"][:, 0]}

    b = DynamicBatcher(broken, ("x",), ("y", "pooled"), BatchingOptions(max_batch_size=8), DIM)
    try:
        with ThreadPoolExecutor(4) as ex:
            first = ex.submit(b.submit, {"x": _x(1, 0)})
            while not calls:
                time.sleep(0.01)
            futs = [ex.submit(b.submit, {"x": _x(1, i)}) for i in range(3)]
            while len(b._queue) < 3:
                time.sleep(0.01)
            gate.set()
            first.result(5)
            for f in futs:
                with pytest.raises(RuntimeError, match="device fault"):
                    f.result(5)
    finally:
        b.close()
    assert calls == [1, 3] and b.stats.snapshot()["failure_count"] == 3


def test_an_output_without_the_batch_dimension_fails_the_batch_clearly() -> None:
    gate = threading.Event()

    def summed(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        gate.wait(10)
        return {"y": values["x"].sum(axis=0, keepdims=True), "pooled": values["x"][:, 0]}

    b = DynamicBatcher(summed, ("x",), ("y", "pooled"), BatchingOptions(max_batch_size=8), DIM)
    try:
        with ThreadPoolExecutor(3) as ex:
            first = ex.submit(b.submit, {"x": _x(1, 0)})
            time.sleep(0.05)
            futs = [ex.submit(b.submit, {"x": _x(1, i)}) for i in range(2)]
            while len(b._queue) < 2:
                time.sleep(0.01)
            gate.set()
            first.result(5)
            for f in futs:
                with pytest.raises(ServingError, match="'y' has 1 rows for a batch of 2"):
                    f.result(5)
    finally:
        b.close()


def test_batch_dimension_is_proven_from_the_signature() -> None:
    good = batch_dimension(
        [_spec("ids", ("batch", "")), _spec("mask", ("batch", ""), hi=32)],
        [_spec("h", ("batch", "", ""))],
    )
    assert good == BatchDimension("batch", 1, 32)
    cases = [
        ([_spec("x", ("", ""))], [_spec("y", ("batch", ""))], "input 'x' has a fixed dimension 0"),
        ([_spec("x", ("batch", ""))], [_spec("y", ("", "batch"))], "output 'y' has a fixed"),
        ([_spec("x", ("batch", ""))], [_spec("y", ("batch * 2", ""))], "not a plain symbol"),
        ([_spec("x", ("batch", ""))], [_spec("y", ("n", ""))], "not 'batch'"),
        ([_spec("x", ("batch", "batch"))], [_spec("y", ("batch", ""))], "beyond dimension 0"),
        ([_spec("x", ("batch", ""), hi=1)], [_spec("y", ("batch", ""))], "at most 1 row"),
        ([], [_spec("y", ("batch", ""))], "no inputs"),
    ]
    for ins, outs, why in cases:
        got = batch_dimension(ins, outs)
        assert isinstance(got, str) and why in got, (got, why)


def test_options_validate_and_round_trip() -> None:
    opts = BatchingOptions(
        max_batch_size=8, preferred_batch_sizes=(8, 4, 4), max_queue_delay_us=100
    )
    assert opts.preferred_batch_sizes == (4, 8) and opts.enabled
    assert BatchingOptions.from_json(opts.to_json()) == opts
    assert not BatchingOptions().enabled
    assert options_for_stage({"*": opts.to_json()}, 3) == opts
    assert options_for_stage({"1": opts.to_json()}, 0) == BatchingOptions()
    with pytest.raises(ServingError, match="preferred_batch_sizes must lie in 1..max_batch_size"):
        BatchingOptions(max_batch_size=4, preferred_batch_sizes=(8,))
    with pytest.raises(ServingError, match="max_queue_delay_us must be an integer >= 0"):
        BatchingOptions(max_batch_size=4, max_queue_delay_us=-1)
    with pytest.raises(ServingError, match="timeout_action must be one of"):
        BatchingOptions(max_batch_size=4, timeout_action="DROP")
    with pytest.raises(ServingError, match="unknown batching option"):
        BatchingOptions.from_json({"max_batch": 4})


def test_off_runs_every_request_alone() -> None:
    model = _Model(delay_s=0.01)
    b = DynamicBatcher(model, ("x",), ("y", "pooled"), BatchingOptions(), DIM)
    try:
        with ThreadPoolExecutor(4) as ex:
            list(ex.map(lambda i: b.submit({"x": _x(2, i)}), range(4)))
    finally:
        b.close()
    assert model.calls == [2, 2, 2, 2]
    assert b.stats.snapshot()["execution_count"] == 4


def test_worker_without_a_provable_batch_dimension_serves_unbatched_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from terrazzo.runtime.worker import WorkerServer

    config = {
        "stage": {
            "index": 2,
            "inputs": ["x"],
            "outputs": ["x"],
            "runner": {"factory": "terrazzo.runtime.runners:identity", "kwargs": {"names": ["x"]}},
        },
        "batching": {"*": BatchingOptions(max_batch_size=8).to_json()},
    }
    with caplog.at_level("WARNING", logger="terrazzo.runtime"):
        server = WorkerServer(config)
    try:
        assert server.servicer.batcher is None
        warnings = [r.getMessage() for r in caplog.records]
        assert warnings == [
            "stage2: dynamic batching stays off: its runner declares no tensor signature (dims) "
            "to prove a batch dimension"
        ]
        assert server.servicer.stats.snapshot()["batching"] is False
    finally:
        server.stop(0)


def _queued_behind_first(b: DynamicBatcher, model: _Model, gate: threading.Event, n: int) -> list:
    """Occupy the stage with one request, queue ``n`` one-row requests behind it, release."""
    inputs = [_x(1, seed) for seed in range(n)]
    with ThreadPoolExecutor(n + 1) as ex:
        first = ex.submit(b.submit, {"x": _x(1, 99)})
        assert model.started.wait(5)
        futs = [ex.submit(b.submit, {"x": x}) for x in inputs]
        deadline = time.monotonic() + 5
        while len(b._queue) < n:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        gate.set()
        first.result(5)
        results = [f.result(10) for f in futs]
    reference = _Model()
    for x, got in zip(inputs, results, strict=True):
        np.testing.assert_allclose(got.outputs["y"], reference({"x": x})["y"], rtol=0, atol=1e-6)
    return results


def test_batches_are_cut_at_bucket_sizes() -> None:
    # 17 rows queued on a stage built at 1..32: 16 rows fill a bucket, 17 would pay for 32
    gate = threading.Event()
    model = _Model(gate)
    buckets = (1, 2, 4, 8, 16, 32)
    b = DynamicBatcher(model, ("x",), ("y", "pooled"), BatchingOptions(max_batch_size=64), DIM,
                       "stage0", bucket_sizes=buckets)  # fmt: skip
    try:
        assert b.limit == 32  # never above the largest bucket (the symbolic build)
        _queued_behind_first(b, model, gate, 17)
    finally:
        b.close()
    assert model.calls == [1, 16, 1]
    assert b.stats.snapshot()["inference_count"] == 18


def test_without_an_exact_fit_the_cut_pads_least() -> None:
    # rows 3, 2, 2 (and 2 more) on buckets 1, 4, 8: 3 pads 1 of 4, 3+2 pads 3 of 8, 3+2+2 pads
    # 1 of 8 (the least per real row): 7 rows run together, the last 2 next
    gate = threading.Event()
    model = _Model(gate)
    b = DynamicBatcher(model, ("x",), ("y", "pooled"), BatchingOptions(max_batch_size=32), DIM,
                       "stage0", bucket_sizes=(1, 4, 8))  # fmt: skip
    inputs = [_x(n, seed) for seed, n in enumerate([3, 2, 2, 2])]
    try:
        assert b.limit == 8
        with ThreadPoolExecutor(len(inputs) + 1) as ex:
            first = ex.submit(b.submit, {"x": _x(1, 99)})
            assert model.started.wait(5)
            futs = []
            for x in inputs:  # queued in this order
                futs.append(ex.submit(b.submit, {"x": x}))
                deadline = time.monotonic() + 5
                while len(b._queue) < len(futs):
                    assert time.monotonic() < deadline
                    time.sleep(0.005)
            gate.set()
            first.result(5)
            results = [f.result(10) for f in futs]
    finally:
        b.close()
    assert model.calls == [1, 7, 2]
    reference = _Model()
    for x, got in zip(inputs, results, strict=True):
        np.testing.assert_allclose(got.outputs["y"], reference({"x": x})["y"], rtol=0, atol=1e-6)
