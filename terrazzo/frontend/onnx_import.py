"""ONNX frontend: a checked ``.onnx`` file → Relax (TVM's ONNX importer) → ir.Graph."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from terrazzo.errors import FrontendError, UnsupportedOpError
from terrazzo.frontend.onnx_checks import check_supported_ops, load_model_safely
from terrazzo.frontend.onnx_fixups import (
    cast_shape_values,
    fold_constant_of_shape,
    normalise_constants,
)
from terrazzo.frontend.onnx_fold import (
    fold_constants,
    fold_symbolic_reshapes,
    shape_only_inputs,
)
from terrazzo.frontend.relax_graph import to_graph, to_graph_symbolic, uniquify_names
from terrazzo.frontend.signature import keep_signature_names
from terrazzo.frontend.symbolic import resolve_shape_symbols
from terrazzo.ir import Graph

if TYPE_CHECKING:
    from terrazzo.frontend.onnx_guards import GuardedGraph


def sanitize_name(name: str) -> str:
    """The Relax parameter name TVM's ONNX importer gives an ONNX input name."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name) if name else name


def _graph_inputs(model: Any) -> list[Any]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _input_specs(
    model: Any, shapes: Any, where: str
) -> tuple[dict[str, list[Any]], dict[str, str], dict[str, tuple[int, int]], dict[str, list[str]]]:
    """TVM's ``shape_dict``/``dtype_dict`` for the model's inputs, with symbolic dimensions.

    A dimension the model leaves open (``dim_param`` or no size) becomes a ``tir.Var`` named
    after its ``dim_param`` (inputs sharing a ``dim_param`` share the symbol); ``shapes`` may
    fix it (``8``) or declare its range (``1..32``); undeclared ones get the default range
    (``terrazzo.ir.shapes.default_range``). Returns (shape_dict, dtype_dict, symbol → range,
    input → per-dimension symbol names, ``""`` for fixed).
    """
    import onnx
    import tvm

    from terrazzo.ir.shapes import ShapeSpecError, default_range, normalize_shapes

    decl = normalize_shapes(shapes)
    inputs = _graph_inputs(model)
    by_name = {i.name: i for i in inputs}
    for key in list(decl):
        if key not in by_name:
            sane = {sanitize_name(n): n for n in by_name}
            if key in sane:
                decl[sane[key]] = decl.pop(key)
            else:
                raise FrontendError(
                    f"{where}: shapes= names input {key!r}, but the model's inputs are "
                    f"{', '.join(repr(n) for n in by_name)}"
                )
    shape_dict: dict[str, list[Any]] = {}
    dtype_dict: dict[str, str] = {}
    ranges: dict[str, tuple[int, int]] = {}
    declared: dict[str, str] = {}  # symbol -> the input whose declaration set its range
    dim_names: dict[str, list[str]] = {}
    tir_vars: dict[str, Any] = {}
    for i in inputs:
        tt = i.type.tensor_type
        if not i.type.HasField("tensor_type"):
            raise FrontendError(f"{where}: input {i.name!r} is not a tensor")
        dtype_dict[i.name] = str(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        model_dims = list(tt.shape.dim)
        user = decl.get(i.name)
        if user is not None and len(user) != len(model_dims):
            raise FrontendError(
                f"{where}: shapes= gives input {i.name!r} rank {len(user)}, the model says "
                f"rank {len(model_dims)}"
            )
        dims: list[Any] = []
        names: list[str] = []
        for k, d in enumerate(model_dims):
            fixed = int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
            want = user[k] if user is not None else None
            if isinstance(want, int):
                dims.append(want)  # a declared size wins (as before)
                names.append("")
                continue
            if fixed is not None:
                if want is not None:
                    raise ShapeSpecError(
                        f"{where}: input {i.name!r} dimension {k} is fixed at {fixed} in the "
                        f"model; it cannot take the range {want[0]}..{want[1]}"
                    )
                dims.append(fixed)
                names.append("")
                continue
            sym = sanitize_name(d.dim_param) if d.dim_param else ""
            if not sym or not sym.isidentifier():
                sym = (
                    "batch"
                    if k == 0 and "batch" not in tir_vars
                    else f"{sanitize_name(i.name)}_d{k}"
                )
            rng = want if want is not None else default_range(k, sym)
            if sym in ranges and rng != ranges[sym]:
                if want is not None and sym in declared:
                    raise ShapeSpecError(
                        f"{where}: dimension {sym!r} is declared {ranges[sym][0]}..{ranges[sym][1]} "
                        f"by input {declared[sym]!r} and {rng[0]}..{rng[1]} by input {i.name!r}"
                    )
                if want is None:
                    rng = ranges[sym]
            ranges[sym] = rng
            if want is not None:
                declared[sym] = i.name
            if sym not in tir_vars:
                tir_vars[sym] = tvm.tirx.Var(sym, "int64")
            dims.append(tir_vars[sym])
            names.append(sym)
        shape_dict[i.name] = dims
        dim_names[i.name] = names
    return shape_dict, dtype_dict, ranges, dim_names


def plan_sizes_for(
    plan_shapes: Any,
    dim_names: dict[str, list[str]],
    ranges: dict[str, tuple[int, int]],
    where: str,
) -> dict[str, int]:
    """Symbol → planning size from ``plan_shapes`` (input → full shape; ``--plan-shape``);
    symbols it does not name plan at their range's upper bound."""
    from terrazzo.ir.shapes import ShapeSpecError, normalize_shapes

    sizes = {s: hi for s, (_, hi) in ranges.items()}
    for name, dims in normalize_shapes(plan_shapes).items():
        key = name if name in dim_names else {sanitize_name(n): n for n in dim_names}.get(name)
        if key is None:
            raise ShapeSpecError(
                f"{where}: plan shape names input {name!r}, but the model's inputs are "
                f"{', '.join(repr(n) for n in dim_names)}"
            )
        syms = dim_names[key]
        if len(dims) != len(syms):
            raise ShapeSpecError(
                f"{where}: plan shape for {key!r} has rank {len(dims)}, the input has {len(syms)}"
            )
        for sym, d in zip(syms, dims, strict=True):
            if isinstance(d, tuple):
                raise ShapeSpecError(f"{where}: plan shape for {key!r} must be sizes, not ranges")
            if sym:
                lo, hi = ranges[sym]
                if not lo <= d <= hi:
                    raise ShapeSpecError(
                        f"{where}: plan shape {sym}={d} for input {key!r} is outside the "
                        f"declared range {lo}..{hi}"
                    )
                sizes[sym] = int(d)
    return sizes


def _freeze_inputs(model: Any, values: Any, where: str) -> None:
    """Turn the named graph inputs into initializers holding ``values`` (in place)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    by_name = {i.name: i for i in _graph_inputs(model)}
    for name, value in dict(values).items():
        vi = by_name.get(name)
        if vi is None:
            raise FrontendError(
                f"{where}: constant_inputs names {name!r}, but the model's inputs are "
                f"{', '.join(repr(n) for n in by_name)}"
            )
        want = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        arr = np.asarray(value)
        if arr.dtype != want:
            raise FrontendError(
                f"{where}: constant_inputs[{name!r}] has dtype {arr.dtype}, the input is {want}"
            )
        model.graph.input.remove(vi)
        model.graph.initializer.append(numpy_helper.from_array(arr, name))


def _specialisation_hint(shape_keys: dict[str, list[str]]) -> str:
    """The refusal's advice when graph inputs only give shapes, axes or sizes: their value
    decides output shapes, so the build is a specialisation on that value."""
    if not shape_keys:
        return ""
    which = ", ".join(f"{n!r} ({'/'.join(ops)})" for n, ops in shape_keys.items())
    return (
        f"; input(s) {which} give shapes/axes/sizes at run time: compile a specialisation "
        "on their value with constant_inputs={name: value}, or import with "
        "from_onnx(guards=True) to keep them as inputs (build_cpu then builds one per value)"
    )


@overload
def from_onnx(
    path: str | os.PathLike[str],
    shapes: Any = None,
    plan_shapes: Any = None,
    constant_inputs: Any = None,
    *,
    guards: Literal[False] = False,
) -> Graph: ...


@overload
def from_onnx(
    path: str | os.PathLike[str],
    shapes: Any = None,
    plan_shapes: Any = None,
    constant_inputs: Any = None,
    *,
    guards: bool,
) -> Graph | GuardedGraph: ...


def from_onnx(
    path: str | os.PathLike[str],
    shapes: Any = None,
    plan_shapes: Any = None,
    constant_inputs: Any = None,
    *,
    guards: bool = False,
) -> Graph | GuardedGraph:
    """Import an ONNX model as an ir.Graph (with its Relax module in ``relax_mod``).

    Args:
        path: the ``.onnx`` file; external data must sit in the same folder.
        shapes: declared shapes by input name (``terrazzo.ir.shapes.normalize_shapes``): a
            size fixes a dimension, a ``(lo, hi)`` range keeps it symbolic; open dimensions
            not declared stay symbolic with the default range.
        plan_shapes: input name → the shape to plan for (default: each range's upper bound).
        constant_inputs: input name → the value it always has: the input becomes a constant
            (a specialisation: an input that gives a shape, axes or sizes must be one, as
            Terrazzo compiles static shapes).
        guards: when the import fails because inputs give shapes, axes, sizes, pads or
            scales at run time, return a ``GuardedGraph`` that keeps them as inputs and is
            specialised on their values at each call (``build_cpu`` caches a build per value;
            see ``onnx_guards``) instead of raising.

    Returns:
        A verified model graph; with ``guards``, a ``GuardedGraph`` where one is needed.

    Raises:
        FrontendError: missing/corrupt/unsafe file, bad shape declarations, converter failure.
        UnsupportedOpError: operators TVM's ONNX importer does not have (all listed).
    """
    p = Path(path)
    model = load_model_safely(p)
    if not guards:
        return _import(p, model, shapes, plan_shapes, constant_inputs)
    from terrazzo.frontend.onnx_guards import guarded_graph

    try:
        return _import(p, model, shapes, plan_shapes, constant_inputs)
    except FrontendError as e:
        fresh = load_model_safely(p)  # _import changed ``model`` in place
        found = guarded_graph(p, fresh, shapes, plan_shapes, str(e), constant_inputs)
        if found is None:
            raise
        if isinstance(e, UnsupportedOpError):
            # Only ops that fold away once the guards are constants (a window's size, ...).
            readers = {op for g in found.guards for op in g.readers}
            if not set(e.counts) <= readers:
                raise
        return found


def _import(p: Path, model: Any, shapes: Any, plan_shapes: Any, constant_inputs: Any) -> Graph:
    """``from_onnx`` without guards, on the loaded ``model`` (changed in place)."""
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx as tvm_from_onnx

    # lazily: onnx_ops subclasses TVM's ONNX converter base, and terrazzo.frontend is imported by
    # serving workers (agent runners) where onnx is deliberately unimportable
    from terrazzo.frontend.onnx_ops import current_op, install, reset_current_op

    if constant_inputs:
        _freeze_inputs(model, constant_inputs, p.name)
    install()
    shape_dict, dtype_dict, ranges, dim_names = _input_specs(model, shapes, p.name)
    sizes = plan_sizes_for(plan_shapes, dim_names, ranges, p.name)
    normalise_constants(model)
    fold_constants(model, shape_dict)  # before the op check: a folded op needs no converter
    fold_symbolic_reshapes(model, shape_dict)
    check_supported_ops(model, where=p.name)
    shape_keys = shape_only_inputs(model)
    fold_constant_of_shape(model)
    cast_shape_values(model)
    reset_current_op()
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    try:
        mod = tvm_from_onnx(model, shape_dict=shape_dict, dtype_dict=dtype_dict)
        reset_current_op()  # what follows is no longer one node's conversion
        if ranges:  # sizes computed from Shape at run time → expressions of the input symbols
            mod = resolve_shape_symbols(mod, ranges)
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.Normalize()(mod)
        if ranges:  # the decomposition lowers tensor_to_shape to a fresh symbol again
            mod = resolve_shape_symbols(mod, ranges)
    except FrontendError:
        raise
    except Exception as e:  # TVM raises many types; report one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        op = current_op()
        at = f" at op {op} (opset {opset})" if op else ""
        hint = _specialisation_hint(shape_keys)
        raise FrontendError(
            f"{p.name}: TVM's ONNX importer failed{at}: {first[:300]}{hint}"
        ) from None
    mod = uniquify_names(mod)
    mod = keep_signature_names(
        mod, [i.name for i in _graph_inputs(model)], [o.name for o in model.graph.output]
    )
    name = model.graph.name or p.stem
    attrs = {"source": "onnx", "file": p.name}
    if not ranges:
        return to_graph(mod, name=p.stem or name, attrs=attrs)
    return to_graph_symbolic(mod, p.stem or name, ranges, sizes, attrs)
