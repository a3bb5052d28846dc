"""ONNX frontend: int8 operators in the QOperator form (what onnxruntime's quantizer writes with
``QuantFormat.QOperator``): ``QLinearConv``, ``QLinearMatMul`` and the ``com.microsoft``
``QLinearAdd``/``QLinearMul``/``QLinearSigmoid``/``QLinearLeakyRelu``/
``QLinearGlobalAveragePool``/``QGemm``.

Each is lowered as dequantize → the float op → quantize (Relax ``dequantize``/``quantize``,
the ops TVM's own QuantizeLinear/DequantizeLinear converters use), so a QOperator model gives
what its QDQ twin gives. onnxruntime computes in integers and requantizes once; the two agree
within one int8 rounding step of the output (the suite and the tests check two steps).
Registered in ``onnx_ops.CONVERTERS`` when ``onnx_ops.install()`` runs.
"""

from __future__ import annotations

from typing import Any

from terrazzo.frontend.onnx_ops import CONVERTERS, _onnx_converter_base, _tvm_converter


def _deq(x: Any, scale: Any, zp: Any, axis: int = 1) -> Any:
    from tvm import relax

    if zp is None:
        zp = relax.const(0, str(x.ty.dtype))
    rank = int(x.ty.ndim)
    per_channel = int(scale.ty.ndim) >= 1 and _numel(scale) > 1
    ax = (axis % rank) if per_channel and rank else 0
    if not per_channel:
        ax = 0 if rank == 0 else min(ax, rank - 1)
    return relax.op.dequantize(x, scale, zp, axis=ax, out_dtype="float32")


def _q(y: Any, scale: Any, zp: Any, out_dtype: str | None = None) -> Any:
    from tvm import relax

    dtype = out_dtype or (str(zp.ty.dtype) if zp is not None else "uint8")
    if zp is None:
        zp = relax.const(0, dtype)
    return relax.op.quantize(y, scale, zp, axis=0, out_dtype=dtype)


def _numel(x: Any) -> int:
    n = 1
    for d in x.ty.shape.values:
        n *= int(d)
    return n


def _opt(inputs: Any, k: int) -> Any:
    return inputs[k] if len(inputs) > k and inputs[k] is not None else None


def _float_op(name: str, opset: int, bb: Any, inputs: list[Any], attr: dict[str, Any]) -> Any:
    """TVM's own converter of the float op (padding, groups, transposes handled there)."""
    out = _tvm_converter(name).get_converter(opset)(bb, inputs, attr, None)
    return bb.normalize(out)


class _QBase(_onnx_converter_base()):  # type: ignore[misc]
    @classmethod
    def get_converter(cls, opset: int) -> Any:
        def convert(bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
            return cls.lower(bb, list(inputs), attr, max(opset, 13))

        return convert

    @classmethod
    def lower(cls, bb: Any, inputs: list[Any], attr: dict[str, Any], opset: int) -> Any:
        raise NotImplementedError


class QLinearConv(_QBase):
    """x, x_scale, x_zp, w, w_scale, w_zp (per output channel or per tensor), y_scale, y_zp,
    optional int32 bias (scale x_scale·w_scale)."""

    @classmethod
    def lower(cls, bb: Any, inputs: list[Any], attr: dict[str, Any], opset: int) -> Any:
        from tvm import relax

        x = bb.emit(_deq(inputs[0], inputs[1], inputs[2]))
        w = bb.emit(_deq(inputs[3], inputs[4], inputs[5], axis=0))
        args = [x, w]
        bias = _opt(inputs, 8)
        if bias is not None:
            bscale = bb.emit(relax.op.multiply(inputs[1], inputs[4]))
            args.append(bb.emit(relax.op.multiply(relax.op.astype(bias, "float32"), bscale)))
        y = _float_op("Conv", 11, bb, args, attr)
        return _q(y, inputs[6], inputs[7])


class QLinearMatMul(_QBase):
    """a, a_scale, a_zp, b, b_scale, b_zp (per tensor or per column), y_scale, y_zp."""

    @classmethod
    def lower(cls, bb: Any, inputs: list[Any], attr: dict[str, Any], opset: int) -> Any:
        from tvm import relax

        a = bb.emit(_deq(inputs[0], inputs[1], inputs[2], axis=-2))
        b = bb.emit(_deq(inputs[3], inputs[4], inputs[5], axis=-1))
        return _q(bb.emit(relax.op.matmul(a, b)), inputs[6], inputs[7])


def _binary(fn_name: str) -> Any:
    class QLinearBinary(_QBase):
        """com.microsoft QLinearAdd/QLinearMul: A, A_scale, A_zp, B, B_scale, B_zp, C_scale,
        C_zp (numpy broadcasting)."""

        @classmethod
        def lower(cls, bb: Any, inputs: list[Any], attr: dict[str, Any], opset: int) -> Any:
            from tvm import relax

            a = bb.emit(_deq(inputs[0], inputs[1], _opt(inputs, 2)))
            b = bb.emit(_deq(inputs[3], inputs[4], _opt(inputs, 5)))
            y = bb.emit(getattr(relax.op, fn_name)(a, b))
            return _q(y, inputs[6], _opt(inputs, 7), str(inputs[0].ty.dtype))

    return QLinearBinary


def _unary(kind: str) -> Any:
    class QLinearUnary(_QBase):
        """com.microsoft QLinearSigmoid/QLinearLeakyRelu/QLinearGlobalAveragePool:
        X, X_scale, X_zp, Y_scale, Y_zp."""

        @classmethod
        def lower(cls, bb: Any, inputs: list[Any], attr: dict[str, Any], opset: int) -> Any:
            from tvm import relax

            from terrazzo.errors import FrontendError

            op = relax.op
            x = bb.emit(_deq(inputs[0], inputs[1], _opt(inputs, 2)))
            if kind == "sigmoid":
                y = op.sigmoid(x)
            elif kind == "leaky_relu":
                y = op.nn.leakyrelu(x, float(attr.get("alpha", 0.01)))
            else:
                if int(attr.get("channels_last", 0)):
                    raise FrontendError(
                        "com.microsoft.QLinearGlobalAveragePool: channels_last=1 is not supported"
                    )
                y = op.mean(x, axis=list(range(2, int(x.ty.ndim))), keepdims=True)
            y = bb.emit(y)
            return _q(y, inputs[3], _opt(inputs, 4), str(inputs[0].ty.dtype))

    return QLinearUnary


class QGemm(_QBase):
    """com.microsoft QGemm: A, a_scale, a_zp, B, b_scale, b_zp, C (int32, scale
    a_scale·b_scale), y_scale, y_zp (absent: a float output); alpha, transA, transB."""

    @classmethod
    def lower(cls, bb: Any, inputs: list[Any], attr: dict[str, Any], opset: int) -> Any:
        from tvm import relax

        op = relax.op
        trans_b = int(attr.get("transB", 0))
        a = bb.emit(_deq(inputs[0], inputs[1], inputs[2]))
        b = bb.emit(_deq(inputs[3], inputs[4], inputs[5], axis=0 if trans_b else 1))
        args = [a, b]
        c = _opt(inputs, 6)
        if c is not None:
            cscale = bb.emit(op.multiply(inputs[1], inputs[4]))
            args.append(bb.emit(op.multiply(op.astype(c, "float32"), cscale)))
        fattr: dict[str, Any] = {k: attr[k] for k in ("alpha", "transA", "transB") if k in attr}
        y = _float_op("Gemm", 13, bb, args, fattr)
        ys = _opt(inputs, 7)
        if ys is None:
            return y
        return _q(y, ys, _opt(inputs, 8), str(inputs[0].ty.dtype))


def register() -> None:
    """Add the QOperator converters to ``onnx_ops.CONVERTERS`` (idempotent)."""
    CONVERTERS.setdefault("QLinearConv", QLinearConv)
    CONVERTERS.setdefault("QLinearMatMul", QLinearMatMul)
    CONVERTERS.setdefault("QLinearAdd", _binary("add"))
    CONVERTERS.setdefault("QLinearMul", _binary("multiply"))
    CONVERTERS.setdefault("QLinearSigmoid", _unary("sigmoid"))
    CONVERTERS.setdefault("QLinearLeakyRelu", _unary("leaky_relu"))
    CONVERTERS.setdefault("QLinearGlobalAveragePool", _unary("gap"))
    CONVERTERS.setdefault("QGemm", QGemm)
