"""The gateway's ModelInfer around raw tensor bytes (terrazzo.runtime.kserve_wire): large requests
keep their raw contents as views of the received message, replies written by hand parse as the
protobuf message they stand for, and anything unusual is left to protobuf."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from terrazzo.runtime.kserve_wire import (
    LEAN_MIN_BYTES,
    LeanInferRequest,
    encode_response,
    model_infer_handler,
    parse_infer_request,
)
from terrazzo.runtime.protos import grpc_service_pb2 as pb


def _request(raws: list[bytes]) -> pb.ModelInferRequest:  # type: ignore[name-defined]
    req = pb.ModelInferRequest(model_name="m", model_version="2", id="r-1")  # type: ignore[attr-defined]
    req.parameters["priority"].int64_param = 3
    req.parameters["note"].string_param = "é"
    for i, raw in enumerate(raws):
        req.inputs.add(name=f"x{i}", datatype="UINT8", shape=[len(raw)])
    req.outputs.add(name="y")
    req.raw_input_contents.extend(raws)
    return req


def test_large_request_keeps_its_raw_contents_as_views() -> None:
    rng = np.random.default_rng(0)
    raws = [rng.bytes(LEAN_MIN_BYTES + 5), b"", rng.bytes(300)]
    req = _request(raws)
    data = req.SerializeToString()
    got = parse_infer_request(data)
    assert isinstance(got, LeanInferRequest)
    assert (got.model_name, got.model_version, got.id) == ("m", "2", "r-1")
    assert got.parameters["priority"].int64_param == 3
    assert got.parameters["note"].string_param == "é"
    assert [t.name for t in got.inputs] == ["x0", "x1", "x2"] and got.outputs[0].name == "y"
    assert [bytes(r) for r in got.raw_input_contents] == raws
    assert np.shares_memory(  # no copy of the tensor: a view of the received message
        np.frombuffer(got.raw_input_contents[0], np.uint8), np.frombuffer(data, np.uint8)
    )
    assert got.full() == req
    # the message's bytes less each raw entry's tag and length (1 + 3, 1 + 1, 1 + 2 bytes)
    assert got.ByteSize() + 9 == len(data)


def test_small_shared_memory_and_malformed_requests_are_left_to_protobuf() -> None:
    small = _request([b"abc"])
    assert parse_infer_request(small.SerializeToString()) == small
    shm = _request([b"\0" * LEAN_MIN_BYTES])
    shm.inputs[0].parameters["shared_memory_region"].string_param = "r"
    got = parse_infer_request(shm.SerializeToString())
    assert type(got) is type(shm) and got == shm  # the gateway rewrites it as protobuf
    data = _request([b"\1" * LEAN_MIN_BYTES]).SerializeToString()
    with pytest.raises(DecodeError):
        parse_infer_request(data[:-1])  # the raw entry overruns: protobuf's own error
    with pytest.raises(DecodeError):
        parse_infer_request(b"\x0b" + data)  # a group start at the top level


@pytest.mark.parametrize("sizes", [(0,), (1, 127, 128), (16383, 16384), ((1 << 21) + 5, 7)])
def test_hand_written_reply_parses_as_the_protobuf_reply(sizes: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(sizes))
    raws: list[bytes | memoryview] = [rng.bytes(n) for n in sizes]
    raws[0] = memoryview(np.frombuffer(raws[0], np.uint8)).cast("B")
    resp = pb.ModelInferResponse(model_name="m", model_version="1", id="r")  # type: ignore[attr-defined]
    resp.parameters["compute_s"].double_param = 0.25
    for i, n in enumerate(sizes):
        resp.outputs.add(name=f"y{i}", datatype="UINT8", shape=[n])
    data = encode_response(resp, raws)
    got = pb.ModelInferResponse.FromString(data)  # type: ignore[attr-defined]
    assert [bytes(r) for r in got.raw_output_contents] == [bytes(r) for r in raws]
    assert len(resp.raw_output_contents) == 0  # the caller's message is not touched
    resp.raw_output_contents.extend(bytes(r) for r in raws)
    assert got == resp
    assert len(data) == resp.ByteSize()


def test_handler_answers_raw_unless_a_subclass_overrides_model_infer() -> None:
    class Front:
        def ModelInfer(self, request, context):  # noqa: N802
            return "pb"

        def model_infer_raw(self, request, context):
            return b"raw"

    class Custom(Front):
        def ModelInfer(self, request, context):  # noqa: N802
            return "custom"

    assert model_infer_handler(Front()).unary_unary(None, None) == b"raw"
    assert model_infer_handler(Custom()).unary_unary(None, None) == "custom"
    handler = model_infer_handler(Custom())
    assert handler.request_deserializer is parse_infer_request
    reply = pb.ModelInferResponse(id="x")  # type: ignore[attr-defined]
    assert handler.response_serializer(reply) == reply.SerializeToString()
    assert handler.response_serializer(b"as is") == b"as is"
