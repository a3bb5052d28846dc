"""Keep symbolic dimensions symbolic: resolve sizes the ONNX importer computes at run time.

Exporters compute sizes from ``Shape`` (``Range(0, Shape(x)[1])`` for position ids and
attention masks). TVM's ONNX importer turns such a size into a small int64 tensor, then into
a fresh symbol defined by ``match_cast`` (``range_len_0``) that it cannot relate to the input
symbols (``seq``), so shapes downstream are unknown to the planner and cannot cross a stage
cut. :func:`resolve_shape_symbols` evaluates those little shape computations symbolically
(``shape_to_tensor``, reshapes, casts, integer arithmetic, ``concat``, constant ``take``) and
binds each fresh symbol to the expression it equals (``seq``). The ``match_cast`` stays, as
a run-time check that the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Scalars per tracked shape tensor (shape computations are tiny; anything larger is data).
_MAX_ELEMS = 8


def _const_values(e: Any) -> list[Any] | None:
    import numpy as np
    import tvm

    if type(e).__name__ not in ("GenericConst", "Constant"):
        return None
    arr = e.value.numpy()
    if arr.dtype.kind not in "iu" or arr.size > _MAX_ELEMS:
        return None
    return [tvm.tirx.const(int(v), "int64") for v in np.asarray(arr).reshape(-1)]


class _Evaluator:
    def __init__(self) -> None:
        self.known: dict[Any, list[Any]] = {}

    def eval(self, e: Any) -> list[Any] | None:  # noqa: C901 - one case per op
        import tvm
        from tvm import relax, tirx

        if isinstance(e, relax.Var):
            return self.known.get(e)
        consts = _const_values(e)
        if consts is not None:
            return consts
        if isinstance(e, relax.ShapeExpr):
            return list(e.values)
        if type(e).__name__ == "PrimValue":
            return [e.value]
        if not isinstance(e, relax.Call) or not isinstance(e.op, tvm.ir.Op):
            return None
        op = e.op.name.removeprefix("relax.")
        args = list(e.args)
        if op == "call_pure_packed" and "tensor_to_shape" in str(args[0]):
            return self.eval(args[1])  # tensor_to_shape as DecomposeOpsForInference lowers it
        if op in ("shape_to_tensor", "tensor_to_shape", "astype", "reshape", "squeeze",
                  "expand_dims", "flatten"):  # fmt: skip
            return self.eval(args[0])
        if op == "negative":
            a = self.eval(args[0])
            return None if a is None else [-x for x in a]
        binary = {
            "add": lambda x, y: x + y,
            "subtract": lambda x, y: x - y,
            "multiply": lambda x, y: x * y,
            "floor_divide": tirx.floordiv,
            "maximum": tirx.max,
            "minimum": tirx.min,
        }
        if op in binary:
            a, b = self.eval(args[0]), self.eval(args[1])
            if a is None or b is None:
                return None
            if len(a) == 1 and len(b) > 1:
                a = a * len(b)
            if len(b) == 1 and len(a) > 1:
                b = b * len(a)
            if len(a) != len(b):
                return None
            return [binary[op](x, y) for x, y in zip(a, b, strict=True)]
        if op == "concat" and isinstance(args[0], relax.Tuple):
            out: list[Any] = []
            for f in args[0].fields:
                v = self.eval(f)
                if v is None:
                    return None
                out.extend(v)
            return out
        if op == "take":
            a, idx = self.eval(args[0]), _const_values(args[1])
            if a is None or idx is None:
                return None
            picked = []
            for i in idx:
                k = int(i.value)
                if not -len(a) <= k < len(a):
                    return None
                picked.append(a[k])
            return picked
        return None


def resolve_shape_symbols(mod: Any, ranges: Mapping[str, tuple[int, int]]) -> Any:
    """``mod`` with the importer's run-time size symbols bound to expressions of the input
    symbols (module docstring); unchanged when there are none.

    Args:
        mod: a Relax module whose ``main`` takes symbolic shapes.
        ranges: input symbol → declared ``(lo, hi)``; the simplifier uses them (``max(seq, 0)``
            is ``seq`` when ``seq >= 1``).
    """
    from tvm import relax

    for _ in range(4):  # a size computed from an earlier resolved size resolves next round
        subst = _one_round(mod, ranges)
        if not subst:
            return mod
        out = mod.clone()
        out["main"] = mod["main"].bind_symbolic_vars(subst)
        mod = relax.transform.Normalize()(out)
    return mod


def _one_round(mod: Any, ranges: Mapping[str, tuple[int, int]]) -> dict[Any, Any]:
    import tvm
    from tvm import relax
    from tvm.sym import Analyzer
    from tvm.tirx.analysis import undefined_vars

    func = mod["main"]
    analyzer = Analyzer()
    inputs: set[str] = set()
    for p in func.params:
        for v in relax.analysis.definable_tir_vars_in_type(p.ty):
            inputs.add(str(v.name))
            if str(v.name) in ranges:
                lo, hi = ranges[str(v.name)]
                analyzer.bind(v, tvm.ir.Range.from_min_extent(lo, hi - lo + 1))
    ev = _Evaluator()
    subst: dict[Any, Any] = {}
    for block in func.body.blocks:
        for b in block.bindings:
            value = ev.eval(b.value)
            if value is None or len(value) > _MAX_ELEMS:
                continue
            value = [analyzer.simplify(x) for x in value]
            ev.known[b.var] = value
            dims = getattr(b.ty, "values", None) if isinstance(b, relax.MatchCast) else None
            for d, x in zip(dims or [], value, strict=False):
                if not isinstance(d, tvm.tirx.Var) or str(d.name) in inputs or d in subst:
                    continue
                if {str(u.name) for u in undefined_vars(x)} <= inputs:
                    subst[d] = x
    return subst
