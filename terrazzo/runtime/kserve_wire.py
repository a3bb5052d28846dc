"""Runtime: the gateway's KServe v2 ``ModelInfer`` read and written around its raw tensor bytes.

Protobuf's Python API copies a ``raw_input_contents`` entry when the message is parsed, again
each time the entry is read, and the reply's ``raw_output_contents`` once when appended and once
when serialised: four copies of every tensor that a bare bytes call does not make (1 MiB: the
gateway's whole overhead over a bare echo). Here the gateway's ``ModelInfer`` is registered with
its own (de)serialisers:

- ``parse_infer_request`` walks the top-level fields of a large request, keeps each
  ``raw_input_contents`` entry as a zero-copy ``memoryview`` of the received message and parses
  only the rest (names, shapes, parameters) with protobuf: a ``LeanInferRequest`` that reads like
  the ``ModelInferRequest`` it stands for. Small requests (below ``LEAN_MIN_BYTES``), requests
  that name shared memory, and anything the walk does not understand are parsed by protobuf as
  before (so malformed messages fail as they always did).
- ``encode_response`` serialises a ``ModelInferResponse`` that holds everything but the raw
  outputs and appends the outputs as field 6 records (tag, length, bytes), which protobuf reads as
  the repeated field: one copy of each output in all. The gateway answers ``ModelInfer`` that way
  when its servicer has ``model_infer_raw`` (``Gateway``); other servicers' replies are
  serialised by protobuf.

Field numbers are those of grpc_service.proto (``ModelInferRequest.raw_input_contents = 7``,
``ModelInferResponse.raw_output_contents = 6``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc

from terrazzo.runtime.protos import grpc_service_pb2 as pb

__all__ = [
    "LEAN_MIN_BYTES",
    "LeanInferRequest",
    "encode_response",
    "model_infer_handler",
    "parse_infer_request",
]

# Below this a request is parsed by protobuf in C (its copies cost less than walking the fields
# in Python, ~3 µs).
LEAN_MIN_BYTES = 32 << 10
_RAW_INPUT_FIELD = 7
_RAW_OUTPUT_TAG = bytes([6 << 3 | 2])  # field 6, length-delimited
_SHM_KEY = "shared_memory_region"


class LeanInferRequest:
    """A ``ModelInferRequest`` whose ``raw_input_contents`` are views of the received message.

    Attributes other than ``raw_input_contents`` and ``ByteSize`` are those of ``message``, the
    request parsed without its raw contents.
    """

    __slots__ = ("_message", "raw_input_contents")

    def __init__(self, message: Any, raw_input_contents: list[memoryview]):
        self._message = message
        self.raw_input_contents = raw_input_contents

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)

    def ByteSize(self) -> int:  # noqa: N802  protobuf's name
        """Bytes of the message as received, raw contents included (framing aside)."""
        return int(self._message.ByteSize()) + sum(len(r) for r in self.raw_input_contents)

    def full(self) -> Any:
        """The whole request as a ``ModelInferRequest`` (copies the raw contents)."""
        out = pb.ModelInferRequest()  # type: ignore[attr-defined]
        out.CopyFrom(self._message)
        out.raw_input_contents.extend(bytes(r) for r in self.raw_input_contents)
        return out


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    b = data[pos]
    if b < 0x80:
        return b, pos + 1
    value, shift = b & 0x7F, 7
    while True:
        pos += 1
        b = data[pos]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos + 1
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _split_raw(data: bytes) -> tuple[bytes, list[memoryview]]:
    """(the message without field 7, views of field 7's entries); ValueError/IndexError when the
    top level is not a well-formed sequence of fields."""
    view = memoryview(data)
    size = len(data)
    keep: list[memoryview] = []
    raws: list[memoryview] = []
    pos = kept_to = 0
    while pos < size:
        start = pos
        key, pos = _varint(data, pos)
        kind = key & 7
        if kind == 2:
            length, pos = _varint(data, pos)
            end = pos + length
            if end > size:
                raise ValueError("field overruns the message")
            if key >> 3 == _RAW_INPUT_FIELD:
                keep.append(view[kept_to:start])
                raws.append(view[pos:end])
                kept_to = end
            pos = end
        elif kind == 0:
            _, pos = _varint(data, pos)
        elif kind == 1:
            pos += 8
        elif kind == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {kind} at the top level")
    if pos != size:
        raise ValueError("last field overruns the message")
    keep.append(view[kept_to:])
    return b"".join(keep), raws


def parse_infer_request(data: bytes) -> Any:
    """A received ``ModelInferRequest``: a ``LeanInferRequest`` when it is large and plain, else
    the protobuf message (see the module docstring). Raises protobuf's DecodeError when
    ``data`` is not a ModelInferRequest."""
    parse = pb.ModelInferRequest.FromString  # type: ignore[attr-defined]
    if len(data) < LEAN_MIN_BYTES:
        return parse(data)
    try:
        rest, raws = _split_raw(data)
    except (ValueError, IndexError):
        return parse(data)  # protobuf says what is wrong, as before
    message = parse(rest)
    if not raws or any(_SHM_KEY in t.parameters for t in message.inputs):
        return parse(data)  # the gateway rewrites shared-memory requests as protobuf messages
    return LeanInferRequest(message, raws)


def _length(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_response(response: Any, raw_outputs: Sequence[bytes | memoryview]) -> bytes:
    """``response`` (a ModelInferResponse without raw outputs) serialised with ``raw_outputs``
    appended as its ``raw_output_contents``: each output is copied once, into the result."""
    parts: list[bytes | memoryview] = [response.SerializeToString()]
    for raw in raw_outputs:
        parts.append(_RAW_OUTPUT_TAG + _length(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _serialize_response(response: Any) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


def _defined_by(cls: type, name: str) -> type | None:
    return next((c for c in cls.__mro__ if name in vars(c)), None)


def model_infer_handler(servicer: Any) -> grpc.RpcMethodHandler:
    """The ``ModelInfer`` handler of a KServe servicer with the lean (de)serialisers: it calls
    ``servicer.model_infer_raw`` (returning serialised bytes) when the class that defines it also
    defines the ``ModelInfer`` in use (a subclass overriding ``ModelInfer`` keeps its own), else
    ``servicer.ModelInfer``."""
    cls = type(servicer)
    infer: Callable[[Any, Any], Any] = servicer.ModelInfer
    owner = _defined_by(cls, "model_infer_raw")
    if owner is not None and owner is _defined_by(cls, "ModelInfer"):
        infer = servicer.model_infer_raw
    return grpc.unary_unary_rpc_method_handler(
        infer,
        request_deserializer=parse_infer_request,
        response_serializer=_serialize_response,
    )
