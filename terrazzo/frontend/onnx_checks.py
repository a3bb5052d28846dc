"""Safety and support checks run on an ONNX file before any converter touches it (frontend entry).

Order matters: the file is parsed without external data, every external-data reference is
validated with ``os.lstat`` (no ``..``, no absolute names, no symlinks, no hard links,
regular files inside the model's folder), and only then is data loaded. Unsupported
operators are collected over the whole model (subgraphs included) and reported once.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from pathlib import Path
from typing import Any

from terrazzo.errors import FrontendError, UnsupportedOpError


def load_model_safely(path: str | os.PathLike[str]) -> Any:
    """Parse an ONNX file, validate its external data references, then load that data.

    Args:
        path: the ``.onnx`` file.

    Returns:
        An ``onnx.ModelProto`` with all tensor data in memory.

    Raises:
        FrontendError: missing file, not ONNX, truncated, or unsafe external data.
    """
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.exists():
        raise FrontendError(f"model file {str(p)!r} does not exist")
    if not p.is_file():
        raise FrontendError(f"model path {str(p)!r} is not a regular file")
    raw = p.read_bytes()
    if not raw:
        raise FrontendError(f"{p.name}: file is empty, expected an ONNX model")
    try:
        model = onnx.ModelProto.FromString(raw)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise FrontendError(
            f"{p.name}: not a valid ONNX model (protobuf parse failed: {str(e).splitlines()[0]}); "
            "the file may be truncated or of another format"
        ) from None
    if not model.HasField("graph") or model.ir_version <= 0:
        raise FrontendError(f"{p.name}: not an ONNX model (no graph or ir_version in the file)")
    base = p.resolve().parent
    refs = list(_external_refs(model))
    for tensor_name, location in refs:
        check_external_location(base, location, tensor_name, p.name)
    if refs:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(base))
        except Exception as e:  # onnx raises bare ValueErrors/OSErrors here
            raise FrontendError(f"{p.name}: cannot load external data: {e}") from None
    check_tensor_data(model, p.name)
    return model


# Types packed two elements per byte (raw_data) or per int32_data entry.
_PACKED_4BIT_NAMES = ("INT4", "UINT4", "FLOAT4E2M1")
_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")


def _held_elements(t: Any) -> tuple[int, int]:
    """(elements held, elements per storage unit) of a TensorProto's in-memory data."""
    import numpy as np
    import onnx

    dt = t.data_type
    packed = dt in {getattr(onnx.TensorProto, n, -1) for n in _PACKED_4BIT_NAMES}
    complex_ = dt in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128)
    if t.raw_data:
        if packed:
            return 2 * len(t.raw_data), 2
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dt)).itemsize
        except (KeyError, TypeError, ValueError):
            return -1, 1
        return (len(t.raw_data) // itemsize if len(t.raw_data) % itemsize == 0 else -1), 1
    held = sum(len(getattr(t, f)) for f in _FIELDS)
    if complex_:
        return held // 2, 1
    return (2 * held, 2) if packed else (held, 1)


def check_tensor_data(model: Any, model_name: str) -> None:
    """Refuse a tensor (initializer or Constant) whose data does not match its declared shape.

    A declared ``[2**20, 2**20]`` with no data would otherwise reach the converter (a reshape
    ValueError) or an allocation of the declared size.

    Raises:
        FrontendError: naming the tensor, its declared shape and the elements it holds.
    """
    import math

    from onnx.external_data_helper import _get_all_tensors

    for t in _get_all_tensors(model):
        dims = list(t.dims)
        where = f"{model_name}: tensor {t.name!r} declared {dims}"
        if any(d < 0 for d in dims):
            raise FrontendError(f"{where}: negative dimensions")
        want = math.prod(dims)
        held, unit = _held_elements(t)
        # packed 4-bit data rounds the element count up to a whole storage unit
        if held < 0 or not (want <= held < want + unit):
            have = "data of another size" if held < 0 else f"{held} elements of data"
            raise FrontendError(
                f"{where} ({want} elements) but holds {have}; the file is truncated or crafted"
            )


def _external_refs(model: Any) -> list[tuple[str, str]]:
    from onnx.external_data_helper import _get_all_tensors

    out = []
    for t in _get_all_tensors(model):
        if t.data_location == 1:  # onnx.TensorProto.EXTERNAL
            info = {e.key: e.value for e in t.external_data}
            out.append((t.name, info.get("location", "")))
    return out


def check_external_location(base: Path, location: str, tensor: str, model_name: str) -> Path:
    """Validate one external-data location relative to the model's folder ``base``.

    Rejects empty, absolute and ``..`` names, symlinks anywhere on the path, hard-linked
    files (``st_nlink > 1``), non-regular files and paths resolving outside ``base``.

    Returns:
        The validated file path.
    """
    where = f"{model_name}: external data of tensor {tensor!r} ({location!r})"
    if not location:
        raise FrontendError(f"{where}: no location given")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location[:3]:
        raise FrontendError(
            f"{where}: absolute paths are not allowed; expected a file beside the model"
        )
    parts = Path(location).parts
    if any(part == ".." for part in parts):
        raise FrontendError(
            f"{where}: '..' leaves the model's folder; expected a file beside the model"
        )
    cur = base
    for part in parts:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            raise FrontendError(f"{where}: file not found") from None
        if stat.S_ISLNK(st.st_mode):
            raise FrontendError(f"{where}: {cur.name!r} is a symbolic link; links are not allowed")
    if not stat.S_ISREG(st.st_mode):
        raise FrontendError(f"{where}: not a regular file")
    if st.st_nlink > 1:
        raise FrontendError(
            f"{where}: file has {st.st_nlink} hard links; hard links are not allowed"
        )
    resolved = cur.resolve()
    if base not in resolved.parents:
        raise FrontendError(f"{where}: resolves outside the model's folder")
    return resolved


def _all_nodes(graph: Any) -> list[Any]:
    nodes = []
    for n in graph.node:
        nodes.append(n)
        for a in n.attribute:
            if a.g is not None and a.HasField("g"):
                nodes.extend(_all_nodes(a.g))
            for g in a.graphs:
                nodes.extend(_all_nodes(g))
    return nodes


def check_supported_ops(model: Any, where: str = "") -> None:
    """Raise one UnsupportedOpError listing every op type (with counts) TVM's converter lacks."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = set(_get_convert_map()) | {"Constant", "If"}
    missing: Counter[str] = Counter()
    for n in _all_nodes(model.graph):
        domain = n.domain if n.domain not in ("", "ai.onnx") else ""
        key = n.op_type if not domain else f"{domain}.{n.op_type}"
        if n.op_type not in known or domain not in ("", "com.microsoft"):
            missing[key] += 1
    if missing:
        sets = ", ".join(
            f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import if o.version
        )
        raise UnsupportedOpError(missing.elements(), where=f"{where} (opset {sets})")
