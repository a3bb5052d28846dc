"""Runtime: the gateway→worker stage-call format: tensors as raw bytes behind a small header, no protobuf.

The client-facing protocol is KServe v2 (protobuf). Between the gateway and its own stage workers
nothing needs protobuf: re-serialising every tensor into a ``ModelInferRequest`` and parsing it
again on the worker cost two extra copies each way (16 MiB: 3.4× a bare grpcio call). A stage
call is one gRPC unary call on ``STAGE_METHOD`` whose request and response are plain ``bytes``
(grpc's generic handlers with no (de)serialiser), laid out as::

    b"TZW1" | u32 header length | JSON header | tensor 0 bytes | tensor 1 bytes | ...

The header is ``{"t": [[name, datatype, shape, nbytes], ...], ...}`` plus free keys (``id``,
``stage``, the forwarded request parameters ``priority`` / ``timeout``, and in a reply
``compute_s``, ``queue_s``, ``batch_size``). ``encode`` joins the header and the tensors'
buffers in one copy (numpy arrays are passed by their buffer, never ``tobytes()`` first);
``decode`` returns zero-copy views into the received message (``memoryview`` slices, and
read-only ``np.frombuffer`` arrays on the worker).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from terrazzo.runtime.tensors import (
    TensorError,
    WireTensor,
    check_raw_size,
    from_numpy,
    numpy_dtype,
    to_numpy,
)

__all__ = [
    "MAGIC",
    "STAGE_METHOD",
    "STAGE_SERVICE",
    "WireError",
    "decode",
    "decode_arrays",
    "encode",
    "encode_arrays",
    "tensor_view",
]

MAGIC = b"TZW1"
STAGE_SERVICE = "terrazzo.Stage"
STAGE_METHOD = f"/{STAGE_SERVICE}/Infer"
_PREFIX = struct.Struct("<4sI")


class WireError(TensorError):
    """A stage-call message is malformed (bad magic, header or byte counts)."""


Buffer = bytes | bytearray | memoryview
# one encoder and decoder for every message (``json.dumps`` with separators builds an encoder
# per call); the header is built here from plain values, so no cycle check is needed
_dumps = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
_loads = json.JSONDecoder().decode


def encode(header: Mapping[str, Any], tensors: Mapping[str, WireTensor]) -> bytes:
    """One message: ``header`` (JSON-able) plus ``tensors`` (name -> WireTensor) in order."""
    meta = dict(header)
    meta["t"] = [[n, t.datatype, list(t.shape), len(t.raw)] for n, t in tensors.items()]
    head = _dumps(meta).encode()
    return b"".join([_PREFIX.pack(MAGIC, len(head)), head, *(t.raw for t in tensors.values())])


_V2_OF_DTYPE: dict[np.dtype, str] = {}  # numpy dtype -> KServe datatype, filled on first use


def _datatype(dtype: np.dtype) -> str:
    v2 = _V2_OF_DTYPE.get(dtype)
    if v2 is None:
        v2 = _V2_OF_DTYPE[dtype] = from_numpy(np.empty(0, dtype)).datatype
    return v2


def tensor_view(array: np.ndarray) -> WireTensor:
    """``tensors.from_numpy`` without the copy: a numeric little-endian C-contiguous array's
    ``raw`` is a view of its memory (so the array must not be written while the view is used);
    other arrays (BYTES, big-endian, strided) are encoded by ``from_numpy``."""
    arr = array if isinstance(array, np.ndarray) else np.asarray(array)
    if arr.dtype.kind in "OSU" or arr.dtype.byteorder == ">" or not arr.flags.c_contiguous:
        return from_numpy(arr)
    shape = tuple(int(d) for d in arr.shape)
    return WireTensor(_datatype(arr.dtype), shape, arr.reshape(-1).view(np.uint8).data)  # type: ignore[arg-type]


def encode_arrays(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    """Like ``encode`` for numpy arrays: numeric arrays go in by their buffer (one copy in all)."""
    meta = dict(header)
    specs: list[list[Any]] = []
    parts: list[Any] = [b"", b""]
    for name, a in arrays.items():
        arr = a if isinstance(a, np.ndarray) else np.asarray(a)
        if arr.dtype.kind in "OSU" or arr.dtype.byteorder == ">":
            w = from_numpy(arr)
            specs.append([name, w.datatype, list(w.shape), len(w.raw)])
            parts.append(w.raw)
            continue
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        specs.append([name, _datatype(arr.dtype), list(arr.shape), arr.nbytes])
        parts.append(arr.data.cast("B") if arr.size else b"")
    meta["t"] = specs
    head = _dumps(meta).encode()
    parts[0], parts[1] = _PREFIX.pack(MAGIC, len(head)), head
    return b"".join(parts)


def decode(data: Buffer) -> tuple[dict[str, Any], dict[str, WireTensor]]:
    """(header, name -> WireTensor whose ``raw`` is a memoryview into ``data``).

    Raises:
        WireError: bad magic, header, or tensor byte counts that do not add up.
    """
    view = memoryview(data)
    if len(view) < _PREFIX.size:
        raise WireError(f"stage message of {len(view)} bytes is shorter than its prefix")
    magic, hlen = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise WireError(f"stage message starts with {bytes(magic)!r}, not {MAGIC!r}")
    start = _PREFIX.size + hlen
    if start > len(view):
        raise WireError(f"stage message header of {hlen} bytes overruns the message")
    try:
        header = _loads(str(view[_PREFIX.size : start], "utf-8"))
        specs = header.pop("t")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise WireError(f"stage message header is not valid: {e}") from None
    out: dict[str, WireTensor] = {}
    pos = start
    for name, datatype, shape, nbytes in specs:
        end = pos + int(nbytes)
        if end > len(view):
            raise WireError(f"tensor {name!r} ({nbytes} bytes) overruns the stage message")
        out[str(name)] = WireTensor(str(datatype), tuple(int(d) for d in shape), view[pos:end])  # type: ignore[arg-type]
        pos = end
    if pos != len(view):
        raise WireError(f"{len(view) - pos} trailing bytes after the tensors of a stage message")
    return header, out


def decode_arrays(data: Buffer) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, name -> numpy array): zero-copy read-only views for numeric datatypes.

    Raises:
        WireError / TensorError: malformed message, or a tensor whose bytes do not match its
            datatype and shape.
    """
    header, tensors = decode(data)
    arrays: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        if t.datatype == "BYTES":
            raw = bytes(t.raw)
            check_raw_size(name, t.datatype, t.shape, raw)
            arrays[name] = to_numpy(name, WireTensor(t.datatype, t.shape, raw))
            continue
        dtype = numpy_dtype(t.datatype)
        count = 1
        for d in t.shape:
            count *= d
        if count * dtype.itemsize != len(t.raw):
            check_raw_size(name, t.datatype, t.shape, t.raw)  # raises, naming the tensor
        arrays[name] = np.frombuffer(t.raw, dtype=dtype).reshape(t.shape)
    return header, arrays
