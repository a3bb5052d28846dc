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
            custom_convert_map={"select.int": _select_int},
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
