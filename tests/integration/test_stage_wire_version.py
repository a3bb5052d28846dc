"""The gateway→worker stage call (terrazzo.runtime.wire, version 2) against a real worker on
loopback: it answers a version-2 call, and a call in another format version (a gateway of another
Terrazzo release) is refused with INVALID_ARGUMENT in one line naming both versions."""

from __future__ import annotations

import json
import struct

import grpc
import numpy as np
import pytest

from terrazzo.runtime import RunnerSpec
from terrazzo.runtime.wire import STAGE_METHOD, decode_arrays, encode_arrays
from terrazzo.runtime.worker import TOKEN_HEADER, WorkerServer

pytestmark = pytest.mark.integration
TOKEN = "t0ken"


@pytest.fixture(scope="module")
def stage_call():
    runner = RunnerSpec("terrazzo.runtime.runners:identity", {"names": ["x"], "outputs": ["y"]})
    stage = {"index": 0, "inputs": ["x"], "outputs": ["y"], "runner": runner.to_json()}
    server = WorkerServer({"stage": stage, "token": TOKEN, "max_message_bytes": 1 << 20})
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary(STAGE_METHOD, _registered_method=True)
    yield lambda msg: call(msg, timeout=10, metadata=((TOKEN_HEADER, TOKEN),))
    channel.close()
    server.stop(0)


def test_a_version_2_call_round_trips_with_its_header(stage_call) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for _ in range(3):  # the second call reads the tensor table from the worker's cache
        header, out = decode_arrays(
            stage_call(encode_arrays({"id": "r1", "priority": 1}, {"x": x}))
        )
        assert np.array_equal(out["y"], x) and out["y"].shape == (3, 4)
        assert header["compute_s"] >= 0.0 and header["queue_s"] >= 0.0
        assert set(header) == {"compute_s", "queue_s"}


def test_another_wire_version_is_refused_in_one_line(stage_call) -> None:
    head = json.dumps({"t": [["x", "FP32", [2], 8]]}).encode()
    v1 = struct.pack("<4sI", b"TZW1", len(head)) + head + bytes(8)  # a release-1 gateway's call
    with pytest.raises(grpc.RpcError) as e:
        stage_call(v1)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    text = e.value.details()
    assert "wire version 1, this side reads version 2" in text and "\n" not in text


def failing(names: list[str]):
    """A runner factory whose runner always raises (a stage whose kernel fails)."""

    def run(values):
        raise ValueError(f"bad values for {sorted(values)}")

    return run


def test_a_failing_runner_answers_internal_in_one_line_and_the_worker_keeps_serving() -> None:
    runner = RunnerSpec(f"{__name__}:failing", {"names": ["x"]})
    stage = {"index": 0, "inputs": ["x"], "outputs": ["y"], "runner": runner.to_json()}
    server = WorkerServer({"stage": stage, "token": TOKEN, "max_message_bytes": 1 << 20})
    port = server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(STAGE_METHOD, _registered_method=True)
            msg = encode_arrays({"id": "r1"}, {"x": np.zeros(2, np.float32)})
            for _ in range(2):  # the second call finds the worker alive and answers the same
                with pytest.raises(grpc.RpcError) as e:
                    call(msg, timeout=10, metadata=((TOKEN_HEADER, TOKEN),))
                assert e.value.code() == grpc.StatusCode.INTERNAL
                assert "failed: ValueError: bad values for ['x']" in e.value.details()
                assert "\n" not in e.value.details()
    finally:
        server.stop(0)
