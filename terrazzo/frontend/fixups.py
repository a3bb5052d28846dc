"""Relax rewrites applied after import and before any TVM build (frontend → codegen boundary).

TVM 0.27 cannot build a few Relax programs that its own frontends produce. Each rule here
fixes one such pattern; ``prepare_for_build`` applies all of them and is what codegen and
``build_and_run`` call before ``tvm.compile``.

Rules:

* ``cumsum``/``cumprod`` over a ``bool`` tensor with no explicit ``dtype``. The torch
  frontend emits ``R.cumsum(mask)`` for ``torch.cumsum(bool_tensor)`` (transformers' causal
  mask code does this to detect packed sequences in Llama and GPT-2). Relax infers a
  ``bool`` result, legalises it to a TIR scan whose accumulator is ``bool``, and LLVM codegen
  then aborts in ``CodeGenLLVM::CreateAdd`` (``t.MatchesCode(kDLFloat)``): an ``add`` on
  ``uint1`` is neither int nor float to it. Torch itself returns ``int64`` for a cumulative
  sum of booleans, so the rewrite casts the input to ``int64`` and scans in ``int64``; the
  mutator re-infers the types of every downstream binding, so the result matches torch.
* ``matmul`` whose contracted dimension is 1 (``[..., M, 1] @ [..., 1, N]``, an outer
  product: a static KV cache's row write in LLM decode) becomes the broadcast ``multiply`` it
  equals exactly. Found on an H200: dlight's GPU matmul rule miscompiles such a matmul fused
  with an elementwise producer and epilogue (``cache * keep + write @ k``; relative error 1.08
  against the CPU build of the same kernel), so decoded tokens diverged from the reference.
* ``take`` in ``fast`` mode (no index handling) becomes ``wrap`` mode. The torch frontend
  emits ``take(x, idx)`` for ``x[:, [-1, 0]]`` with the negative index as written, and ``fast``
  then reads memory before the tensor (silent garbage that changes from run to run). ``wrap``
  equals torch/numpy indexing for every valid index in ``[-n, n)``; an invalid one wraps
  instead of reading out of bounds. The cost is one modulo per gathered index.
* ONNX ``Max``/``Min`` (TVM imports them as ``max(stack(xs), axis=0)``) become pairwise
  ``maximum``/``minimum``: ConvertLayout, run for NHWC convolutions on CPU targets, fails on
  the 5-D stack (``Invalid SLayout``), so a CNN using ``Max`` could not be built.
"""

from __future__ import annotations

from typing import Any

_INT_SCANS = ("relax.cumsum", "relax.cumprod")


def _static_dims(sinfo: Any) -> list[int] | None:
    shape = getattr(sinfo, "shape", None)
    values = getattr(shape, "values", None)
    if values is None:
        return None
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        return None


def _outer_product(call: Any) -> Any:
    """``a @ b`` as ``a * b`` when the contracted dimension is 1 (else None)."""
    from tvm import relax

    a, b = call.args
    da, db = _static_dims(a.ty), _static_dims(b.ty)
    if da is None or db is None or len(da) < 2 or len(db) < 2 or da[-1] != 1 or db[-2] != 1:
        return None
    out = call.attrs.out_dtype
    if out is not None and str(out) not in ("", "void", str(a.ty.dtype)):
        return None
    if str(a.ty.dtype) != str(b.ty.dtype):
        return None
    return relax.op.multiply(a, b)


def _make_mutator() -> Any:
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _BoolScanToInt64(PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: relax.Call) -> relax.Expr:
            call = super().visit_call_(call)
            op = getattr(call, "op", None)
            if isinstance(op, tvm.ir.Op) and op.name == "relax.take" and call.attrs.mode == "fast":
                axis = call.attrs.axis
                return relax.op.take(
                    call.args[0], call.args[1], None if axis is None else int(axis), mode="wrap"
                )
            if isinstance(op, tvm.ir.Op) and op.name == "relax.matmul":
                outer = _outer_product(call)
                return call if outer is None else outer
            if isinstance(op, tvm.ir.Op) and op.name in _STACK_REDUCE:
                pairwise = self._stack_reduce(call, op.name)
                return call if pairwise is None else pairwise
            if not isinstance(op, tvm.ir.Op) or op.name not in _INT_SCANS:
                return call
            data = call.args[0]
            sinfo = data.ty
            if not isinstance(sinfo, relax.TensorType) or sinfo.dtype != "bool":
                return call
            if call.attrs.dtype is not None and str(call.attrs.dtype) not in ("", "void"):
                return call
            as_int = self.builder_.emit(relax.op.astype(data, "int64"))
            fn = relax.op.cumsum if op.name == "relax.cumsum" else relax.op.cumprod
            return fn(as_int, axis=call.attrs.axis, dtype="int64", exclusive=call.attrs.exclusive)

        def _stack_reduce(self, call: relax.Call, name: str) -> relax.Expr | None:
            """``max(stack(xs, axis=0), axis=[0])`` as ``maximum(maximum(x0, x1), ...)``."""
            axis = call.attrs.axis
            if call.attrs.keepdims or axis is None or [int(a) for a in axis] != [0]:
                return None
            src = call.args[0]
            stacked = self.lookup_binding(src) if isinstance(src, relax.Var) else src
            sop = getattr(stacked, "op", None)
            if not isinstance(sop, tvm.ir.Op) or sop.name != "relax.stack":
                return None
            if int(stacked.attrs.axis) != 0:
                return None
            items = stacked.args[0]
            fields = list(items.fields) if isinstance(items, relax.Tuple) else None
            if not fields:
                return None
            pairwise = relax.op.maximum if name == "relax.max" else relax.op.minimum
            out = fields[0]
            for f in fields[1:]:
                out = pairwise(out, f)
            return out

    return _BoolScanToInt64


#: TVM's ONNX importer lowers n-ary ``Max``/``Min`` as a reduction over a stack of the
#: broadcast operands; ConvertLayout (NHWC convolutions on CPU) then fails on the 5-D stack
#: (``Invalid SLayout``). The pairwise form is the same values (NaN propagating either way).
_STACK_REDUCE = ("relax.max", "relax.min")


def prepare_for_build(mod: Any) -> Any:
    """Rewrite a Relax module so that TVM 0.27 can build it; semantics are preserved.

    Args:
        mod: a ``tvm.IRModule`` as produced by ``from_onnx``/``from_torch``.

    Returns:
        A new ``tvm.IRModule`` (the input is not modified).
    """
    from tvm import relax

    mutator_cls = _make_mutator()
    out = mod.clone()
    for gv, func in mod.functions.items():
        if not isinstance(func, relax.Function):
            continue
        m = mutator_cls(out)
        new_func = m.visit_expr(func)
        out[gv] = new_func
    # Drops the stacks the pairwise Max/Min rewrite left unread.
    entries = [gv.name_hint for gv, f in out.functions.items() if isinstance(f, relax.Function)]
    return relax.transform.DeadCodeElimination(entries)(out)
