"""ONNX-level constant folding before TVM's importer: shapes and small constant chains.

TVM 0.27's ONNX importer keeps ``Shape(x)`` as a Relax shape value and handles only some
consumers of it; a size computed from it (``Range(0, Shape(x)[1])``, ``ConstantOfShape``,
``Expand``) becomes a fresh run-time symbol, and Terrazzo compiles static shapes (or the
input symbols of ``onnx_import``). Most such chains are not run-time values at all: when the
input shapes are fixed, ``Shape(x)`` is known, and so is everything computed from it and
from constants. :func:`fold_constants` evaluates those nodes here with onnx's reference
evaluator (the spec's own semantics) and puts ``Constant`` nodes in their place.

It folds a node when every input is an initializer, a ``Constant`` output, or an earlier
folded value, and each output is small (``max_elements``): shape arithmetic and index
tensors, never the weights (they stay initializers for the codegen). Random ops, ops with
subgraphs and other domains are left alone. ``Shape``/``Size`` fold when onnx's shape
inference (run with the declared input shapes) gives their input a fully static shape.

:func:`shape_only_inputs` names the graph inputs that only ever feed shape-like positions
(a Reshape's shape, a reduction's axes, Resize's sizes, ...): their value decides the output
shape, so a static build is a specialisation on that value; the importer says so when such
an input makes a conversion fail.
"""

from __future__ import annotations

from typing import Any

#: Largest folded output (elements): shape and index tensors, not weights.
MAX_FOLD_ELEMENTS = 1 << 16

_NO_FOLD = {
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
    "Multinomial", "If", "Loop", "Scan", "SequenceMap", "Constant",
}  # fmt: skip

#: op → input positions that give a shape, axes, sizes, pads or counts (not data).
SHAPE_POSITIONS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,),
    "Squeeze": (1,), "Unsqueeze": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 3),
    "Resize": (1, 2, 3), "Upsample": (1,), "TopK": (1,), "Split": (1,), "CumSum": (1,),
    "CumProd": (1,), "OneHot": (1,), "Range": (0, 1, 2), "ReduceSum": (1,), "ReduceMean": (1,),
    "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,), "ReduceL1": (1,),
    "ReduceL2": (1,), "ReduceLogSum": (1,), "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,),
    "CenterCropPad": (1,), "AffineGrid": (1,), "Col2Im": (1, 2), "EyeLike": (),
    "BlackmanWindow": (0,), "HannWindow": (0,), "HammingWindow": (0,), "DFT": (1, 2),
    "STFT": (1, 3), "MelWeightMatrix": (0, 1, 2), "TfIdfVectorizer": (),
}  # fmt: skip


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _static_shapes(model: Any, input_dims: dict[str, list[Any]]) -> dict[str, tuple[int, ...]]:
    """Fully static shapes of the model's values, by onnx shape inference on a light copy
    (graph inputs set to ``input_dims``; large initializers become typed inputs, so a
    model over protobuf's 2 GB limit can be inferred too)."""
    import onnx
    from onnx import helper

    light = onnx.ModelProto()
    if model.ByteSize() < (1 << 30):
        light.CopyFrom(model)
    else:
        _copy_without_data(model, light)
    g = light.graph
    for vi in g.input:
        dims = input_dims.get(vi.name)
        if dims is None or not vi.type.HasField("tensor_type"):
            continue
        shape = vi.type.tensor_type.shape
        for k, d in enumerate(dims):
            if isinstance(d, int) and k < len(shape.dim):
                shape.dim[k].Clear()
                shape.dim[k].dim_value = d
    big = [t for t in g.initializer if _numel(t.dims) > MAX_FOLD_ELEMENTS]
    for t in big:  # data is not needed for shapes
        g.initializer.remove(t)
        g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - no shapes is a safe answer (nothing folds)
        return {}
    out: dict[str, tuple[int, ...]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(int(d.dim_value) for d in dims)
    for t in model.graph.initializer:
        out[t.name] = tuple(int(d) for d in t.dims)
    return out


def _copy_without_data(model: Any, light: Any) -> None:
    """``light`` ← ``model`` with the initializers' data dropped (dims and type kept)."""
    g = model.graph
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    lg = light.graph
    lg.node.extend(g.node)
    lg.input.extend(g.input)
    lg.output.extend(g.output)
    lg.value_info.extend(g.value_info)
    for t in g.initializer:
        c = lg.initializer.add()
        c.name, c.data_type = t.name, t.data_type
        c.dims.extend(t.dims)
        if _numel(t.dims) <= MAX_FOLD_ELEMENTS:
            c.CopyFrom(t)


def _numel(dims: Any) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _evaluate(node: Any, values: list[Any], opset: int, domains: Any) -> list[Any] | None:
    """Outputs of one node on known inputs by onnx's reference evaluator, or None."""
    import numpy as np
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" if n else "" for k, n in enumerate(node.input)]
    feeds: dict[str, Any] = {}
    inputs = []
    for name, v in zip(names, values, strict=True):
        if not name:
            continue
        feeds[name] = v
        inputs.append(
            helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), list(np.shape(v))
            )
        )
    n2 = helper.make_node(node.op_type, names, [f"o{k}" for k in range(len(node.output))])
    n2.attribute.extend(node.attribute)
    outs = [helper.make_empty_tensor_value_info(f"o{k}") for k in range(len(node.output))]
    g = helper.make_graph([n2], "fold", inputs, outs)
    m = helper.make_model(g, opset_imports=list(domains))
    m.ir_version = 10
    try:
        got = ReferenceEvaluator(m).run(None, feeds)
    except Exception:  # noqa: BLE001 - the importer will see the node as it was
        return None
    res = []
    for a in got:
        if not isinstance(a, np.ndarray | np.generic):
            return None
        a = np.asarray(a)
        if a.dtype.kind in "OSU" or a.size > MAX_FOLD_ELEMENTS:
            return None
        numpy_helper.from_array(a)  # raises for a dtype ONNX cannot store
        res.append(a)
    return res


def known_values(model: Any) -> dict[str, Any]:
    """Small initializers and ``Constant`` ``value`` outputs, by name (numpy arrays); weights
    over ``MAX_FOLD_ELEMENTS`` are not copied (nothing folds from them)."""
    from onnx import numpy_helper

    out = {
        t.name: numpy_helper.to_array(t)
        for t in model.graph.initializer
        if _numel(t.dims) <= MAX_FOLD_ELEMENTS
    }
    for n in model.graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output:
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def fold_constants(model: Any, input_dims: dict[str, list[Any]], rounds: int = 3) -> int:
    """Fold shape computations and small constant chains into ``Constant`` nodes, in place.

    Args:
        model: the ``onnx.ModelProto`` (its ``Constant`` nodes in ``value`` form).
        input_dims: graph input → dims (an int for a fixed size, anything else is open).
        rounds: passes of shape inference + folding (a fold can make more shapes static).

    Returns:
        The number of nodes folded.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    opset = _opset(model)
    domains = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    total = 0
    for _ in range(rounds):
        values = known_values(model)
        small_ok = {k for k, v in values.items() if np.asarray(v).size <= MAX_FOLD_ELEMENTS}
        shapes: dict[str, tuple[int, ...]] | None = None
        folded = 0
        nodes = list(model.graph.node)
        for n in nodes:
            if n.domain not in ("", "ai.onnx") or n.op_type in _NO_FOLD or not n.output:
                continue
            got: list[Any] | None = None
            if n.op_type in ("Shape", "Size") and n.input:
                if shapes is None:
                    shapes = _static_shapes(model, input_dims)
                shp = shapes.get(n.input[0])
                if shp is None:
                    continue
                if n.op_type == "Size":
                    got = [np.asarray(_numel(shp), dtype=np.int64)]
                else:
                    attrs = {a.name: a.i for a in n.attribute}
                    r = len(shp)
                    start, end = int(attrs.get("start", 0)), int(attrs.get("end", r))
                    start, end = (min(max(s + r if s < 0 else s, 0), r) for s in (start, end))
                    got = [np.asarray(shp[start:end], dtype=np.int64)]
            else:
                ins = [i for i in n.input if i]
                if not ins or not all(i in values and i in small_ok for i in ins):
                    continue
                got = _evaluate(n, [values.get(i) if i else None for i in n.input], opset, domains)
            if got is None:
                continue
            pos = list(model.graph.node).index(n)
            model.graph.node.remove(n)
            for k, (name, arr) in enumerate(zip(n.output, got, strict=False)):
                if not name:
                    continue
                c = helper.make_node(
                    "Constant",
                    [],
                    [name],
                    name=f"{n.name or n.op_type}__folded{k}",
                    value=numpy_helper.from_array(arr, name),
                )
                model.graph.node.insert(pos, c)
                pos += 1
                values[name] = arr
                small_ok.add(name)
            folded += 1
        total += folded
        if not folded:
            break
    _drop_dead_constants(model)
    return total


def _drop_dead_constants(model: Any) -> None:
    """Remove ``Constant`` nodes nothing reads (left behind by folding)."""
    used = {o.name for o in model.graph.output}
    for n in model.graph.node:
        used.update(n.input)
        for a in n.attribute:  # subgraphs read outer values by name
            for sub in [a.g, *a.graphs]:
                for sn in sub.node:
                    used.update(sn.input)
    for n in list(model.graph.node):
        if n.op_type == "Constant" and n.output and n.output[0] not in used:
            model.graph.node.remove(n)


def shape_only_inputs(model: Any) -> dict[str, list[str]]:
    """Graph inputs read only at shape-like positions (:data:`SHAPE_POSITIONS`), with the
    ops that read them: their value fixes output shapes, so they are specialisation keys."""
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    readers: dict[str, list[tuple[str, bool]]] = {n: [] for n in names}
    for n in model.graph.node:
        for k, i in enumerate(n.input):
            if i in readers:
                readers[i].append((n.op_type, k in SHAPE_POSITIONS.get(n.op_type, ())))
    return {
        name: sorted({op for op, _ in uses})
        for name, uses in readers.items()
        if uses and all(ok for _, ok in uses)
    }


def _symbolic_shapes(model: Any, input_dims: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Shapes by onnx inference with the open input dimensions named (``dim_param`` = the
    symbol's name): each dim an int, a symbol name, or None."""
    import onnx

    light = onnx.ModelProto()
    if model.ByteSize() < (1 << 30):
        light.CopyFrom(model)
    else:
        _copy_without_data(model, light)
    for vi in light.graph.input:
        dims = input_dims.get(vi.name)
        if dims is None or not vi.type.HasField("tensor_type"):
            continue
        shape = vi.type.tensor_type.shape
        for k, d in enumerate(dims):
            if k >= len(shape.dim):
                break
            shape.dim[k].Clear()
            if isinstance(d, int):
                shape.dim[k].dim_value = d
            else:
                shape.dim[k].dim_param = str(d)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001
        return {}
    out: dict[str, list[Any]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        out[vi.name] = [
            int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None)
            for d in tt.shape.dim
        ]
    return out


def fold_symbolic_reshapes(model: Any, input_dims: dict[str, list[Any]]) -> int:
    """Give ``Reshape`` a constant target when its shape is computed from symbolic sizes.

    Exporters write ``x.view(B, -1, heads, d)`` as ``Concat(Unsqueeze(Gather(Shape(x), 0)),
    [-1, heads, d])``; with a symbolic batch TVM 0.27 cannot reshape to that run-time tensor.
    The sizes are tracked here as ints or symbol names (``Shape``/``Gather``/``Unsqueeze``/
    ``Squeeze``/``Concat``/``Cast``, onnx shape inference naming the symbols): an entry equal
    to the data's own dimension at that position becomes ``0`` (copy it, the spec's meaning
    when ``allowzero`` is 0), and a single remaining unknown becomes ``-1`` (inferred). A
    Reshape whose target cannot be written that way is left as it was.

    Returns:
        The number of Reshape nodes given a constant target.
    """
    import numpy as np
    from onnx import numpy_helper

    if not any(not isinstance(d, int) for dims in input_dims.values() for d in dims):
        return 0
    shapes = _symbolic_shapes(model, input_dims)
    consts = known_values(model)
    sym: dict[str, list[Any]] = {}

    def entries(name: str) -> list[Any] | None:
        if name in sym:
            return sym[name]
        v = consts.get(name)
        if v is not None and np.asarray(v).dtype.kind in "iu" and np.asarray(v).size <= 16:
            return [int(e) for e in np.asarray(v).reshape(-1)]
        return None

    scalar: set[str] = set()
    done = 0
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx") or not n.output:
            continue
        attrs = {a.name: a for a in n.attribute}
        out = n.output[0]
        if n.op_type == "Shape" and n.input[0] in shapes:
            full = shapes[n.input[0]]
            r = len(full)
            s = int(attrs["start"].i) if "start" in attrs else 0
            e = int(attrs["end"].i) if "end" in attrs else r
            s, e = (min(max(v + r if v < 0 else v, 0), r) for v in (s, e))
            sym[out] = list(full[s:e])
        elif n.op_type == "Gather" and n.input[0] in sym:
            idx = consts.get(n.input[1])
            if idx is None or int(attrs["axis"].i if "axis" in attrs else 0) != 0:
                continue
            src = sym[n.input[0]]
            flat = [int(i) for i in np.asarray(idx).reshape(-1)]
            try:
                sym[out] = [src[i] for i in flat]
            except IndexError:
                continue
            if np.asarray(idx).ndim == 0:
                scalar.add(out)
        elif n.op_type == "Slice" and n.input[0] in sym and len(n.input) >= 3:
            bounds = [consts.get(i) if i else None for i in n.input[1:5]]
            if any(b is None for b in bounds[:2]) or any(
                b is not None and np.asarray(b).size != 1 for b in bounds
            ):
                continue
            if bounds[2:] and bounds[2] is not None and int(np.asarray(bounds[2]).item()) != 0:
                continue
            step = (
                int(np.asarray(bounds[3]).item())
                if len(bounds) > 3 and bounds[3] is not None
                else 1
            )
            b0, b1 = (int(np.asarray(b).item()) for b in bounds[:2])
            sym[out] = list(sym[n.input[0]])[slice(b0, b1, step)]
        elif n.op_type in ("Unsqueeze", "Squeeze", "Cast", "Identity") and n.input[0] in sym:
            sym[out] = list(sym[n.input[0]])
            if n.op_type == "Squeeze" and len(sym[out]) == 1:
                scalar.add(out)
        elif n.op_type == "Concat" and any(i in sym for i in n.input):
            parts = [entries(i) for i in n.input]
            if all(p is not None for p in parts):
                sym[out] = [e for p in parts for e in p]  # type: ignore[union-attr]
        elif n.op_type == "Reshape" and len(n.input) > 1 and n.input[1] in sym:
            if "allowzero" in attrs and int(attrs["allowzero"].i):
                continue
            target, data = sym[n.input[1]], shapes.get(n.input[0])
            new: list[Any] = []
            unknown = 0
            for k, e in enumerate(target):
                if isinstance(e, int):
                    new.append(e)
                elif e is not None and data is not None and k < len(data) and data[k] == e:
                    new.append(0)
                else:
                    new.append(None)
                    unknown += 1
            if unknown > 1 or (unknown == 1 and -1 in new):
                continue
            arr = np.asarray([-1 if e is None else e for e in new], dtype=np.int64)
            name = f"{n.input[1]}__terrazzo_reshape{done}"
            model.graph.initializer.append(numpy_helper.from_array(arr, name))
            n.input[1] = name
            done += 1
    if done:
        _drop_dead_constants(model)
    return done
