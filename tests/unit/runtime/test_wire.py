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


def _prefix(count: int = 0, present: int = 0, id_len: int = 0, extra: int = 0, table: int = 0):
    """The fixed fields of a version-2 stage message (see terrazzo.runtime.wire)."""
    return struct.pack(
        "<4sHHIIIqqqdd", b"TZW\x02", count, present, id_len, extra, table, 0, 0, 0, 0, 0
    )


def _entry(name: str, datatype: str, shape: tuple[int, ...], nbytes: int) -> bytes:
    n, d = name.encode(), datatype.encode()
    return struct.pack(f"<HBBQ{len(shape)}q", len(n), len(d), len(shape), nbytes, *shape) + n + d


def test_header_keys_travel_as_binary_fields_and_others_as_json() -> None:
    header = {"id": "r-é", "priority": 3, "timeout": 250, "compute_s": 1.5e-6, "queue_s": 0.0}
    got, _ = decode(encode(header, {}))
    assert got == header and isinstance(got["compute_s"], float)
    reply = {"compute_s": 2, "batch_size": 4, "note": [1, "a"], "priority": "high"}
    got, _ = decode(encode(reply, {}))
    assert got == {**reply, "compute_s": 2.0}  # the unusual ones went as JSON, unchanged
    plain = encode({"id": "x", "priority": 1}, {})
    assert b"{" not in plain  # no JSON when only the known keys are sent
    assert decode(encode({}, {}))[0] == {}


@pytest.mark.parametrize(
    ("msg", "needle"),
    [
        (b"XXXX" + bytes(60), "not a Terrazzo stage call"),
        (b"TZ", "shorter than its prefix"),
        (b"TZW\x02" + bytes(8), "shorter than its prefix"),
        (_prefix(id_len=99), "overruns the message"),
        (_prefix(extra=2) + b"{x", "not valid"),
        (_prefix(count=1, table=5) + _entry("x", "FP32", (2,), 8)[:5], "table is not valid"),
        (_prefix(count=1, table=20) + _entry("x", "FP32", (2,), 8)[:20], "table is not valid"),
    ],
)
def test_malformed_messages_fail_in_one_line(msg: bytes, needle: str) -> None:
    with pytest.raises(WireError, match=needle.replace("(", r"\(")) as e:
        decode(msg)
    assert "\n" not in str(e.value)


def test_another_wire_version_fails_in_one_line_naming_both_versions() -> None:
    head = json.dumps({"t": [["x", "FP32", [2], 8]]}).encode()
    v1 = struct.pack("<4sI", b"TZW1", len(head)) + head + bytes(8)  # what version 1 sent
    for msg, version in ((v1, 1), (b"TZW\x03" + bytes(80), 3)):
        with pytest.raises(WireError) as e:
            decode_arrays(msg)
        text = str(e.value)
        assert f"wire version {version}, this side reads version 2" in text
        assert "different Terrazzo releases" in text and "\n" not in text


def test_byte_counts_are_checked() -> None:
    table = _entry("x", "FP32", (3,), 8)
    msg = _prefix(count=1, table=len(table)) + table + b"\0" * 8
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
