"""ONNX-level rewrites applied after the safety checks and before TVM's ONNX importer.

* ``ConstantOfShape`` whose shape input is a constant is folded into a ``Constant`` node
  (when small). TVM 0.27's converter lowers it to ``broadcast_to(value, shape)`` with the
  1-element ``value`` tensor, which fails for an empty shape (a scalar result: the ONNX
  spec says the output then has rank 0). The torch ONNX exporter emits exactly that for
  the causal masks of GPT-2 and Llama.
* ``Constant`` nodes written with ``value_float(s)``/``value_int(s)`` become ``value``
  tensors, the only form TVM 0.27 reads.
"""

from __future__ import annotations

from typing import Any

_MAX_FOLD_ELEMENTS = 1 << 16


def _constant_values(model: Any) -> dict[str, Any]:
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def fold_constant_of_shape(model: Any) -> int:
    """Replace ConstantOfShape nodes with constant shapes by Constant nodes, in place.

    Returns:
        The number of nodes replaced.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    consts = _constant_values(model)
    replaced = 0
    for i, n in enumerate(list(model.graph.node)):
        if n.op_type != "ConstantOfShape" or n.domain not in ("", "ai.onnx") or not n.input:
            continue
        shape = consts.get(n.input[0])
        if shape is None:
            continue
        dims = tuple(int(d) for d in np.asarray(shape).reshape(-1))
        if int(np.prod(dims, dtype=np.int64)) > _MAX_FOLD_ELEMENTS:
            continue
        value = np.zeros((1,), dtype=np.float32)
        for a in n.attribute:
            if a.name == "value":
                value = numpy_helper.to_array(a.t)
        full = np.full(dims, value.reshape(-1)[0], dtype=value.dtype)
        node = helper.make_node(
            "Constant", [], list(n.output), name=n.name, value=numpy_helper.from_array(full)
        )
        model.graph.node.remove(n)
        model.graph.node.insert(i, node)
        consts[n.output[0]] = full
        replaced += 1
    return replaced


_CONSTANT_FORMS = {
    "value_float": ("f", "float32", False),
    "value_floats": ("floats", "float32", True),
    "value_int": ("i", "int64", False),
    "value_ints": ("ints", "int64", True),
}


def normalise_constants(model: Any) -> int:
    """Rewrite ``Constant`` nodes given as ``value_float(s)``/``value_int(s)`` to a ``value`` tensor.

    TVM 0.27's importer only reads the ``value`` attribute ("no value in Constant"); the
    bodies of ``If``/``Loop``/``Scan`` are rewritten too.

    Returns:
        The number of nodes rewritten.
    """
    return _normalise_constants_in(model.graph)


def _normalise_constants_in(graph: Any) -> int:
    import numpy as np
    from onnx import helper, numpy_helper

    count = 0
    for n in graph.node:
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                count += _normalise_constants_in(sub)
    for i, n in enumerate(list(graph.node)):
        if n.op_type != "Constant" or n.domain not in ("", "ai.onnx") or len(n.attribute) != 1:
            continue
        attr = n.attribute[0]
        form = _CONSTANT_FORMS.get(attr.name)
        if form is None:
            continue
        field, dtype, is_list = form
        raw = getattr(attr, field)
        arr = np.asarray(list(raw) if is_list else raw, dtype=dtype)
        node = helper.make_node(
            "Constant", [], list(n.output), name=n.name, value=numpy_helper.from_array(arr)
        )
        graph.node.remove(n)
        graph.node.insert(i, node)
        count += 1
    return count


# Ops TVM 0.27's importer accepts a shape value (a Relax ShapeExpr, what ``Shape`` gives) for.
_SHAPE_OK = {
    "Reshape", "Resize", "ConstantOfShape", "Gather", "Slice", "Shape", "Expand", "Concat",
    "Equal", "Where", "Cast", "CastLike", "Squeeze",
}  # fmt: skip
# Of those, the ones whose output is again a shape value when an input is.
_SHAPE_PASSES = {"Gather", "Slice", "Concat", "Squeeze"}


def cast_shape_values(model: Any) -> int:
    """Insert ``Cast(to=int64)`` where a ``Shape`` result feeds an op that needs a tensor.

    TVM 0.27 keeps ``Shape``'s result as a ShapeExpr and refuses it as the input of any op
    outside a short list ("Node cannot handle ShapeExpr inputs"), e.g. ``Div`` in the
    expanded Attention functions; its ``Cast`` turns a ShapeExpr into an int64 tensor, and is
    a no-op on a tensor that already is one (the over-approximation below is harmless).
    A ``Concat`` of shape values and tensors fails too: its shape inputs are cast as well, and
    so is a shape value that is a graph output.

    Returns:
        The number of Cast nodes inserted.
    """
    from onnx import TensorProto, helper

    shape_like: set[str] = set()
    inserted = 0
    for n in list(model.graph.node):
        if n.domain not in ("", "ai.onnx"):
            continue
        if n.op_type == "Shape":
            shape_like.update(n.output)
            continue
        mixed = n.op_type == "Concat" and not all(i in shape_like for i in n.input)
        if n.op_type in _SHAPE_OK and not mixed:
            if n.op_type in _SHAPE_PASSES and any(i in shape_like for i in n.input):
                shape_like.update(n.output)
            continue
        for k, name in enumerate(list(n.input)):
            if name not in shape_like:
                continue
            cast_out = f"{name}__terrazzo_i64_{inserted}"
            cast = helper.make_node("Cast", [name], [cast_out], to=TensorProto.INT64)
            pos = list(model.graph.node).index(n)
            model.graph.node.insert(pos, cast)
            n.input[k] = cast_out
            inserted += 1
    # A graph output must be a tensor too: the producer writes a renamed value, a Cast
    # writes the output's name.
    outputs = {o.name for o in model.graph.output}
    for n in list(model.graph.node):
        for k, name in enumerate(list(n.output)):
            if name in outputs and name in shape_like:
                inner = f"{name}__terrazzo_shape"
                n.output[k] = inner
                pos = list(model.graph.node).index(n) + 1
                cast = helper.make_node("Cast", [inner], [name], to=TensorProto.INT64)
                model.graph.node.insert(pos, cast)
                inserted += 1
    return inserted
