"""Codegen step 1: cut a model's Relax ``main`` into one Relax function per placed stage.

A stage's parameters are the values it reads that are produced outside it (graph inputs or
earlier stages' results), followed by the weights it uses (Relax constants lifted into
parameters, stored later as safetensors); its results are the values read outside it (by
later stages or as graph outputs). Tuple-valued values that cross a cut travel as their
tensor leaves, named ``var.i`` (``var.i.j`` for nested tuples).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from terrazzo.errors import CodegenError
from terrazzo.ir import TensorType

if TYPE_CHECKING:
    from terrazzo.ir import Graph
    from terrazzo.placement import Plan

# Constants at least this large become weight parameters; smaller ones (scalars, shape-like
# index vectors) stay inlined in the compiled library where legalization may need them.
LIFT_MIN_BYTES = 256
#: Function attributes carrying symbolic dimensions' declared bounds; every stage keeps them.
_BOUND_ATTRS = ("tir_var_upper_bound", "tir_var_lower_bound")


@dataclass(frozen=True, slots=True)
class StageModule:
    """One stage as a standalone Relax module whose ``main`` is ``(inputs..., weights...) -> tuple``.

    Attributes:
        index: stage index (a topological order of the stage DAG).
        mod: the ``tvm.IRModule`` holding ``main``.
        ops: binding names computed in this stage, in order.
        inputs: activation parameter names (graph inputs or other stages' results).
        outputs: result names, in the order ``main`` returns them.
        weights: global weight names passed after ``inputs``.
        input_types / output_types: shapes and dtypes of ``inputs`` / ``outputs`` (``-1`` for
            a symbolic dimension).
        input_dims / output_dims: per tensor, ``_dim_names`` of its type (``()`` when static).
    """

    index: int
    mod: Any = field(compare=False, repr=False)
    ops: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weights: tuple[str, ...]
    input_types: tuple[TensorType, ...]
    output_types: tuple[TensorType, ...]
    input_dims: tuple[tuple[str, ...], ...] = ()
    output_dims: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class SplitModel:
    """The result of a split: stages, the model's signature and its lifted weights.

    Attributes:
        stages: one StageModule per stage index, in order.
        inputs / input_types: graph inputs (the Relax ``main`` parameters).
        outputs / output_types: graph outputs as tensor leaves (``gv.0``, ``gv.1``, ...).
        weights: global weight name → array (every lifted constant, shared by name).
        input_dims / output_dims: per tensor, its symbolic dimension names (see StageModule).
    """

    stages: tuple[StageModule, ...]
    inputs: tuple[str, ...]
    input_types: tuple[TensorType, ...]
    outputs: tuple[str, ...]
    output_types: tuple[TensorType, ...]
    weights: Mapping[str, np.ndarray] = field(compare=False, repr=False)
    input_dims: tuple[tuple[str, ...], ...] = ()
    output_dims: tuple[tuple[str, ...], ...] = ()

    def stage_weights(self, index: int) -> dict[str, np.ndarray]:
        """The weights stage ``index`` reads, by global name."""
        return {w: self.weights[w] for w in self.stages[index].weights}


def _tensor_type(ty: Any, where: str) -> TensorType:
    """The ir type of a value crossing a cut; a symbolic dimension is ``-1`` (``_dim_names``
    says which symbol or expression it is)."""
    from tvm import relax

    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        raise CodegenError(f"{where}: expected a tensor with a known shape, found {ty}")
    values = getattr(ty.shape, "values", None)
    if values is None:
        raise CodegenError(
            f"{where}: shape {ty} is not known at compile time (not even symbolically)"
        )
    shape = tuple(int(d.value) if hasattr(d, "value") else -1 for d in values)
    return TensorType(shape, str(ty.dtype))


def _dim_names(ty: Any) -> tuple[str, ...]:
    """Per dimension of a tensor type: ``""`` when fixed, else TVM's text of the symbolic
    expression (``batch``, ``batch * 4``); ``()`` when every dimension is fixed."""
    import re

    names = tuple(
        "" if hasattr(d, "value") else re.sub(r"T\.u?int\d+\((-?\d+)\)", r"\1", str(d))
        for d in ty.shape.values
    )
    return names if any(names) else ()


def _leaves(name: str, ty: Any) -> list[tuple[str, tuple[int, ...], Any]]:
    """Tensor leaves of a (possibly nested tuple) value: (leaf name, index path, leaf type)."""
    from tvm import relax

    if isinstance(ty, relax.TupleType):
        out: list[tuple[str, tuple[int, ...], Any]] = []
        for i, f in enumerate(ty.fields):
            out.extend((f"{n}", (i, *p), t) for n, p, t in _leaves(f"{name}.{i}", f))
        return out
    return [(name, (), ty)]


def _bindings(func: Any) -> list[Any]:
    out = []
    for block in func.body.blocks:
        out.extend(block.bindings)
    return out


def relax_binding_names(mod: Any) -> list[str]:
    """Names of the bindings of ``mod["main"]`` in order (raises if they are not unique)."""
    names = [b.var.name for b in _bindings(mod["main"])]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CodegenError(
            f"Relax main has repeated binding names {dup[:5]}; rename them first "
            "(terrazzo.codegen.uniquify_bindings)"
        )
    return names


def uniquify_bindings(mod: Any) -> Any:
    """Copy of ``mod`` whose ``main`` bindings have unique names (``name``, ``name_1``, ...)."""
    from tvm import relax

    func = mod["main"]
    bb = relax.BlockBuilder()
    seen: dict[str, int] = {}
    params = [relax.Var(p.name, p.ty) for p in func.params]
    remap: dict[str, Any] = {p.name: q for p, q in zip(func.params, params, strict=True)}
    mut = _Remapper(remap, {})
    with bb.function("main", params, attrs=dict(func.attrs) if func.attrs else None):
        with bb.dataflow():
            for b in _bindings(func):
                n = b.var.name
                k = seen.get(n, 0)
                seen[n] = k + 1
                new_name = n if k == 0 else f"{n}_{k}"
                while new_name in seen and k:
                    k += 1
                    new_name = f"{n}_{k}"
                seen.setdefault(new_name, 1)
                value = mut.rewrite(b.value)
                if isinstance(b, relax.MatchCast):
                    v = bb.match_cast(value, b.ty, name_hint=new_name)
                else:
                    v = bb.emit(value, name_hint=new_name)
                remap[n] = v
            ret = bb.emit_output(mut.rewrite(func.body.body))
        bb.emit_func_output(ret)
    out = bb.get()
    for gv, f in mod.functions.items():
        if gv.name_hint != "main":
            out[gv] = f
    return out


class _Remapper:
    """Rewrites an expression: vars by name, lifted constants by identity, to new exprs."""

    def __init__(self, var_map: Mapping[str, Any], const_map: Mapping[Any, Any]) -> None:
        from tvm import relax

        var_map_ = var_map
        const_map_ = const_map

        @relax.expr_functor.mutator
        class _M(relax.PyExprMutator):  # type: ignore[misc]
            def visit_var_(self, op: Any) -> Any:
                return var_map_.get(op.name, op)

            def visit_dataflow_var_(self, op: Any) -> Any:
                return var_map_.get(op.name, op)

            def visit_generic_const_(self, op: Any) -> Any:
                return const_map_.get(op, op)

        self._m = _M()

    def rewrite(self, expr: Any) -> Any:
        return self._m.visit_expr(expr)


def _collect_constants(func: Any) -> dict[Any, str]:
    """Constants worth lifting, by identity, named ``w0``, ``w1``, ... in first-use order."""
    from tvm import ir, relax

    found: dict[Any, str] = {}

    def visit(e: Any) -> None:
        if isinstance(e, ir.expr.GenericConst) and e not in found:
            val = e.value
            if len(val.shape) >= 1 and val.numpy().nbytes >= LIFT_MIN_BYTES:
                found[e] = f"w{len(found)}"

    for b in _bindings(func):
        relax.analysis.post_order_visit(b.value, visit)
    return found


def _flatten_return(
    expr: Any,
    where: str,
    tuples: Mapping[str, Any],
    resolved: set[str],
    owner: tuple[str, tuple[int, ...]] | None = None,
) -> list[tuple[str, str, tuple[int, ...], Any]]:
    """Graph output leaves of the return expression: (leaf name, var name, path, type).

    A returned var bound to a tuple literal (``gv = (lv7, lv3)``) resolves to its fields, so
    graph outputs are named like the frontend's ``Graph.outputs``. A constant field
    (``gv = (lv7, metadata[0])``: a graph output that is a constant) has no var of its own:
    it stays a field of its tuple var (``gv.1``), which is then kept (not resolved away) so
    the stage that binds it exports the constant.
    """
    from tvm import ir, relax

    def has_constant_field(value: Any) -> bool:
        if isinstance(value, ir.GenericConst):
            return True
        return isinstance(value, relax.Tuple) and any(has_constant_field(f) for f in value.fields)

    if isinstance(expr, relax.Tuple):
        out = []
        for i, f in enumerate(expr.fields):
            sub = None if owner is None else (owner[0], (*owner[1], i))
            out.extend(_flatten_return(f, where, tuples, resolved, sub))
        return out
    if isinstance(expr, ir.expr.Var) and expr.name in tuples:
        value = tuples[expr.name]
        if not has_constant_field(value):
            resolved.add(expr.name)
        return _flatten_return(value, where, tuples, resolved, (expr.name, ()))
    if isinstance(expr, ir.expr.Var):
        return [(n, expr.name, p, t) for n, p, t in _leaves(expr.name, expr.ty)]
    if isinstance(expr, relax.TupleGetItem) and isinstance(expr.tuple_value, ir.expr.Var):
        base = expr.tuple_value
        name = f"{base.name}.{int(expr.index)}"
        return [(n, base.name, (int(expr.index), *p), t) for n, p, t in _leaves(name, expr.ty)]
    if isinstance(expr, ir.GenericConst) and owner is not None:
        var, path = owner
        name = ".".join([var, *(str(i) for i in path)])
        return [(n, var, (*path, *p), t) for n, p, t in _leaves(name, expr.ty)]
    raise CodegenError(f"{where}: unsupported graph output expression {type(expr).__name__}")


def split_relax(
    mod: Any, assignment: Mapping[str, int], export: Collection[str] = ()
) -> SplitModel:
    """Cut ``mod["main"]`` into stages.

    Args:
        mod: a Relax IRModule whose ``main`` has uniquely named bindings (weights as constants).
        assignment: binding name → stage index. Every binding must be assigned; indices must
            be 0..n-1 and a topological order (a stage reads only from earlier stages).
        export: bindings to return from their stage even when nothing outside reads them
            (the whole-model reference exports the values another split passes between
            stages, so that ``verify`` can check each stage on its own).

    Returns:
        The SplitModel: one StageModule per stage, the graph signature and lifted weights.

    Raises:
        CodegenError: unassigned or unknown bindings, a non-topological stage order, or a
            value that cannot cross a cut (dynamic shape, non-tensor).
    """
    from tvm import relax

    func = mod["main"]
    bindings = _bindings(func)
    names = relax_binding_names(mod)
    missing = [n for n in names if n not in assignment]
    if missing:
        raise CodegenError(f"no stage assigned to bindings: {', '.join(missing[:10])}")
    unknown = sorted(set(assignment) - set(names))
    if unknown:
        raise CodegenError(f"assignment names unknown bindings: {', '.join(unknown[:10])}")
    stage_ids = sorted(set(assignment[n] for n in names))
    if stage_ids != list(range(len(stage_ids))):
        raise CodegenError(f"stage indices must be 0..n-1, found {stage_ids}")
    if any(b.var.name in assignment and isinstance(b.value, relax.Function) for b in bindings):
        raise CodegenError("local functions inside main are not supported; lambda-lift first")

    param_names = [p.name for p in func.params]
    input_types = tuple(_tensor_type(p.ty, f"input {p.name!r}") for p in func.params)
    stage_of = {n: assignment[n] for n in names}
    var_of = {b.var.name: b.var for b in bindings}
    # free_vars also lists symbolic dimensions (``seq``); keep the Relax values only
    known_vars = set(param_names) | set(var_of)
    uses = {
        b.var.name: [v.name for v in relax.analysis.free_vars(b.value) if v.name in known_vars]
        for b in bindings
    }

    tuples = {b.var.name: b.value for b in bindings if isinstance(b.value, relax.Tuple)}
    resolved: set[str] = set()
    out_leaves = _flatten_return(func.body.body, "graph outputs", tuples, resolved)
    graph_out_vars = {v for _, v, _, _ in out_leaves}
    # Output tuple literals read by nothing else are dead once outputs are resolved to leaves.
    dead = {v for v in resolved if not any(v in uses[n] for n in names)}
    all_bindings = bindings
    bindings = [b for b in bindings if b.var.name not in dead]

    # Which values each stage must export: read by another stage or a graph output.
    exported: dict[str, set[str]] = {}
    # Constant shapes (``R.shape([16, 1])`` for a reshape) are not tensors and cannot cross a
    # cut: a stage that reads one from another stage binds it again itself.
    rebound = {
        b.var.name: relax.ShapeExpr(b.var.ty.values)
        for b in bindings
        if isinstance(b.var.ty, relax.ShapeType)
        and b.var.ty.values is not None
        and all(hasattr(v, "value") for v in b.var.ty.values)  # symbolic ones still cross
    }
    for b in bindings:
        s = stage_of[b.var.name]
        for u in uses[b.var.name]:
            if u in stage_of and stage_of[u] != s and u not in rebound:
                if stage_of[u] > s:
                    raise CodegenError(
                        f"stage {s} (binding {b.var.name!r}) reads {u!r} from later stage "
                        f"{stage_of[u]}; stage indices must be a topological order"
                    )
                exported.setdefault(u, set()).add(f"stage {s}")
    for v in graph_out_vars:
        if v in stage_of:
            exported.setdefault(v, set()).add("graph output")
    for v in export:
        if v in stage_of and v not in dead and v not in rebound:
            exported.setdefault(v, set()).add("exported")

    consts = _collect_constants(func)
    weights = {name: c.value.numpy() for c, name in consts.items()}

    stages: list[StageModule] = []
    for s in stage_ids:
        own = [b for b in bindings if stage_of[b.var.name] == s]
        own_all = [b.var.name for b in all_bindings if stage_of[b.var.name] == s]
        own_names = {b.var.name for b in own}
        ext_reads: list[str] = []
        for b in own:
            for u in uses[b.var.name]:
                if u not in own_names and u not in ext_reads:
                    ext_reads.append(u)
        ext_reads.extend(_symbol_carriers(own, ext_reads, func, var_of))
        bb = relax.BlockBuilder()
        var_map: dict[str, Any] = {}
        in_params: list[Any] = []
        in_names: list[str] = []
        in_types: list[TensorType] = []
        in_dims: list[tuple[str, ...]] = []
        tuple_inputs: list[tuple[str, Any, list[Any]]] = []
        own_rebound = [(u, rebound[u]) for u in ext_reads if u in rebound]
        ext_reads = [u for u in ext_reads if u not in rebound]
        for u in ext_reads:
            ty = func.params[param_names.index(u)].ty if u in param_names else var_of[u].ty
            leaves = _leaves(u, ty)
            leaf_vars = []
            for leaf, _, lty in leaves:
                tt = _tensor_type(lty, f"stage {s} input {leaf!r}")
                pv = relax.Var(leaf, lty)
                in_params.append(pv)
                in_names.append(leaf)
                in_types.append(tt)
                in_dims.append(_dim_names(lty))
                leaf_vars.append((leaf, pv))
            if leaves and leaves[0][1] == ():
                var_map[u] = leaf_vars[0][1]
            else:
                tuple_inputs.append((u, ty, [pv for _, pv in leaf_vars]))
        stage_consts: dict[Any, Any] = {}
        w_names: list[str] = []
        for b in own:

            def visit(
                e: Any, _map: dict[Any, Any] = stage_consts, _names: list[str] = w_names
            ) -> None:
                if e in consts and e not in _map:
                    _map[e] = relax.Var(consts[e], e.ty)
                    _names.append(consts[e])

            relax.analysis.post_order_visit(b.value, visit)
        w_params = [stage_consts[c] for c in stage_consts]
        mut = _Remapper(var_map, stage_consts)
        out_names: list[str] = []
        out_types: list[TensorType] = []
        out_dims: list[tuple[str, ...]] = []
        _check_symbols_defined(s, in_params, own)
        fattrs: dict[str, Any] = {"num_input": len(in_params)}
        for key in _BOUND_ATTRS:  # symbolic dims' declared ranges (memory planning)
            if func.attrs is not None and key in func.attrs:
                fattrs[key] = func.attrs[key]
        with bb.function("main", in_params + w_params, attrs=fattrs):
            with bb.dataflow():
                for u, ty, leaf_params in tuple_inputs:
                    var_map[u] = _rebuild_tuple(ty, iter(leaf_params))
                outs: list[Any] = []
                for u, shape in own_rebound:
                    var_map[u] = bb.emit(shape, name_hint=u)
                for b in own:
                    value = mut.rewrite(b.value)
                    if isinstance(b, relax.MatchCast):
                        v = bb.match_cast(value, b.ty, name_hint=b.var.name)
                    else:
                        v = bb.emit(value, name_hint=b.var.name)
                    var_map[b.var.name] = v
                    if b.var.name in exported:
                        for leaf, path, lty in _leaves(b.var.name, b.var.ty):
                            e = v
                            for i in path:
                                e = relax.TupleGetItem(e, i)
                            out_types.append(_tensor_type(lty, f"stage {s} output {leaf!r}"))
                            out_dims.append(_dim_names(lty))
                            out_names.append(leaf)
                            outs.append(e)
                # one output: the tensor itself (indexing a returned tuple costs ~0.7 µs a call)
                ret = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
            bb.emit_func_output(ret)
        smod = _with_callees(bb.get(), mod, own)
        stages.append(
            StageModule(
                index=s,
                mod=smod,
                ops=tuple(own_all),
                inputs=tuple(in_names),
                outputs=tuple(out_names),
                weights=tuple(w_names),
                input_types=tuple(in_types),
                output_types=tuple(out_types),
                input_dims=tuple(in_dims),
                output_dims=tuple(out_dims),
            )
        )
    return SplitModel(
        stages=tuple(stages),
        inputs=tuple(param_names),
        input_types=input_types,
        outputs=tuple(n for n, _, _, _ in out_leaves),
        output_types=tuple(_tensor_type(t, f"graph output {n!r}") for n, _, _, t in out_leaves),
        weights=MappingProxyType(weights),
        input_dims=tuple(_dim_names(p.ty) for p in func.params),
        output_dims=tuple(_dim_names(t) for _, _, _, t in out_leaves),
    )


def _with_callees(smod: Any, mod: Any, own: list[Any]) -> Any:
    """``smod`` plus the functions of ``mod`` its bindings call (``R.call_tir`` to PrimFuncs the
    importer emitted, e.g. for ONNX ``Clip``), which a stage module would otherwise lack."""
    from tvm import ir, relax

    found: dict[str, Any] = {}

    def visit(e: Any) -> None:
        if isinstance(e, ir.GlobalVar) and e.name_hint != "main":
            found.setdefault(e.name_hint, e)

    for b in own:
        relax.analysis.post_order_visit(b.value, visit)
    for name, gv in found.items():
        if name in [g.name_hint for g in mod.functions]:
            smod[gv] = mod[gv]
    return smod


def _symbols_of(types: list[Any], definable: bool) -> set[str]:
    from tvm import relax

    fn = relax.analysis.definable_tir_vars_in_type if definable else relax.analysis.tir_vars_in_type
    return {str(v.name) for t in types for v in fn(t)}


def _symbol_carriers(
    own: list[Any], reads: list[str], func: Any, var_of: Mapping[str, Any]
) -> list[str]:
    """Graph inputs a stage also reads because its code uses a symbolic dimension that none
    of its other inputs carries as a plain dimension (a stage that only computes sizes from
    ``batch``, say): the smallest graph input carrying each such symbol."""
    params = {p.name: p for p in func.params}
    have = _symbols_of([params[u].ty if u in params else var_of[u].ty for u in reads], True)
    need = _symbols_of([b.var.ty for b in own], False) | _value_symbols(own)
    need -= have
    extra: list[str] = []
    for sym in sorted(need):
        if sym in have:
            continue
        carriers = [p for p in func.params if sym in _symbols_of([p.ty], True)]
        if not carriers:
            continue  # _check_symbols_defined says so
        best = min(carriers, key=lambda p: len(getattr(p.ty.shape, "values", ()) or ()))
        extra.append(best.name)
        have |= _symbols_of([best.ty], True)
    return [e for e in dict.fromkeys(extra) if e not in reads]


def _value_symbols(own: list[Any]) -> set[str]:
    """Symbolic dimensions a stage's expressions use (``R.shape([seq])`` has no ``seq`` in
    its result's type)."""
    from tvm import relax

    out: set[str] = set()
    for b in own:
        try:
            out.update(str(v.name) for v in relax.analysis.free_symbolic_vars(b.value))
        except Exception:  # not every value kind is an expression the analysis takes
            continue
    return out


def _check_symbols_defined(index: int, params: list[Any], own: list[Any]) -> None:
    """Refuse a stage whose code uses a symbolic dimension none of its inputs carries as a
    plain dimension (``(batch * 4,)`` alone cannot give ``batch`` back), in one line."""
    from tvm import relax

    defined: set[str] = set()
    for p in params:
        defined.update(str(v.name) for v in relax.analysis.definable_tir_vars_in_type(p.ty))
    used: set[str] = _value_symbols(own)
    for b in own:
        used.update(str(v.name) for v in relax.analysis.tir_vars_in_type(b.var.ty))
    missing = sorted(used - defined)
    if missing:
        raise CodegenError(
            f"stage {index}: its inputs do not carry the symbolic dimension(s) {missing} as a "
            "plain dimension; cut the model elsewhere or declare fixed sizes with --shape"
        )


def _rebuild_tuple(ty: Any, leaves: Any) -> Any:
    from tvm import relax

    if isinstance(ty, relax.TupleType):
        return relax.Tuple([_rebuild_tuple(f, leaves) for f in ty.fields])
    return next(leaves)


def split_stages(graph: Graph, plan: Plan) -> list[StageModule]:
    """Cut ``graph.relax_mod`` along ``plan.stages`` (see ``split_relax``).

    Args:
        graph: a model-level ``terrazzo.ir.Graph`` from a frontend (it keeps its Relax module).
        plan: a ``terrazzo.placement.Plan``; every op of ``graph`` is in exactly one stage.

    Returns:
        One StageModule per plan stage, in stage-index order.
    """
    return list(split_relax(graph.relax_mod, plan_assignment(graph, plan)).stages)


def plan_assignment(graph: Graph, plan: Plan) -> dict[str, int]:
    """Binding name → stage index from a Plan's stages (every graph op must be placed)."""
    if graph.relax_mod is None:
        raise CodegenError(
            f"graph {graph.name!r} has no Relax module (agent graphs have no codegen)"
        )
    assignment: dict[str, int] = {}
    for st in plan.stages:
        for op in st.ops:
            if op in assignment:
                raise CodegenError(f"op {op!r} is in stages {assignment[op]} and {st.index}")
            assignment[op] = int(st.index)
    return assignment
