"""Turns an imported Relax module into an ir.Graph (the last step of both frontends).

Conventions (docs/interfaces.md): one ``Op`` per binding of ``mod["main"]``'s dataflow
block, in order; ``Op.name`` is the binding var's name, unique in the function (vars are
renamed ``<name>_<k>`` where needed); ``Op.outputs == (op.name,)``; graph inputs are the
function's parameter names; weights stay Relax constants and count as the reading op's
``param_bytes``.

Tuples. A binding whose value is a tuple (``split``, ``R.tuple(...)``) is still one op with
one output value, typed so that byte counts stay exact: a one-element tuple takes its
element's type; a tuple of several tensors of one dtype is typed as the flat 1-D
concatenation ``(sum of numels,)`` of that dtype; mixed dtypes become ``uint8`` bytes.
Ops of kind ``tuple`` (building a tuple) and ``tuple_get_item`` (projecting one) have zero
FLOPs and zero bytes; the real tensor work is charged to the op that made the data. When
``main`` returns a tuple, the graph outputs are the tensors inside it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from terrazzo.errors import FrontendError
from terrazzo.frontend.op_rules import ZERO_COST_KINDS, rule_for
from terrazzo.ir.graph import _DTYPE_BYTES, Graph, Op, TensorType, make_attrs

_DTYPE_ALIASES = {"float8_e4m3fn": "float8", "float8_e5m2": "float8", "float8_e4m3fnuz": "float8"}


def relax_bindings(mod: Any) -> list[tuple[str, Any]]:
    """The ``(op name, relax.Binding)`` pairs of ``mod["main"]``, in order.

    Op names equal binding var names; ``from_onnx``/``from_torch`` guarantee uniqueness.

    Args:
        mod: a Relax ``IRModule`` with a ``main`` function.

    Returns:
        One pair per binding of every binding block of ``main``'s body.
    """
    func = mod["main"]
    return [(b.var.name, b) for block in func.body.blocks for b in block.bindings]


def tensor_type(ty: Any, where: str) -> TensorType:
    """The ir TensorType of a Relax type (tensor, or tuple folded as in the module docstring)."""
    from tvm import relax

    if isinstance(ty, relax.TensorType):
        return TensorType(_static_shape(ty, where), _dtype(ty.dtype, where))
    leaves = list(_tensor_leaves(ty, where))
    if len(leaves) == 1:
        return leaves[0]
    dtypes = {t.dtype for t in leaves}
    if len(dtypes) == 1:
        return TensorType((sum(t.numel for t in leaves),), dtypes.pop())
    return TensorType((sum(t.nbytes for t in leaves),), "uint8")


def _tensor_leaves(ty: Any, where: str) -> Iterator[TensorType]:
    from tvm import relax

    if isinstance(ty, relax.TensorType):
        yield tensor_type(ty, where)
    elif hasattr(ty, "fields"):
        for f in ty.fields:
            yield from _tensor_leaves(f, where)
    # Shapes, prim values and objects carry no tensor data.


def _static_shape(ty: Any, where: str) -> tuple[int, ...]:
    shape = ty.shape
    if shape is None or not hasattr(shape, "values"):
        raise FrontendError(f"{where} has an unknown rank; Terrazzo needs static shapes")
    dims = []
    for d in shape.values:
        if not hasattr(d, "value"):
            raise FrontendError(
                f"{where} has a dynamic dimension {d}; pass fixed shapes "
                "(shapes={name: (1, 3, 224, 224)}, CLI --shape name=1x3x224x224)"
            )
        dims.append(int(d.value))
    return tuple(dims)


def _dtype(dtype: Any, where: str) -> str:
    name = str(dtype)
    name = _DTYPE_ALIASES.get(name, name)
    if name not in _DTYPE_BYTES:
        raise FrontendError(f"{where} has dtype {name!r}, which the Terrazzo IR does not support")
    return name


def _plain(v: Any) -> Any:
    """Relax attribute / argument value → plain immutable data, or None to drop it."""
    import tvm
    from tvm import relax

    if v is None:
        return None
    if isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, tvm.tirx.IntImm | tvm.tirx.FloatImm):
        return v.value
    if hasattr(v, "value") and isinstance(getattr(v, "value", None), bool | int | float | str):
        return v.value
    if isinstance(v, relax.ShapeExpr):
        return tuple(_plain(x) for x in v.values)
    if isinstance(v, relax.Tuple):
        return tuple(_plain(x) for x in v.fields)
    if hasattr(v, "__iter__") and not isinstance(v, dict) and type(v).__name__ in ("Array", "list"):
        return tuple(_plain(x) for x in v)
    return str(v)


def _call_attrs(call: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    attrs = getattr(call, "attrs", None)
    info = getattr(type(attrs), "__tvm_ffi_type_info__", None) if attrs is not None else None
    while info is not None:
        for f in info.fields:
            val = _plain(getattr(attrs, f.name))
            if val is not None and f.name not in out:
                out[f.name] = val
        info = info.parent_type_info
    return out


class _Reads:
    """The vars and constants an expression reads, in first-use order."""

    def __init__(self) -> None:
        self.vars: list[Any] = []
        self.consts: list[Any] = []
        self.other_args: dict[str, Any] = {}

    def walk(self, e: Any) -> None:
        from tvm import relax

        if isinstance(e, relax.Var):
            if not any(e.same_as(v) for v in self.vars):
                self.vars.append(e)
        elif _is_const(e):
            if not any(e.same_as(c) for c in self.consts):
                self.consts.append(e)
        elif isinstance(e, relax.Tuple):
            for f in e.fields:
                self.walk(f)
        elif isinstance(e, relax.TupleGetItem):
            self.walk(e.tuple_value)


def _is_const(e: Any) -> bool:
    return type(e).__name__ in ("GenericConst", "Constant")


def _const_type(c: Any) -> TensorType:
    data = c.value
    return TensorType(tuple(int(x) for x in data.shape), _dtype(data.dtype, "a constant"))


def _kind_and_attrs(value: Any) -> tuple[str, dict[str, Any]]:
    import tvm
    from tvm import relax

    if isinstance(value, relax.Call):
        op = value.op
        attrs = _call_attrs(value)
        for i, a in enumerate(value.args):
            if not isinstance(a, relax.Var) and not _is_const(a) and not isinstance(a, relax.Tuple):
                p = _plain(a)
                if p is not None:
                    attrs[f"arg{i}"] = p
        if isinstance(op, tvm.ir.Op):
            name = op.name
            return (name[len("relax.") :] if name.startswith("relax.") else name), attrs
        if isinstance(op, relax.GlobalVar):
            attrs["callee"] = op.name_hint
            return "call", attrs
        return "call", attrs
    if isinstance(value, relax.Tuple):
        return "tuple", {}
    if isinstance(value, relax.TupleGetItem):
        return "tuple_get_item", {"index": int(value.index)}
    if isinstance(value, relax.Var):
        return "alias", {}
    if _is_const(value):
        return "const", {}
    if isinstance(value, relax.ShapeExpr):
        return "shape", {"shape": _plain(value)}
    return type(value).__name__.lower(), {}


def uniquify_names(mod: Any) -> Any:
    """Rename binding vars of ``main`` so that every param and binding name is unique."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    func = mod["main"]
    names = [p.name for p in func.params] + [n for n, _ in relax_bindings(mod)]
    if len(set(names)) == len(names):
        return mod
    taken: set[str] = set(p.name for p in func.params)

    @mutator
    class _Renamer(PyExprMutator):  # type: ignore[misc]
        def visit_var_binding_(self, binding: Any) -> None:
            value = self.visit_expr(binding.value)
            old = binding.var
            name, k = old.name, 1
            while name in taken:
                name, k = f"{old.name}_{k}", k + 1
            taken.add(name)
            cls = relax.DataflowVar if isinstance(old, relax.DataflowVar) else relax.Var
            new = cls(name, old.ty)
            self.builder_.emit_normalized(relax.VarBinding(new, value))
            self.set_var_remap(old, new)

        def visit_match_cast_(self, binding: Any) -> None:
            # symbolic shapes bring match_cast bindings; their names must be unique too
            value = self.visit_expr(binding.value)
            old = binding.var
            name, k = old.name, 1
            while name in taken:
                name, k = f"{old.name}_{k}", k + 1
            taken.add(name)
            cls = relax.DataflowVar if isinstance(old, relax.DataflowVar) else relax.Var
            new = cls(name, old.ty)
            self.builder_.emit_normalized(relax.MatchCast(new, value, binding.ty))
            self.set_var_remap(old, new)

    out = mod.clone()
    out["main"] = _Renamer(mod).visit_expr(func)
    return out


def to_graph(mod: Any, name: str, attrs: dict[str, Any] | None = None) -> Graph:
    """Build the ir.Graph of ``mod["main"]`` (names must already be unique).

    Args:
        mod: Relax module from a frontend, after ``uniquify_names``.
        name: graph name.
        attrs: extra graph attributes (e.g. the source format).

    Returns:
        The verified graph, with ``relax_mod`` set to ``mod``.
    """
    from tvm import relax

    func = mod["main"]
    values: dict[str, TensorType] = {}
    inputs: list[str] = []
    for p in func.params:
        values[p.name] = tensor_type(p.ty, f"input {p.name!r}")
        inputs.append(p.name)

    ops: list[Op] = []
    tuple_fields: dict[str, tuple[str, ...]] = {}
    for op_name, b in relax_bindings(mod):
        if not isinstance(b, relax.VarBinding):
            kind, extra = "match_cast", dict[str, Any]()
            value = b.value
        else:
            value = b.value
            kind, extra = _kind_and_attrs(value)
        out_t = tensor_type(b.var.ty, f"value {op_name!r} ({kind})")
        values[op_name] = out_t
        reads = _Reads()
        if isinstance(value, relax.Call):
            for a in value.args:
                reads.walk(a)
        else:
            reads.walk(value)
        for a in _iter_args(value):
            if _is_const(a) and not any(a.same_as(c) for c in reads.consts):
                reads.consts.append(a)
        in_names = tuple(v.name for v in reads.vars)
        const_types = [_const_type(c) for c in reads.consts]
        if isinstance(value, relax.Tuple):
            tuple_fields[op_name] = tuple(f.name for f in value.fields if isinstance(f, relax.Var))
        ins = [values[n] for n in in_names] + const_types
        rule = rule_for(kind)
        param_bytes = sum(t.nbytes for t in const_types)
        if kind in ZERO_COST_KINDS:
            flops = bytes_read = bytes_written = param_bytes = 0
        else:
            outs = list(_tensor_leaves(b.var.ty, op_name))
            flops = rule.flops(ins, outs)
            bytes_read = sum(t.nbytes for t in ins)
            bytes_written = sum(t.nbytes for t in outs)
        ops.append(
            Op(
                name=op_name,
                kind=kind,
                inputs=in_names,
                outputs=(op_name,),
                attrs=make_attrs(extra),
                op_class=rule.op_class,
                flops=int(flops),
                bytes_read=int(bytes_read),
                bytes_written=int(bytes_written),
                param_bytes=int(param_bytes),
            )
        )

    outputs = _graph_outputs(func.body.body, tuple_fields)
    graph = Graph(
        name=name,
        ops=tuple(ops),
        values=values,
        inputs=tuple(inputs),
        outputs=outputs,
        attrs=make_attrs(attrs or {}),
        relax_mod=mod,
    )
    return graph.verify()


def _iter_args(value: Any) -> Iterator[Any]:
    from tvm import relax

    if isinstance(value, relax.Call):
        for a in value.args:
            yield a
            if isinstance(a, relax.Tuple):
                yield from a.fields
    elif isinstance(value, relax.Tuple):
        yield from value.fields


def _graph_outputs(ret: Any, tuple_fields: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    from tvm import relax

    if isinstance(ret, relax.Var):
        if ret.name in tuple_fields and tuple_fields[ret.name]:
            return tuple_fields[ret.name]
        return (ret.name,)
    if isinstance(ret, relax.Tuple):
        return tuple(f.name for f in ret.fields if isinstance(f, relax.Var))
    raise FrontendError(f"main returns a {type(ret).__name__}; expected a variable or a tuple")


def numel(shape: tuple[int, ...]) -> int:
    """Number of elements of a static shape."""
    return math.prod(shape)


def symbolic_vars(mod: Any) -> dict[str, Any]:
    """The symbolic dimension variables (``tir.Var``) of ``main``'s parameters, by name."""
    from tvm import relax

    out: dict[str, Any] = {}
    for p in mod["main"].params:
        for v in relax.analysis.definable_tir_vars_in_type(p.ty):
            out.setdefault(str(v.name), v)
    return out


def to_graph_symbolic(
    mod: Any,
    name: str,
    ranges: dict[str, tuple[int, int]],
    plan_sizes: dict[str, int],
    attrs: dict[str, Any] | None = None,
) -> Graph:
    """The ir.Graph of a module with symbolic dimensions, typed at the planning sizes.

    The graph (what the cost model and planner read) is built from ``main`` with every symbol
    bound to its planning size; ``relax_mod`` stays the symbolic module, so codegen builds one
    library for the whole declared range. The graph attributes ``dynamic_dims``
    (``batch=1..64``) and ``plan_shape`` (``batch=64``) say so.

    Args:
        mod: Relax module from a frontend, after ``uniquify_names``.
        name: graph name.
        ranges: symbol → inclusive declared range (every symbol of ``main``'s parameters).
        plan_sizes: symbol → size to plan for (inside its range).
        attrs: extra graph attributes.
    """
    from terrazzo.ir.shapes import format_ranges, format_sizes

    syms = symbolic_vars(mod)
    if not syms:
        return to_graph(mod, name=name, attrs=attrs)
    missing = sorted(set(syms) - set(ranges))
    if missing:
        raise FrontendError(f"{name}: symbolic dimensions {missing} have no declared range")
    for s, (lo, hi) in ranges.items():
        if s in plan_sizes and not lo <= plan_sizes[s] <= hi:
            raise FrontendError(
                f"{name}: planning size {s}={plan_sizes[s]} is outside its range {lo}..{hi}"
            )
    # TVM reads the declared bounds: memory for symbolic tensors is planned statically at
    # the upper bound (StaticPlanBlockMemory), and codegen passes may rely on them.
    mod = mod.clone()
    mod["main"] = (
        mod["main"]
        .with_attr("tir_var_upper_bound", {s: int(ranges[s][1]) for s in syms})
        .with_attr("tir_var_lower_bound", {s: int(ranges[s][0]) for s in syms})
    )
    static = mod.clone()
    sizes = {s: int(plan_sizes.get(s, ranges[s][1])) for s in syms}
    try:
        static["main"] = mod["main"].bind_symbolic_vars({syms[s]: v for s, v in sizes.items()})
    except Exception as e:  # TVM's own error types
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise FrontendError(
            f"{name}: cannot bind {sizes} to the symbolic shapes: {first[:200]}"
        ) from None
    import dataclasses

    extra = dict(attrs or {})
    extra["dynamic_dims"] = format_ranges({s: ranges[s] for s in syms})
    extra["plan_shape"] = format_sizes(sizes)
    graph = to_graph(static, name=name, attrs=extra)
    return dataclasses.replace(graph, relax_mod=mod)
