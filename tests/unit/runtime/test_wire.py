"""The gateway→worker stage-call format (terrazzo.runtime.wire) and Triton-style batching config
(terrazzo.runtime.batch_config): round trips, zero-copy views, malformed input named."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from terrazzo.errors import ServingError
from terrazzo.ir import TensorSpec
from terrazzo.runtime import BatchingOptions, RunnerSpec, ServingPlan, StageSpec
from terrazzo.runtime.batch_config import batched_model_config, batching_from_config
from terrazzo.runtime.tensors import WireTensor, from_numpy
from terrazzo.runtime.wire import (
    WireError,
    decode,
    decode_arrays,
    encode,
    encode_arrays,
    tensor_view,
)


def test_arrays_round_trip_with_header_and_zero_copy_views() -> None:
    arrays = {
        "x": np.arange(12, dtype=np.float32).reshape(3, 4),
        "ids": np.array([[1, 2]], dtype=np.int64),
        "s": np.array([b"ab", b""], dtype=object),
        "f": np.asfortranarray(np.ones((2, 3), np.float16)),
        "e": np.zeros((0, 5), np.int32),
    }
    msg = encode_arrays({"priority": 2, "id": "r1"}, arrays)
    header, got = decode_arrays(msg)
    assert header == {"priority": 2, "id": "r1"}
    assert list(got) == list(arrays)
    for name, a in arrays.items():
        assert got[name].shape == a.shape and got[name].dtype == a.dtype
        assert np.array_equal(got[name], a)
    assert not got["x"].flags.writeable  # a view into the message, not a copy
    assert np.shares_memory(got["x"], np.frombuffer(msg, np.uint8))


def test_wire_tensors_pass_through_as_views() -> None:
    raw = np.arange(4, dtype=np.int32).tobytes()
    msg = encode({}, {"a": WireTensor("INT32", (4,), raw)})
    _, got = decode(msg)
    assert isinstance(got["a"].raw, memoryview) and bytes(got["a"].raw) == raw
    again = encode({}, got)  # a stage's outputs feed the next stage without conversion
    assert again == msg


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.float16).reshape(2, 3),
        np.array(2.5, np.float32),  # rank 0
        np.zeros((0, 4), np.int64),
        np.array([True, False, True]),
        np.arange(6, dtype=np.int32).reshape(2, 3).T,  # strided: encoded by a copy
        np.arange(3, dtype=">i4"),  # big-endian: encoded by a copy
        np.array([b"a", b"bc"], dtype=object),
    ],
)
def test_tensor_view_encodes_as_from_numpy_without_copying(array: np.ndarray) -> None:
    got, want = tensor_view(array), from_numpy(array)
    assert (got.datatype, got.shape, bytes(got.raw)) == (want.datatype, want.shape, want.raw)
    viewable = array.flags.c_contiguous and array.dtype.kind not in "OSU" and array.size > 0
    if viewable and array.dtype.byteorder != ">":
        assert np.shares_memory(np.frombuffer(got.raw, np.uint8), array)


@pytest.mark.parametrize(
    ("msg", "needle"),
    [
        (b"XXXX\x00\x00\x00\x00", "not b'TZW1'"),
        (b"TZ", "shorter than its prefix"),
        (struct.pack("<4sI", b"TZW1", 99) + b"{}", "overruns the message"),
        (struct.pack("<4sI", b"TZW1", 2) + b"{}", "not valid"),
        (
            struct.pack("<4sI", b"TZW1", 25) + b'{"t":[["x","FP32",[2],8]]}'[:25] + b"1234",
            "not valid",
        ),
    ],
)
def test_malformed_messages_fail_in_one_line(msg: bytes, needle: str) -> None:
    with pytest.raises(WireError, match=needle.replace("(", r"\(")):
        decode(msg)


def test_byte_counts_are_checked() -> None:
    head = json.dumps({"t": [["x", "FP32", [3], 8]]}).encode()
    msg = struct.pack("<4sI", b"TZW1", len(head)) + head + b"\0" * 8
    with pytest.raises(Exception, match="expected 12 bytes"):
        decode_arrays(msg)
    with pytest.raises(WireError, match="trailing"):
        decode(msg + b"!")
    with pytest.raises(WireError, match="overruns the stage message"):
        decode(msg[:-1])


def test_triton_json_batching_config_and_errors() -> None:
    obj = {
        "max_batch_size": 8,
        "dynamic_batching": {
            "preferred_batch_size": [4, 8],
            "max_queue_delay_microseconds": "500",
            "priority_levels": 2,
            "default_priority_level": 1,
            "default_queue_policy": {"timeout_action": "DELAY", "default_timeout_microseconds": 9},
        },
    }
    got = batching_from_config(obj, "m/config.json")
    assert got == BatchingOptions(8, (4, 8), 500, 2, 1, 9, "DELAY")
    assert batching_from_config({"version_policy": {}}, "x") is None
    for bad, field in (
        ({"max_batch_size": -1}, "max_batch_size"),
        ({"max_batch_size": 4, "dynamic_batching": {"bogus": 1}}, "'bogus'"),
        ({"dynamic_batching": {"priority_levels": 1}}, "needs max_batch_size"),
        ({"max_batch_size": 4, "dynamic_batching": {"preferred_batch_size": [9]}}, "preferred"),
    ):
        with pytest.raises(ServingError, match=field) as e:
            batching_from_config(bad, "m/config.json")
        assert str(e.value).startswith("m/config.json")


def test_model_config_reports_batching_as_compiled() -> None:
    spec = TensorSpec("x", "FP32", (-1, 4), dims=("batch", ""), bounds=((1, 16), (4, 4)))
    out = TensorSpec("y", "FP32", (-1, 2), dims=("batch", ""), bounds=((1, 16), (2, 2)))
    stage = StageSpec(0, "cpu", ("x",), ("y",), RunnerSpec("m:f"))
    plan = ServingPlan("m", (spec,), (out,), (stage,))
    cfg = batched_model_config(plan, BatchingOptions(32, (8, 32), 250, 2, 1, 1000))
    assert cfg.max_batch_size == 16  # the build accepts at most 16 rows
    assert cfg.parameters["max_batch_size_configured"].string_value == "32"
    assert list(cfg.input[0].dims) == [4] and list(cfg.output[0].dims) == [2]
    d = cfg.dynamic_batching
    assert list(d.preferred_batch_size) == [8]
    assert d.max_queue_delay_microseconds == 250 and d.priority_levels == 2
    assert d.default_priority_level == 1
    assert d.default_queue_policy.default_timeout_microseconds == 1000
    off = batched_model_config(plan, None)
    assert off.max_batch_size == 0 and list(off.input[0].dims) == [-1, 4]
    static = ServingPlan("m", (TensorSpec("x", "FP32", (2, 4)),), (out,), (stage,))
    cfg = batched_model_config(static, BatchingOptions(8))
    assert cfg.max_batch_size == 0 and "off" in cfg.parameters["batching"].string_value
