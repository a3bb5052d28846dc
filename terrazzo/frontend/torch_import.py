"""PyTorch frontend: nn.Module → torch.export → Relax (``from_exported_program``) → ir.Graph."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from terrazzo.errors import FrontendError
from terrazzo.frontend.relax_graph import to_graph, to_graph_symbolic, uniquify_names
from terrazzo.frontend.signature import keep_signature_names, torch_output_names
from terrazzo.ir import Graph


def _select_int(node: Any, importer: Any) -> Any:
    """``aten.select.int`` (``x[:, -1]``) with its index made non-negative.

    TVM 0.27's translator emits ``take(x, index, dim)`` with the index as written; ``take``'s
    default mode does no bounds handling, so ``-1`` reads memory before the tensor: outputs
    off by 1e33 that change from run to run (an LSTM followed by ``y[:, -1]`` showed it).
    Torch wraps a negative index once and rejects anything outside ``[-n, n)``.
    """
    from tvm import relax

    x = importer.env[node.args[0]]
    dim, index = int(node.args[1]), int(node.args[2])
    shape = node.args[0].meta["val"].shape
    size = shape[dim]
    if isinstance(size, int):
        n = int(size)
        if not -n <= index < n:
            raise FrontendError(
                f"select index {index} is out of range for dimension {dim} of size {n}"
            )
        return importer.block_builder.emit(relax.op.take(x, relax.const(index % n, "int64"), dim))
    # A symbolic size: let take wrap the (in-range, torch has checked) index.
    return importer.block_builder.emit(
        relax.op.take(x, relax.const(index, "int64"), dim, mode="wrap")
    )


#: torch ops TVM 0.27's translator emits with ``out_dtype="float32"`` and then combines with
#: an operand of the input's dtype (the bias): fp16 models fail at import with "Binary
#: operators must have the same datatype" (see ``_fp32_inside``).
_FP32_OUT_OPS = (
    "conv1d.default", "conv2d.default", "conv3d.default", "convolution.default",
    "conv_transpose1d.default", "conv_transpose2d.input", "linear.default", "addmm.default",
    "baddbmm.default", "matmul.default", "mm.default", "bmm.default",
)  # fmt: skip


def _original_converter(importer: Any, op: str) -> Any:
    """TVM's own converter for ``op`` (the custom map has replaced it in ``convert_map``)."""
    table = importer.__dict__.get("_terrazzo_original_map")
    if table is None:
        table = importer.create_convert_map()
        importer.__dict__["_terrazzo_original_map"] = table
    return table[op]


def _fp32_inside(op: str) -> Any:
    """TVM's converter for ``op`` run on fp32 copies of its fp16 operands, the result rounded
    to fp16 once: what torch's CPU kernels do (fp32 accumulation), and the dtypes then agree
    (TVM's translator accumulates in fp32 but adds the fp16 bias to the fp32 result). Ops
    without fp16 operands go to TVM's converter unchanged."""

    def convert(node: Any, importer: Any) -> Any:
        from tvm import relax

        orig = _original_converter(importer, op)
        swapped: dict[Any, Any] = {}
        for arg in node.all_input_nodes:
            value = importer.env.get(arg)
            if str(getattr(getattr(value, "ty", None), "dtype", "")) == "float16":
                swapped[arg] = value
                importer.env[arg] = importer.block_builder.emit(relax.op.astype(value, "float32"))
        if not swapped:
            return orig(node)
        try:
            out = orig(node)
        finally:
            importer.env.update(swapped)
        if str(getattr(out.ty, "dtype", "")) != "float32":
            return out
        return importer.block_builder.emit(relax.op.astype(out, "float16"))

    return convert


def _torch_shape(node: Any, importer: Any) -> list[Any] | None:
    """The output shape torch.export recorded for ``node`` in Relax terms (ints and the input
    symbols), or None where a size is an expression of symbols (left to Relax)."""
    import torch

    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    syms = importer.__dict__.get("_terrazzo_symbols")
    if syms is None:
        syms = {}
        for value in importer.env.values():
            for d in (
                getattr(getattr(getattr(value, "ty", None), "shape", None), "values", None) or []
            ):
                if type(d).__name__ == "Var" and hasattr(d, "name"):
                    syms.setdefault(str(d.name), d)
        importer.__dict__["_terrazzo_symbols"] = syms
    out: list[Any] = []
    for d in val.shape:
        if isinstance(d, int):
            out.append(d)
            continue
        expr = d.node.expr
        if not expr.is_Symbol or str(expr) not in syms:
            return None
        out.append(syms[str(expr)])
    return out


def _same_shape(a: Any, b: Any) -> bool:
    """Relax shape values equal dimension by dimension (ints, or the same symbol)."""

    def key(d: Any) -> str:
        return str(int(d.value)) if hasattr(d, "value") else str(d)

    return len(a) == len(b) and all(key(x) == key(y) for x, y in zip(a, b, strict=True))


def _slice_tensor(node: Any, importer: Any) -> Any:
    """``aten.slice.Tensor`` with the output shape torch proved.

    TVM's translator slices ``buffer[:, :seq]`` (BERT's position ids) to length
    ``min(seq, 64)``; torch knows ``seq <= 8`` from the declared range and records ``seq``. The
    Relax shape ``min(seq, 64)`` does not broadcast against ``seq``, so the embeddings' sum lost
    its shape and the build failed (``CodeGenVM cannot emit ... R.add``). Where torch's shape
    says the slice stays in bounds, it is emitted with ``assume_inbound`` (length ``end -
    start``), and kept only when Relax then infers torch's shape; otherwise TVM's slice stands.
    """
    import tvm
    from torch import fx
    from tvm import relax

    out = _original_converter(importer, "slice.Tensor")(node)
    want = _torch_shape(node, importer)
    have = getattr(getattr(getattr(out, "ty", None), "shape", None), "values", None)
    if want is None or have is None or len(want) != len(have):
        return out
    if _same_shape(have, want):
        return out
    args = list(node.args) + [None] * (5 - len(node.args))
    x = importer.env[args[0]]
    dim = int(args[1] or 0)
    start, stop, step = (importer.env[a] if isinstance(a, fx.Node) else a for a in args[2:5])
    start = 0 if start is None else start
    step = 1 if step is None else step
    ok = isinstance(start, int) and isinstance(step, int) and step > 0
    if not ok or not (isinstance(stop, int) or tvm.ir.is_prim_expr(stop)):
        return out
    dim = dim % len(want)
    inbound = importer.block_builder.normalize(
        relax.op.strided_slice(x, [dim], [start], [stop], [step], assume_inbound=True)
    )
    if _same_shape(inbound.ty.shape.values, want):
        return inbound
    return out


def _arg_names(module: Any, n: int) -> list[str]:
    try:
        params = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        params = []
    params = [p for p in params if p != "self"]
    return (params + [f"arg{i}" for i in range(len(params), n)])[:n]


def _dynamic_shapes(
    module: Any, args: tuple[Any, ...], shapes: Any, gname: str
) -> tuple[tuple[Any, ...], dict[str, Any] | None, dict[tuple[str, int], tuple[int, int]]]:
    """torch.export's ``dynamic_shapes`` for the declared ranges (``Dim.DYNAMIC(min, max)``:
    torch works out which dimensions are equal), the example inputs grown to size 2 where a
    ranged dimension has size 0 or 1 (torch specialises those), and (input, dim) → range."""
    import torch

    from terrazzo.ir.shapes import ShapeSpecError, normalize_shapes

    decl = normalize_shapes(shapes)
    if not decl:
        return args, None, {}
    names = _arg_names(module, len(args))
    unknown = sorted(set(decl) - set(names))
    if unknown:
        raise FrontendError(
            f"{gname}: shapes= names input(s) {unknown}, but forward() takes {names}"
        )
    out_args = list(args)
    dyn: dict[str, Any] = {}
    ranges: dict[tuple[str, int], tuple[int, int]] = {}
    for i, name in enumerate(names):
        if name not in decl:
            dyn[name] = None
            continue
        x, dims = out_args[i], decl[name]
        if not isinstance(x, torch.Tensor) or x.dim() != len(dims):
            rank = x.dim() if isinstance(x, torch.Tensor) else "no"
            raise ShapeSpecError(
                f"{gname}: shapes= gives input {name!r} rank {len(dims)}, the example has rank {rank}"
            )
        spec: dict[int, Any] = {}
        for k, d in enumerate(dims):
            if isinstance(d, int):
                if d != x.shape[k]:
                    raise ShapeSpecError(
                        f"{gname}: shapes= fixes input {name!r} dimension {k} at {d}, the example "
                        f"has {x.shape[k]}"
                    )
                continue
            lo, hi = d
            if hi < 2:
                raise ShapeSpecError(
                    f"{gname}: input {name!r} dimension {k} range {lo}..{hi}: torch.export needs "
                    "ranges reaching 2 or more (declare a fixed size 1 instead)"
                )
            if x.shape[k] < 2:  # torch specialises sizes 0 and 1; trace with size 2
                x = torch.cat([x] * (2 if x.shape[k] == 1 else 1), dim=k) if x.shape[k] else x
                if x.shape[k] < 2:
                    raise ShapeSpecError(
                        f"{gname}: input {name!r} dimension {k} is empty in the example"
                    )
            if not lo <= x.shape[k] <= hi and not x.shape[k] == 2:
                raise ShapeSpecError(
                    f"{gname}: the example's input {name!r} dimension {k} is {x.shape[k]}, "
                    f"outside its declared range {lo}..{hi}"
                )
            spec[k] = torch.export.Dim.DYNAMIC(min=max(lo, 2) if hi >= 2 else lo, max=hi)
            ranges[(name, k)] = (lo, hi)
        out_args[i] = x
        dyn[name] = spec or None
    return tuple(out_args), dyn, ranges


def from_torch(
    module: Any,
    example_inputs: Sequence[Any],
    name: str | None = None,
    shapes: Any = None,
    plan_shapes: Any = None,
) -> Graph:
    """Import a PyTorch module as an ir.Graph, with shapes taken from ``example_inputs``.

    Args:
        module: a ``torch.nn.Module`` (put in eval mode here).
        example_inputs: positional example tensors; their shapes become the graph's shapes.
        name: graph name (default: the module's class name).
        shapes: forward() argument name → declared shape (``terrazzo.ir.shapes``): a
            ``lo..hi`` range exports that dimension dynamic (``torch.export.Dim``) and keeps it
            symbolic through codegen; sizes must match the example.
        plan_shapes: argument name → the shape to plan for (default: the ranges' upper bounds).

    Returns:
        A verified model graph; input names are the forward() argument names, output names
        the keys of what it returns (``output_0``, ... by position; see
        ``frontend.signature.torch_output_names``).

    Raises:
        FrontendError: torch.export or the TVM importer failed, or a bad shape declaration.
    """
    import torch
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    module = module.eval()
    args = tuple(example_inputs)
    gname = name or type(module).__name__
    args, dynamic, dim_ranges = _dynamic_shapes(module, args, shapes, gname)
    try:
        with torch.no_grad():
            ep = torch.export.export(module, args, dynamic_shapes=dynamic)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FrontendError(f"torch.export failed on {gname}: {first[:300]}") from None
    try:
        mod = from_exported_program(
            ep,
            keep_params_as_input=False,
            unwrap_unit_return_tuple=True,
            custom_convert_map={
                "select.int": _select_int,
                "slice.Tensor": _slice_tensor,
                **{op: _fp32_inside(op) for op in _FP32_OUT_OPS},
            },
        )
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.Normalize()(mod)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise FrontendError(f"TVM's torch importer failed on {gname}: {first[:300]}") from None
    mod = uniquify_names(mod)
    in_names = [p.name for p in mod["main"].params]  # forward()'s argument names
    mod = keep_signature_names(mod, in_names, torch_output_names(ep.call_spec.out_spec))
    attrs = {"source": "torch"}
    if not dim_ranges:
        return to_graph(mod, name=gname, attrs=attrs)
    mod, ranges, dim_names = _name_symbols(mod, dim_ranges)
    from terrazzo.frontend.onnx_import import plan_sizes_for

    sizes = plan_sizes_for(plan_shapes, dim_names, ranges, gname)
    return to_graph_symbolic(mod, gname, ranges, sizes, attrs)


def _name_symbols(
    mod: Any, dim_ranges: dict[tuple[str, int], tuple[int, int]]
) -> tuple[Any, dict[str, tuple[int, int]], dict[str, list[str]]]:
    """Rename torch's symbols (``s77``) after the first dimension carrying each (``batch`` for
    a first dimension, else ``<input>_d<k>``); their range is the declared one (the
    intersection when several declared dimensions share a symbol)."""
    import tvm
    from tvm import relax

    func = mod["main"]
    rename: dict[Any, Any] = {}
    ranges: dict[str, tuple[int, int]] = {}
    dim_names: dict[str, list[str]] = {}
    by_old: dict[str, str] = {}
    for p in func.params:
        shape = getattr(p.ty, "shape", None)
        values = list(getattr(shape, "values", None) or [])
        names: list[str] = []
        for k, d in enumerate(values):
            if hasattr(d, "value"):
                names.append("")
                continue
            if not isinstance(d, tvm.tirx.Var):
                names.append(str(d))
                continue
            old = str(d.name)
            if old not in by_old:
                new = "batch" if k == 0 and "batch" not in ranges else f"{p.name}_d{k}"
                by_old[old] = new
                rename[d] = tvm.tirx.Var(new, "int64")
                ranges[new] = dim_ranges.get((p.name, k), (1, 2**31 - 1))
            new = by_old[old]
            if (p.name, k) in dim_ranges:
                lo, hi = dim_ranges[(p.name, k)]
                ranges[new] = (max(lo, ranges[new][0]), min(hi, ranges[new][1]))
            names.append(new)
        dim_names[p.name] = names
    func = func.bind_symbolic_vars(rename)
    func = func.without_attr("tir_var_lower_bound").without_attr("tir_var_upper_bound")
    out = mod.clone()
    out["main"] = relax.transform.Normalize()(tvm.IRModule({"main": func}))["main"]
    return out, ranges, dim_names
