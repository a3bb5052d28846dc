"""ONNX frontend: converters that keep symbolic sizes symbolic (dynamic batch/sequence exports).

TVM 0.27's converters give a fresh run-time symbol to a size they cannot see statically; a
later broadcast between that symbol and an input symbol then loses the shape altogether
(``R.Tensor(ndim=3)``), and the next converter that needs a rank or a shape fails. GPT-2 and
T5 exported with a dynamic sequence axis showed it: ``Range(0, Shape(x)[1], 1)`` (position
ids, relative positions) came out with a length ``range_len_0`` instead of ``seq``. Each
converter here replaces TVM's (through ``onnx_ops.register``) only for the symbolic case and
defers to it otherwise; ``onnx_ops.install`` loads this module.
"""

from __future__ import annotations

from typing import Any

from terrazzo.frontend.onnx_ops import _tvm_converter, register


def _prim_dtype(x: Any) -> str:
    return str(getattr(x, "dtype", None) or x.ty)


def _int_scalar(x: Any) -> Any:
    """A Range bound as a Python int (a constant) or a TIR expression (a size computed from
    shapes), else None (a run-time tensor: TVM's converter handles it)."""
    import tvm

    if isinstance(x, tvm.ir.GenericConst):
        value = x.value.numpy()
        if value.size != 1 or value.dtype.kind not in "iu":
            return None
        return int(value.reshape(-1)[0])
    if tvm.ir.is_prim_expr(x) and "int" in _prim_dtype(x):
        return x
    return None


@register("Range")
class Range(_tvm_converter("OnnxOpConverter")):  # type: ignore[misc]
    """ONNX Range over integers with bounds computed from symbolic sizes and a constant
    step: ``arange(start, limit, delta)`` directly, whose length Relax infers as an
    expression of the bounds (``Range(0, seq, 1)`` has length ``seq``). Float ranges, a
    step that is not a constant, and bounds held in run-time tensors go to TVM's converter."""

    @classmethod
    def _impl_v11(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx.onnx_frontend import get_constant

        bounds = [get_constant(x, params) for x in inputs[:3]]
        start, limit, delta = (_int_scalar(b) for b in bounds)
        symbolic = any(tvm.ir.is_prim_expr(v) and not isinstance(v, int) for v in (start, limit))
        if start is None or limit is None or not isinstance(delta, int) or delta == 0:
            symbolic = False
        if not symbolic:
            return _tvm_converter("Range").get_converter(11)(bb, inputs, attr, params)
        first = bounds[0]
        dtype = _prim_dtype(first) if tvm.ir.is_prim_expr(first) else str(first.ty.dtype)
        return relax.op.arange(start, limit, delta, dtype)
