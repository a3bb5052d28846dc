"""Frontend step after import: give the Relax ``main`` the model's own input and output names.

TVM's importers name values after themselves: an ONNX output called ``output`` comes back as
``gv``, ``x.in`` as ``x_in``, a torch output as ``gv``. Serving, ``terrazzo run`` and
``inspect`` show these names to users, and v2 clients ask for outputs by name, so every
frontend renames ``main`` here: parameters take the model's input names and the binding of
each returned tensor takes the model's output name (in the model's order). Names are kept
verbatim (``input.1``, ``logits:0``); internal values that would clash get a ``_k`` suffix.

An output that is a graph input (an ONNX ``Identity``) or that the model returns twice gets a
copy binding (``R.astype`` to its own dtype) so that every output name is a value of its own.

Output names of a ``torch.nn.Module`` follow the structure ``forward`` returns
(``torch_output_names``): dict keys (``logits``, ``past.0``) where it returns a dict or a
``ModelOutput``, else ``output_0``, ``output_1``, ... by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from terrazzo.errors import FrontendError


def _bindings(func: Any) -> list[Any]:
    return [b for block in func.body.blocks for b in block.bindings]


def _return_leaves(expr: Any, tuples: dict[str, Any]) -> list[Any]:
    """The tensor expressions ``main`` returns, flattened (tuple literals resolved)."""
    from tvm import relax

    if isinstance(expr, relax.Tuple):
        return [leaf for f in expr.fields for leaf in _return_leaves(f, tuples)]
    if isinstance(expr, relax.Var) and expr.name in tuples:
        return _return_leaves(tuples[expr.name], tuples)
    if isinstance(expr, relax.Var) and isinstance(expr.ty, relax.TupleType):
        return [
            leaf
            for i in range(len(expr.ty.fields))
            for leaf in _return_leaves(relax.TupleGetItem(expr, i), tuples)
        ]
    return [expr]


def keep_signature_names(mod: Any, inputs: Sequence[str], outputs: Sequence[str]) -> Any:
    """A copy of ``mod`` whose ``main`` parameters and returned values carry the given names.

    Args:
        mod: a Relax module whose ``main`` has uniquely named bindings (after
            ``uniquify_names``); its parameters are the model inputs in order.
        inputs: the model's input names, one per parameter.
        outputs: the model's output names, one per returned tensor leaf.

    Returns:
        The renamed module (``main`` returns one tensor, or a flat tuple of them).

    Raises:
        FrontendError: the counts differ, or names repeat.
    """
    from tvm import relax

    func = mod["main"]
    bindings = _bindings(func)
    tuples = {b.var.name: b.value for b in bindings if isinstance(b.value, relax.Tuple)}
    leaves = _return_leaves(func.body.body, tuples)
    if len(inputs) != len(func.params):
        raise FrontendError(
            f"the model lists {len(inputs)} inputs, the imported graph has {len(func.params)}"
        )
    if len(outputs) != len(leaves):
        raise FrontendError(
            f"the model lists {len(outputs)} outputs {list(outputs)}, the imported graph "
            f"returns {len(leaves)} tensors"
        )
    for kind, names in (("input", inputs), ("output", outputs)):
        dup = sorted({n for n in names if list(names).count(n) > 1})
        if dup or any(not n for n in names):
            raise FrontendError(f"{kind} names must be unique and non-empty, found {list(names)}")

    param_of = {p.name: p for p in func.params}
    new_name: dict[str, str] = {p.name: n for p, n in zip(func.params, inputs, strict=True)}
    # Each output leaf is renamed in place when it is a binding returned once; else copied.
    copies: list[tuple[int, Any]] = []
    seen: set[str] = set()
    for i, (leaf, name) in enumerate(zip(leaves, outputs, strict=True)):
        var = leaf if isinstance(leaf, relax.Var) else None
        if var is not None and var.name in param_of and new_name[var.name] == name:
            continue  # an input returned as the output of the same name
        if var is None or var.name in param_of or var.name in seen or var.name in tuples:
            copies.append((i, leaf))
        else:
            new_name[var.name] = name
        if var is not None:
            seen.add(var.name)
    reserved = set(inputs) | set(outputs)
    taken = set(reserved)
    returned_tuples = _returned_tuple_names(func.body.body, tuples)
    for b in bindings:
        n = b.var.name
        if n in new_name or n in returned_tuples:
            continue
        cand, k = n, 1
        while cand in taken:
            cand, k = f"{n}_{k}", k + 1
        taken.add(cand)
        new_name[n] = cand

    single = len(leaves) == 1
    bb = relax.BlockBuilder()
    params = [relax.Var(new_name[p.name], p.ty) for p in func.params]
    var_map: dict[str, Any] = {p.name: q for p, q in zip(func.params, params, strict=True)}
    mut = _ByName(var_map)
    with bb.function("main", params, attrs=dict(func.attrs) if func.attrs else None):
        with bb.dataflow():
            for b in bindings:
                if b.var.name in returned_tuples:
                    continue  # the return tuple is rebuilt flat below
                value = mut.rewrite(b.value)
                name = new_name[b.var.name]
                if isinstance(b, relax.MatchCast):
                    v = bb.match_cast(value, b.ty, name_hint=name)
                    v = _bind(bb, v, name, output=False) if v.name != name else v
                else:  # the one output bound once is the function's result
                    out = single and not copies and leaves[0].same_as(b.var)
                    v = _bind(bb, value, name, output=out)
                var_map[b.var.name] = v
            outs = [mut.rewrite(leaf) for leaf in leaves]
            for i, leaf in copies:
                copy = relax.op.astype(mut.rewrite(leaf), leaf.ty.dtype)
                outs[i] = _bind(bb, copy, outputs[i], output=single)
            if single:
                ret = outs[0]
                if isinstance(ret, relax.DataflowVar):  # a match_cast output
                    ret = bb.emit_output(ret)
            else:
                used = taken | set(new_name.values())
                tname, k = "gv", 1
                while tname in used:
                    tname, k = f"gv_{k}", k + 1
                ret = bb.emit_output(relax.Tuple(outs), name_hint=tname)
        bb.emit_func_output(ret)
    out = bb.get()
    for gv, f in mod.functions.items():
        if gv.name_hint != "main":
            out[gv] = f
    return relax.transform.Normalize()(out)


def _bind(bb: Any, value: Any, name: str, *, output: bool) -> Any:
    """Emit ``name = value`` keeping ``name`` verbatim (``emit(name_hint=)`` rewrites dots)."""
    from tvm import relax

    value = bb.normalize(value)
    var = (relax.Var if output else relax.DataflowVar)(name, value.ty)
    bb.emit_normalized(relax.VarBinding(var, value))
    return var


def _returned_tuple_names(ret: Any, tuples: dict[str, Any]) -> set[str]:
    """Tuple-literal bindings that only build the return value (dropped: outputs go flat)."""
    from tvm import relax

    out: set[str] = set()
    todo = [ret]
    while todo:
        e = todo.pop()
        if isinstance(e, relax.Var) and e.name in tuples:
            out.add(e.name)
            todo.append(tuples[e.name])
        elif isinstance(e, relax.Tuple):
            todo.extend(e.fields)
    return out


class _ByName:
    """Rewrites an expression, replacing vars by name (names are unique in ``main``)."""

    def __init__(self, var_map: dict[str, Any]) -> None:
        from tvm import relax

        var_map_ = var_map

        @relax.expr_functor.mutator
        class _M(relax.PyExprMutator):  # type: ignore[misc]
            def visit_var_(self, op: Any) -> Any:
                return var_map_.get(op.name, op)

            def visit_dataflow_var_(self, op: Any) -> Any:
                return var_map_.get(op.name, op)

        self._m = _M()

    def rewrite(self, expr: Any) -> Any:
        return self._m.visit_expr(expr)


def torch_output_names(out_spec: Any) -> list[str]:
    """Output names of a ``torch.export`` program from its output pytree spec.

    Dict keys and attribute names make the path (``logits``, ``past.0.1``); positions in a
    tuple or list are ``output_0``, ``output_1``, ... at the top level and ``.i`` below it.
    """
    from torch.utils import _pytree as pytree

    n = out_spec.num_leaves
    dummy = pytree.tree_unflatten(list(range(n)), out_spec)
    flat, _ = pytree.tree_flatten_with_path(dummy)
    names: list[str] = []
    for path, _leaf in flat:
        parts: list[str] = []
        for k in path:
            key = getattr(k, "key", getattr(k, "name", getattr(k, "idx", None)))
            parts.append(str(key) if not isinstance(key, int) or parts else f"output_{key}")
        names.append(".".join(parts) if parts else "output_0")
    if len(set(names)) != len(names):  # keys that print alike: fall back to positions
        names = [f"output_{i}" for i in range(n)]
    return names
