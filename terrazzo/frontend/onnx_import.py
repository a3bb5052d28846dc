"""ONNX frontend: a checked ``.onnx`` file → Relax (TVM's ONNX importer) → ir.Graph."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from terrazzo.errors import FrontendError
from terrazzo.frontend.onnx_checks import check_supported_ops, load_model_safely
from terrazzo.frontend.onnx_fixups import fold_constant_of_shape, normalise_constants
from terrazzo.frontend.onnx_rnn import register as register_rnn_converters
from terrazzo.frontend.relax_graph import to_graph, uniquify_names
from terrazzo.frontend.signature import keep_signature_names
from terrazzo.ir import Graph


def sanitize_name(name: str) -> str:
    """The Relax parameter name TVM's ONNX importer gives an ONNX input name."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name) if name else name


def _graph_inputs(model: Any) -> list[Any]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _input_specs(
    model: Any, shapes: dict[str, tuple[int, ...]] | None, where: str
) -> tuple[dict[str, list[int]], dict[str, str]]:
    import onnx

    shapes = dict(shapes or {})
    inputs = _graph_inputs(model)
    by_name = {i.name: i for i in inputs}
    for key in list(shapes):
        if key not in by_name:
            sane = {sanitize_name(n): n for n in by_name}
            if key in sane:
                shapes[sane[key]] = shapes.pop(key)
            else:
                raise FrontendError(
                    f"{where}: shapes= names input {key!r}, but the model's inputs are "
                    f"{', '.join(repr(n) for n in by_name)}"
                )
    shape_dict: dict[str, list[int]] = {}
    dtype_dict: dict[str, str] = {}
    for i in inputs:
        tt = i.type.tensor_type
        if not i.type.HasField("tensor_type"):
            raise FrontendError(f"{where}: input {i.name!r} is not a tensor")
        dtype_dict[i.name] = str(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        if i.name in shapes:
            fixed = [int(d) for d in shapes[i.name]]
            if len(fixed) != len(tt.shape.dim):
                raise FrontendError(
                    f"{where}: shapes= gives input {i.name!r} rank {len(fixed)}, the model says "
                    f"rank {len(tt.shape.dim)}"
                )
            shape_dict[i.name] = fixed
            continue
        dims = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                sym = d.dim_param or "?"
                example = "x".join(
                    str(x.dim_value) if x.HasField("dim_value") and x.dim_value > 0 else "1"
                    for x in tt.shape.dim
                )
                raise FrontendError(
                    f"{where}: input {i.name!r} has a dynamic dimension {sym!r}; fix it with "
                    f"shapes={{{i.name!r}: ({example.replace('x', ', ')})}} "
                    f"(CLI: --shape {i.name}={example})"
                )
        shape_dict[i.name] = dims
    return shape_dict, dtype_dict


def from_onnx(
    path: str | os.PathLike[str], shapes: dict[str, tuple[int, ...]] | None = None
) -> Graph:
    """Import an ONNX model as an ir.Graph (with its Relax module in ``relax_mod``).

    Args:
        path: the ``.onnx`` file; external data must sit in the same folder.
        shapes: fixed shapes for inputs with dynamic dimensions, by input name.

    Returns:
        A verified model graph.

    Raises:
        FrontendError: missing/corrupt/unsafe file, dynamic shapes, converter failure.
        UnsupportedOpError: operators TVM's ONNX importer does not have (all listed).
    """
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx as tvm_from_onnx

    p = Path(path)
    model = load_model_safely(p)
    register_rnn_converters()
    check_supported_ops(model, where=p.name)
    shape_dict, dtype_dict = _input_specs(model, shapes, p.name)
    normalise_constants(model)
    fold_constant_of_shape(model)
    try:
        mod = tvm_from_onnx(model, shape_dict=shape_dict, dtype_dict=dtype_dict)
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.Normalize()(mod)
    except FrontendError:
        raise
    except Exception as e:  # TVM raises many types; report one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise FrontendError(f"{p.name}: TVM's ONNX importer failed: {first[:300]}") from None
    mod = uniquify_names(mod)
    mod = keep_signature_names(
        mod, [i.name for i in _graph_inputs(model)], [o.name for o in model.graph.output]
    )
    name = model.graph.name or p.stem
    return to_graph(mod, name=p.stem or name, attrs={"source": "onnx", "file": p.name})
