"""ONNX frontend: Terrazzo's own per-op converters, registered by op and opset in one table.

TVM's Relax ONNX importer looks converters up in ``_get_convert_map()`` (op name → an
``OnnxOpConverter`` subclass whose ``_impl_vN`` methods cover opset N and later, the highest
``N`` not above the model's opset winning). ``CONVERTERS`` here is the one place the project
adds or replaces entries: ``@register("Op")`` on a class with ``_impl_vN`` methods.
``install()`` merges the table (and the RNN converters of ``onnx_rnn``) into TVM's, and makes
the importer remember which node it is converting, so a failure names the op that failed
(``current_op()``) rather than the last node of the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CONVERTERS: dict[str, Any] = {}

# The node TVM's importer is converting now: (op_type, domain); set by the hook install() adds.
_CURRENT: dict[str, str] = {"op": "", "domain": ""}


def register(op: str) -> Callable[[Any], Any]:
    """Class decorator: ``cls`` (with ``_impl_vN`` methods) converts ONNX op ``op``."""

    def deco(cls: Any) -> Any:
        CONVERTERS[op] = cls
        return cls

    return deco


def current_op() -> str:
    """The op type (``domain.Op`` outside the default domain) being converted, or ``""``."""
    op, domain = _CURRENT["op"], _CURRENT["domain"]
    return f"{domain}.{op}" if domain not in ("", "ai.onnx") and op else op


def reset_current_op() -> None:
    """Forget the node last converted (before a new import)."""
    _CURRENT["op"] = _CURRENT["domain"] = ""


def install() -> None:
    """Add the converters to TVM's ONNX converter table and the node hook (idempotent)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    import terrazzo.frontend.onnx_dynamic  # noqa: F401 - registers its converters
    from terrazzo.frontend.onnx_quant import register as register_quant
    from terrazzo.frontend.onnx_rnn import register as register_rnn

    register_rnn()
    register_quant()
    _register_refusals()
    current = onnx_frontend._get_convert_map
    if not getattr(current, "_terrazzo_ops", False):

        def with_ops() -> dict[str, Any]:
            table = dict(current())
            table.update(CONVERTERS)
            return table

        with_ops._terrazzo_ops = True  # type: ignore[attr-defined]
        # onnx_rnn's register() checks its own mark: keep it, or each call would wrap again.
        with_ops._terrazzo_rnn = True  # type: ignore[attr-defined]
        onnx_frontend._get_convert_map = with_ops

    proto = onnx_frontend.ONNXGraphImporter
    parse = proto._parse_value_proto
    if not getattr(parse, "_terrazzo_hook", False):

        def hooked(self: Any, value_proto: Any) -> Any:
            if hasattr(value_proto, "op_type"):
                _CURRENT["op"] = value_proto.op_type
                _CURRENT["domain"] = value_proto.domain
            return parse(self, value_proto)

        hooked._terrazzo_hook = True  # type: ignore[attr-defined]
        proto._parse_value_proto = hooked


def _static(x: Any, what: str) -> list[int]:
    from terrazzo.errors import FrontendError

    try:
        return [int(d) for d in x.ty.shape.values]
    except (AttributeError, TypeError, ValueError):
        raise FrontendError(
            f"ONNX {what} needs static input shapes; fix them with --shape"
        ) from None


def _onnx_converter_base() -> Any:
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    return OnnxOpConverter


@register("Attention")
class Attention(_onnx_converter_base()):  # type: ignore[misc]
    """ONNX Attention (opsets 23, 24): 3-D or 4-D Q/K/V, boolean or additive ``attn_mask``
    (right-padded to the key length), ``is_causal`` (bottom-right aligned with a past cache),
    ``past_key``/``past_value`` and the ``present_*`` outputs, grouped-query heads,
    ``scale``, ``softcap``, ``qk_matmul_output_mode`` 0-3; a row with every key masked gives
    zeros. Refused with one line: ``nonpad_kv_seqlen``, sliding windows."""

    @classmethod
    def _impl_v23(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        import math

        from tvm import relax

        from terrazzo.errors import FrontendError

        op = relax.op
        q, k, v = inputs[0], inputs[1], inputs[2]
        mask = inputs[3] if len(inputs) > 3 else None
        past_k = inputs[4] if len(inputs) > 4 else None
        past_v = inputs[5] if len(inputs) > 5 else None
        if len(inputs) > 6 and inputs[6] is not None:
            raise FrontendError("ONNX Attention: input 'nonpad_kv_seqlen' is not supported")
        for key in ("left_window_size", "right_window_size"):
            if int(attr.get(key, -1)) >= 0:
                raise FrontendError(f"ONNX Attention: attribute {key!r} is not supported")
        qs = _static(q, "Attention")
        dtype = str(q.ty.dtype)
        three_d = len(qs) == 3
        if three_d:
            qh, kvh = int(attr["q_num_heads"]), int(attr["kv_num_heads"])

            def heads(x: Any, n: int) -> Any:
                b, s, h = _static(x, "Attention")
                x = bb.emit(op.reshape(x, [b, s, n, h // n]))
                return bb.emit(op.permute_dims(x, [0, 2, 1, 3]))

            q, k, v = heads(q, qh), heads(k, kvh), heads(v, kvh)
        if past_k is not None:
            k = bb.emit(op.concat([past_k, k], axis=2))
        if past_v is not None:
            v = bb.emit(op.concat([past_v, v], axis=2))
        present_k, present_v = k, v
        # fp16/bf16 attention is computed in fp32 and rounded once at the end (what
        # onnxruntime does; a half-precision softmax is off by more than the tolerance).
        out_dtype = dtype
        if dtype in ("float16", "bfloat16"):
            dtype = "float32"
            q, k, v = (bb.emit(op.astype(t, dtype)) for t in (q, k, v))
            if mask is not None and str(mask.ty.dtype) != "bool":
                mask = bb.emit(op.astype(mask, dtype))
        b, qh, sq, hd = _static(q, "Attention")
        kvh, skv = _static(k, "Attention")[1], _static(k, "Attention")[2]
        past_len = _static(past_k, "Attention")[2] if past_k is not None else 0
        scale = float(attr.get("scale", 1.0 / math.sqrt(hd)))
        if qh != kvh:
            k = bb.emit(op.repeat(k, qh // kvh, axis=1))
            v = bb.emit(op.repeat(v, qh // kvh, axis=1))
        root = relax.const(math.sqrt(scale), dtype)
        scores = bb.emit(
            op.matmul(op.multiply(q, root), op.permute_dims(op.multiply(k, root), [0, 1, 3, 2]))
        )
        softcap = float(attr.get("softcap", 0.0))
        if softcap > 0:
            cap = relax.const(softcap, dtype)
            scores = bb.emit(op.multiply(op.tanh(op.divide(scores, cap)), cap))
        zero, ninf = relax.const(0.0, dtype), relax.const(float("-inf"), dtype)
        bias: Any = None
        if mask is not None:
            ms = _static(mask, "Attention")
            mdt = str(mask.ty.dtype)
            if ms[-1] < skv:
                pad_to = [*ms[:-1], skv - ms[-1]]
                fill = relax.const(False, "bool") if mdt == "bool" else ninf
                mask = bb.emit(op.concat([mask, op.full(pad_to, fill, mdt)], axis=-1))
            bias = op.where(mask, zero, ninf) if mdt == "bool" else mask
        if int(attr.get("is_causal", 0)):
            import numpy as np

            allowed = np.arange(skv)[None, :] <= np.arange(sq)[:, None] + past_len
            causal = relax.const(np.where(allowed, 0.0, -np.inf).astype(dtype))
            bias = causal if bias is None else op.add(bias, causal)
        if bias is not None:
            bias = bb.emit(op.add(op.zeros([sq, skv], dtype), bias))
        with_bias = bb.emit(op.add(scores, bias)) if bias is not None else scores
        mode = int(attr.get("qk_matmul_output_mode", 0))
        row_max = bb.emit(op.max(with_bias, axis=-1, keepdims=True))
        safe_max = op.where(op.equal(row_max, ninf), zero, row_max)
        ex = bb.emit(op.exp(op.subtract(with_bias, safe_max)))
        total = op.sum(ex, axis=-1, keepdims=True)
        one = relax.const(1.0, dtype)
        probs = bb.emit(op.divide(ex, op.where(op.equal(total, zero), one, total)))
        if bias is not None:
            masked_row = op.equal(op.max(bias, axis=-1, keepdims=True), ninf)
            probs = bb.emit(op.where(masked_row, zero, probs))
        qk_out = {0: scores, 1: scores, 2: with_bias, 3: probs}.get(mode)
        if qk_out is None:
            raise FrontendError(f"ONNX Attention: qk_matmul_output_mode={mode} is not supported")
        y = bb.emit(op.matmul(probs, v))
        if three_d:
            y = bb.emit(op.permute_dims(y, [0, 2, 1, 3]))
            y = bb.emit(op.reshape(y, [b, sq, -1]))
        if out_dtype != dtype:
            y, qk_out = bb.emit(op.astype(y, out_dtype)), bb.emit(op.astype(qk_out, out_dtype))
        return relax.Tuple([y, present_k, present_v, qk_out])


def _nll(bb: Any, logp: Any, target: Any, weight: Any, attr: dict[str, Any], op_name: str) -> Any:
    """Negative log-likelihood of ``logp`` [N, C, d...] at int ``target`` [N, d...] (spec)."""
    import numpy as np
    from tvm import relax

    from terrazzo.errors import FrontendError

    op = relax.op
    shape = _static(logp, op_name)
    dtype = str(logp.ty.dtype)
    classes = shape[1]
    reduction = attr.get("reduction", b"mean")
    reduction = reduction.decode() if isinstance(reduction, bytes) else str(reduction)
    if reduction not in ("none", "sum", "mean"):
        raise FrontendError(f"ONNX {op_name}: reduction={reduction!r} is not supported")
    tgt = bb.emit(op.expand_dims(op.astype(target, "int64"), 1))  # [N, 1, d...]
    cls = np.arange(classes, dtype=np.int64).reshape([1, classes] + [1] * (len(shape) - 2))
    onehot = bb.emit(op.equal(tgt, relax.const(cls)))  # [N, C, d...]
    zero = relax.const(0.0, dtype)
    # where, not a product: a NaN in a class other than the target must not leak in.
    picked = bb.emit(op.sum(op.where(onehot, logp, zero), axis=[1]))
    w = weight if weight is not None else relax.const(np.ones([classes], dtype))
    w_full = op.reshape(w, cls.shape)
    w_t = bb.emit(op.sum(op.where(onehot, op.broadcast_to(w_full, shape), zero), axis=[1]))
    if "ignore_index" in attr:
        keep = op.not_equal(op.squeeze(tgt, [1]), relax.const(int(attr["ignore_index"]), "int64"))
        w_t = bb.emit(op.where(keep, w_t, zero))
    loss = bb.emit(op.negative(op.multiply(picked, w_t)))
    if reduction == "none":
        return loss
    total = bb.emit(op.sum(loss))
    if reduction == "sum":
        return total
    return bb.emit(op.divide(total, op.sum(w_t)))


@register("NegativeLogLikelihoodLoss")
class NegativeLogLikelihoodLoss(_onnx_converter_base()):  # type: ignore[misc]
    """ONNX NegativeLogLikelihoodLoss (opsets 12, 13, 22): optional ``weight``,
    ``ignore_index``, reductions none/sum/mean; NaN in other classes does not leak in."""

    @classmethod
    def _impl_v12(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        weight = inputs[2] if len(inputs) > 2 else None
        return _nll(bb, inputs[0], inputs[1], weight, attr, "NegativeLogLikelihoodLoss")


@register("SoftmaxCrossEntropyLoss")
class SoftmaxCrossEntropyLoss(_onnx_converter_base()):  # type: ignore[misc]
    """ONNX SoftmaxCrossEntropyLoss (opsets 12, 13): log_softmax over axis 1, then the
    NLL above; the optional second output is the log-probabilities."""

    @classmethod
    def _impl_v12(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        from tvm import relax

        logp = bb.emit(relax.op.nn.log_softmax(inputs[0], axis=1))
        weight = inputs[2] if len(inputs) > 2 else None
        loss = _nll(bb, logp, inputs[1], weight, attr, "SoftmaxCrossEntropyLoss")
        if attr["tvm_custom"]["num_outputs"] > 1:
            return relax.Tuple([loss, logp])
        return loss


@register("NonMaxSuppression")
class NonMaxSuppression(_onnx_converter_base()):  # type: ignore[misc]
    """Refused with one line: its output size depends on the data (TVM 0.27's converter
    returns an empty result for static shapes, a silent wrong answer)."""

    @classmethod
    def _impl_v10(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        from terrazzo.errors import FrontendError

        raise FrontendError(
            "ONNX NonMaxSuppression: the number of selected boxes depends on the data; "
            "Terrazzo compiles static shapes only"
        )


@register("LayerNormalization")
class LayerNormalization(_onnx_converter_base()):  # type: ignore[misc]
    """ONNX LayerNormalization (opset 17) with its optional outputs (one output: TVM's own
    converter): normalises over ``axis``..last; the optional
    ``Mean`` and ``InvStdDev`` outputs keep the reduced axes as size 1 (the spec);
    computed in fp32 for half-precision inputs (``stash_type`` 1, the default)."""

    @classmethod
    def _impl_v17(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        from tvm import relax
        from tvm.relax.frontend.onnx import onnx_frontend

        n = attr["tvm_custom"]["num_outputs"]
        if n == 1:  # TVM's own (one fused layer_norm op, symbolic shapes welcome)
            return onnx_frontend.LayerNormalization.get_converter(17)(bb, inputs, attr, params)
        op = relax.op
        x, scale = inputs[0], inputs[1]
        bias = inputs[2] if len(inputs) > 2 else None
        rank = int(x.ty.ndim)
        axis = int(attr.get("axis", -1))
        axis = axis + rank if axis < 0 else axis
        axes = list(range(axis, rank))
        dtype = str(x.ty.dtype)
        work = "float32" if dtype in ("float16", "bfloat16") else dtype
        xw = bb.emit(op.astype(x, work)) if work != dtype else x
        mean = bb.emit(op.mean(xw, axis=axes, keepdims=True))
        centred = bb.emit(op.subtract(xw, mean))
        var = bb.emit(op.mean(op.multiply(centred, centred), axis=axes, keepdims=True))
        eps = relax.const(float(attr.get("epsilon", 1e-5)), work)
        inv = bb.emit(op.divide(relax.const(1.0, work), op.sqrt(op.add(var, eps))))
        y = bb.emit(op.multiply(centred, inv))
        if work != dtype:
            y = bb.emit(op.astype(y, dtype))
        y = bb.emit(op.multiply(y, scale))
        if bias is not None:
            y = bb.emit(op.add(y, bias))
        return relax.Tuple([y, mean, inv][:n])


@register("CumProd")
class CumProd(_onnx_converter_base()):  # type: ignore[misc]
    """ONNX CumProd (opset 26): ``exclusive`` and ``reverse``; the axis must be a constant
    (``from_onnx(constant_inputs=...)`` makes an axis input one)."""

    @classmethod
    def _impl_v26(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        import numpy as np
        import tvm
        from tvm import relax

        from terrazzo.errors import FrontendError

        x, axis_in = inputs[0], inputs[1]
        if not isinstance(axis_in, tvm.ir.GenericConst):
            raise FrontendError(
                "ONNX CumProd: the axis input must be a constant (give it with constant_inputs=)"
            )
        rank = len(_static(x, "CumProd"))
        axis = int(np.asarray(axis_in.value.numpy()).reshape(-1)[0])
        axis = axis + rank if axis < 0 else axis
        op = relax.op
        if int(attr.get("reverse", 0)):
            x = bb.emit(op.flip(x, axis))
        y = bb.emit(op.cumprod(x, axis=axis, exclusive=bool(int(attr.get("exclusive", 0)))))
        if int(attr.get("reverse", 0)):
            y = bb.emit(op.flip(y, axis))
        return y


@register("IsInf")
class IsInf(_onnx_converter_base()):  # type: ignore[misc]
    """ONNX IsInf (opsets 10, 20): ``detect_negative``/``detect_positive`` (TVM 0.27's
    converter ignores them and reports both signs)."""

    @classmethod
    def _impl_v10(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        from tvm import relax

        op = relax.op
        x = inputs[0]
        inf = bb.emit(op.isinf(x))
        neg, pos = int(attr.get("detect_negative", 1)), int(attr.get("detect_positive", 1))
        if neg and pos:
            return inf
        zero = relax.const(0, str(x.ty.dtype))
        if not neg and not pos:
            return op.logical_and(inf, op.not_equal(x, x))  # all false (x == x is not NaN)
        sign = op.greater(x, zero) if pos else op.less(x, zero)
        return op.logical_and(inf, sign)


def _register_refusals() -> None:
    """TVM converters that give a silent wrong answer for one attribute: refuse it instead."""
    if "ConvTranspose" in CONVERTERS:
        return
    CONVERTERS["ConvTranspose"] = ConvTranspose


@register("BatchNormalization")
class BatchNormalization(_onnx_converter_base()):  # type: ignore[misc]
    """TVM's BatchNormalization (inference: the given mean and variance); with
    ``training_mode`` 1 (opsets 14, 15) the batch statistics as the spec's reference does:
    mean and population variance over every axis but 1 normalise the input, and the running
    statistics come out as ``mean * momentum + batch_mean * (1 - momentum)`` (likewise the
    variance)."""

    @classmethod
    def get_converter(cls, opset: int) -> Any:
        from tvm.relax.frontend.onnx import onnx_frontend

        impl = onnx_frontend.BatchNormalization.get_converter(opset)

        def convert(bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
            if not int(attr.get("training_mode", 0)):
                return impl(bb, inputs, attr, params)
            return cls._training(bb, inputs, attr)

        return convert

    @classmethod
    def _training(cls, bb: Any, inputs: Any, attr: dict[str, Any]) -> Any:
        from tvm import relax

        op = relax.op
        x, scale, bias, mean, var = inputs[:5]
        rank = int(x.ty.ndim)
        dtype = str(x.ty.dtype)
        axes = [a for a in range(rank) if a != 1]
        chan = [-1] + [1] * (rank - 2)
        bmean = bb.emit(op.mean(x, axis=axes))
        centred = bb.emit(op.subtract(x, op.reshape(bmean, chan)))
        bvar = bb.emit(op.mean(op.multiply(centred, centred), axis=axes))
        eps = relax.const(float(attr.get("epsilon", 1e-5)), dtype)
        norm = op.divide(centred, op.sqrt(op.add(op.reshape(bvar, chan), eps)))
        y = bb.emit(op.add(op.multiply(op.reshape(scale, chan), norm), op.reshape(bias, chan)))
        m = float(attr.get("momentum", 0.9))
        mom, rest = relax.const(m, dtype), relax.const(1.0 - m, dtype)
        run_mean = bb.emit(op.add(op.multiply(mean, mom), op.multiply(bmean, rest)))
        run_var = bb.emit(op.add(op.multiply(var, mom), op.multiply(bvar, rest)))
        n = int(attr.get("tvm_custom", {}).get("num_outputs", 3))
        return relax.Tuple([y, run_mean, run_var][:n]) if n > 1 else y


def _tvm_conv_transpose() -> Any:
    from tvm.relax.frontend.onnx import onnx_frontend

    return onnx_frontend.ConvTranspose


class ConvTranspose(_tvm_conv_transpose()):  # type: ignore[misc]
    """TVM's ConvTranspose, refused with one line when ``output_shape`` is given and TVM's
    result does not have it (TVM 0.27 ignores the attribute's implied padding)."""

    @classmethod
    def get_converter(cls, opset: int) -> Any:
        impl = _tvm_conv_transpose().get_converter(opset)

        def convert(bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
            from terrazzo.errors import FrontendError

            out = impl(bb, inputs, attr, params)
            want = [int(v) for v in attr.get("output_shape", [])]
            if want:
                got = _static(bb.normalize(out), "ConvTranspose")[2:]
                if got != want[-len(got) :]:
                    raise FrontendError(
                        f"ONNX ConvTranspose: attribute 'output_shape' {want} is not "
                        f"supported (the converter gives {got}); give 'pads' instead"
                    )
            return out

        return convert


def _const_array(x: Any) -> Any:
    """The numpy value of a converter input that is a constant, else None."""
    import tvm

    if x is not None and isinstance(x, tvm.ir.GenericConst):
        return x.value.numpy()
    return None


def _tvm_converter(op_name: str) -> Any:
    from tvm.relax.frontend.onnx import onnx_frontend

    return getattr(onnx_frontend, op_name)


class _Wrapped(_tvm_converter("OnnxOpConverter")):  # type: ignore[misc]
    """Base of converters that check or repair TVM's own converter for ``_base`` (a name)."""

    _base = ""

    @classmethod
    def check(cls, bb: Any, inputs: Any, attr: dict[str, Any]) -> None:
        """Raise FrontendError for what TVM's converter would get silently wrong."""

    @classmethod
    def repair(
        cls, bb: Any, out: Any, opset: int, inputs: Any, attr: dict[str, Any], params: Any
    ) -> Any:
        """Post-process TVM's result (default: as is)."""
        return out

    @classmethod
    def get_converter(cls, opset: int) -> Any:
        impl = _tvm_converter(cls._base).get_converter(opset)

        def convert(bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
            cls.check(bb, inputs, attr)
            return cls.repair(bb, impl(bb, inputs, attr, params), opset, inputs, attr, params)

        return convert


def _has_zero_dim(x: Any) -> bool:
    try:
        return any(int(d) == 0 for d in x.ty.shape.values)
    except (AttributeError, TypeError, ValueError):
        return False


def _reduce_extreme(base: str, sign: float) -> Any:
    """TVM's ReduceMax (``sign`` -1) / ReduceMin (+1), with the spec's empty-set and infinite
    results: TVM starts the reduction from the lowest (highest) *finite* value, so a row of
    -inf (+inf), or an empty row, comes back as ``∓3.4e38`` instead of ``∓inf``. Where the
    result is that sentinel and no element equals it (an indicator reduced with the same
    axes), the answer is the infinity."""

    class Fixed(_Wrapped):
        _base = base

        @classmethod
        def repair(
            cls, bb: Any, out: Any, opset: int, inputs: Any, attr: dict[str, Any], params: Any
        ) -> Any:
            import numpy as np
            from tvm import relax

            x = inputs[0]
            dtype = str(x.ty.dtype)
            op = relax.op
            out = bb.normalize(out)
            if _has_zero_dim(x) and not _has_zero_dim(out):  # an empty set: the spec's value
                if dtype == "bool":
                    fill: Any = sign > 0
                elif dtype.startswith(("int", "uint")):
                    info = np.iinfo(dtype)
                    fill = int(info.min if sign < 0 else info.max)
                else:
                    fill = float(sign * np.inf)
                shape = [int(d) for d in out.ty.shape.values]
                return relax.const(np.full(shape, fill, dtype=dtype))
            if dtype not in ("float16", "float32", "float64"):
                return out
            fin = np.finfo(dtype)
            sentinel = relax.const(float(fin.min if sign < 0 else fin.max), dtype)
            inf = relax.const(float(sign * np.inf), dtype)
            hit = bb.emit(op.astype(op.equal(x, sentinel), dtype))
            any_hit = bb.normalize(
                _tvm_converter("ReduceMax").get_converter(opset)(
                    bb, [hit, *inputs[1:]], attr, params
                )
            )
            none = op.less(any_hit, relax.const(0.5, dtype))  # also the empty row (sentinel)
            return bb.emit(op.where(op.logical_and(op.equal(out, sentinel), none), inf, out))

    Fixed.__name__ = base
    return Fixed


CONVERTERS["ReduceMax"] = _reduce_extreme("ReduceMax", -1.0)
CONVERTERS["ReduceMin"] = _reduce_extreme("ReduceMin", 1.0)


@register("Resize")
class Resize(_Wrapped):
    """TVM's Resize, refused with one line where it would ignore part of the spec: the
    ``antialias``, ``axes`` and ``keep_aspect_ratio_policy`` attributes, scales/sizes that
    change the batch or channel dimension, and scales whose coordinate mapping differs
    from the size ratio TVM uses (``floor(n·s)/n ≠ s``)."""

    _base = "Resize"

    @classmethod
    def get_converter(cls, opset: int) -> Any:
        impl = _tvm_converter("Resize").get_converter(opset)

        def convert(bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
            inputs, attr = _resize_full_rank(list(inputs), dict(attr))
            cls.check(bb, inputs, attr)
            return impl(bb, inputs, attr, params)

        return convert

    @classmethod
    def check(cls, bb: Any, inputs: Any, attr: dict[str, Any]) -> None:
        import numpy as np

        from terrazzo.errors import FrontendError

        def refuse(why: str) -> None:
            raise FrontendError(f"ONNX Resize: {why} is not supported (TVM would ignore it)")

        x = inputs[0]
        rank = int(x.ty.ndim)
        if int(attr.get("antialias", 0)):
            refuse("antialias=1")
        axes = attr.get("axes")
        if axes is not None and sorted(int(a) % rank for a in axes) != list(range(rank)):
            refuse(f"axes={list(axes)}")
        policy = attr.get("keep_aspect_ratio_policy", b"stretch")
        policy = policy.decode() if isinstance(policy, bytes) else str(policy)
        if policy != "stretch":
            refuse(f"keep_aspect_ratio_policy={policy!r}")
        coord = attr.get("coordinate_transformation_mode", b"half_pixel")
        coord = coord.decode() if isinstance(coord, bytes) else str(coord)
        scales = _const_array(inputs[2]) if len(inputs) > 2 else None
        sizes = _const_array(inputs[3]) if len(inputs) > 3 else None
        try:
            dims = [int(d) for d in x.ty.shape.values]
        except (TypeError, ValueError):
            dims = []
        if scales is not None and scales.size:
            s = np.asarray(scales, dtype=np.float64).reshape(-1)
            if s.size >= 2 and (s[0] != 1 or s[1] != 1):
                refuse(f"scales {s.tolist()} on the batch/channel dimensions")
            if dims and coord not in ("align_corners", "tf_crop_and_resize"):
                for n, k in zip(dims[2:], s[2:], strict=False):
                    if np.floor(n * k) / n != k:
                        refuse(
                            f"scale {k} on a dimension of {n} (the size {int(np.floor(n * k))} "
                            f"implies another scale, and coordinate mode {coord!r} uses the scale)"
                        )
        if sizes is not None and sizes.size and dims:
            z = [int(v) for v in np.asarray(sizes).reshape(-1)]
            if len(z) >= 2 and z[:2] != dims[:2]:
                refuse(f"sizes {z} changing the batch/channel dimensions")


def _resize_full_rank(inputs: list[Any], attr: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Resize's ``axes`` (opset 18) folded into full-rank constant scales/sizes (1 and the input
    size on the other axes), which TVM's converter reads; left as is when not constant."""
    import numpy as np
    from tvm import relax

    axes = attr.get("axes")
    if axes is None:
        return inputs, attr
    x = inputs[0]
    rank = int(x.ty.ndim)
    ax = [int(a) % rank for a in axes]
    roi = _const_array(inputs[1]) if len(inputs) > 1 else None
    scales = _const_array(inputs[2]) if len(inputs) > 2 else None
    sizes = _const_array(inputs[3]) if len(inputs) > 3 else None
    if roi is not None and roi.size:
        return inputs, attr
    try:
        dims = [int(d) for d in x.ty.shape.values]
    except (TypeError, ValueError):
        return inputs, attr
    out = list(inputs)
    if scales is not None and scales.size:
        full = np.ones(rank, dtype=scales.dtype)
        full[ax] = scales.reshape(-1)
        out[2] = relax.const(full)
    elif sizes is not None and sizes.size:
        fulls = np.asarray(dims, dtype=sizes.dtype)
        fulls[ax] = sizes.reshape(-1)
        out[3] = relax.const(fulls)
    else:
        return inputs, attr
    attr = {k: v for k, v in attr.items() if k != "axes"}
    return out, attr


@register("LpNormalization")
class LpNormalization(_onnx_converter_base()):  # type: ignore[misc]
    """ONNX LpNormalization (p 1 or 2 along ``axis``): x / ||x||_p; a zero vector stays zeros
    (the reference's result); NaN and Inf propagate."""

    @classmethod
    def _impl_v1(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        from tvm import relax

        from terrazzo.errors import FrontendError

        op = relax.op
        x = inputs[0]
        p = int(attr.get("p", 2))
        axis = int(attr.get("axis", -1))
        if p == 1:
            norm = op.sum(op.abs(x), axis=[axis], keepdims=True)
        elif p == 2:
            norm = op.sqrt(op.sum(op.multiply(x, x), axis=[axis], keepdims=True))
        else:
            raise FrontendError(f"ONNX LpNormalization: p={p} is not valid (1 or 2)")
        norm = bb.emit(norm)
        zero, one = relax.const(0, str(x.ty.dtype)), relax.const(1, str(x.ty.dtype))
        return op.divide(x, op.where(op.equal(norm, zero), one, norm))


@register("Swish")
class Swish(_onnx_converter_base()):  # type: ignore[misc]
    """ONNX Swish (opset 24): x · sigmoid(alpha · x)."""

    @classmethod
    def _impl_v24(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        from tvm import relax

        x = inputs[0]
        alpha = relax.const(float(attr.get("alpha", 1.0)), str(x.ty.dtype))
        return relax.op.multiply(x, relax.op.sigmoid(relax.op.multiply(alpha, x)))


@register("Pow")
class Pow(_onnx_converter_base()):  # type: ignore[misc]
    """ONNX Pow with the exponent's type differing from the base's (allowed since opset 12):
    computed in the base's type (float exponent on an int base: in float64, then cast back,
    as the reference does); same types go to TVM's converter."""

    @classmethod
    def _impl_v7(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        from tvm import relax

        op = relax.op
        x, y = inputs[0], inputs[1]
        xd, yd = str(x.ty.dtype), str(y.ty.dtype)
        if xd.startswith("float") and xd == yd:
            return _tvm_converter("Pow").get_converter(13)(bb, inputs, attr, params)
        if xd.startswith("float"):
            return op.power(x, op.astype(y, xd))
        work = "float64"
        r = op.power(op.astype(x, work), op.astype(y, work))
        return op.astype(bb.emit(r), xd)


@register("CumSum")
class CumSum(_Wrapped):
    """TVM's CumSum; an axis given at run time (a graph input) is handled too: the output
    shape does not depend on it, so every axis's cumulative sum is computed and the one the
    input names is selected (``where``), rather than refusing the model."""

    _base = "CumSum"

    @classmethod
    def get_converter(cls, opset: int) -> Any:
        impl = _tvm_converter("CumSum").get_converter(opset)

        def convert(bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
            if _const_array(inputs[1]) is not None:
                return impl(bb, inputs, attr, params)
            return _any_axis(bb, inputs, attr, lambda x, a, ex: _cum(x, a, ex, "cumsum"))

        return convert


def _cum(x: Any, axis: int, exclusive: bool, kind: str) -> Any:
    from tvm import relax

    return getattr(relax.op, kind)(x, axis=axis, exclusive=exclusive)


def _any_axis(
    bb: Any, inputs: Any, attr: dict[str, Any], fn: Callable[[Any, int, bool], Any]
) -> Any:
    """``fn`` along the axis named by the run-time scalar ``inputs[1]``: one result per axis,
    selected by comparing the (normalised) axis with each candidate."""
    from tvm import relax

    op = relax.op
    x, axis_in = inputs[0], inputs[1]
    rank = int(x.ty.ndim)
    rev, excl = bool(int(attr.get("reverse", 0))), bool(int(attr.get("exclusive", 0)))
    a = bb.emit(op.astype(op.reshape(axis_in, []), "int64"))
    a = bb.emit(
        op.where(op.less(a, relax.const(0, "int64")), op.add(a, relax.const(rank, "int64")), a)
    )
    out: Any = None
    for k in range(rank):
        xk = bb.emit(op.flip(x, k)) if rev else x
        yk = bb.emit(fn(xk, k, excl))
        if rev:
            yk = bb.emit(op.flip(yk, k))
        out = (
            yk if out is None else bb.emit(op.where(op.equal(a, relax.const(k, "int64")), yk, out))
        )
    return out


@register("CumProd")
class CumProdAnyAxis(CumProd):
    """CumProd with a constant axis (above) or one given at run time (every axis computed,
    the named one selected, as for CumSum)."""

    @classmethod
    def _impl_v26(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        if _const_array(inputs[1]) is not None:
            return super()._impl_v26(bb, inputs, attr, params)
        return _any_axis(bb, inputs, attr, lambda x, a, ex: _cum(x, a, ex, "cumprod"))


def _fp32_inside(base: str, n_float_inputs: int) -> Any:
    """TVM's ``base`` converter, computed in fp32 for fp16 inputs and rounded once at the end
    (what onnxruntime's CPU kernels do: an fp16 dot product or softmax accumulated in fp16
    drifts past the conformance tolerance, e.g. the fp16 expanded Attention tests)."""

    class Fp32Inside(_Wrapped):
        _base = base

        @classmethod
        def get_converter(cls, opset: int) -> Any:
            impl = _tvm_converter(base).get_converter(opset)

            def convert(bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
                from tvm import relax

                head = list(inputs[:n_float_inputs])
                if not head or any(
                    x is None or str(getattr(x.ty, "dtype", "")) != "float16" for x in head
                ):
                    return impl(bb, inputs, attr, params)
                up = [bb.emit(relax.op.astype(x, "float32")) for x in head]
                out = bb.normalize(impl(bb, [*up, *inputs[n_float_inputs:]], attr, params))
                return relax.op.astype(out, "float16")

            return convert

    Fp32Inside.__name__ = base
    return Fp32Inside


CONVERTERS["MatMul"] = _fp32_inside("MatMul", 2)
CONVERTERS["Softmax"] = _fp32_inside("Softmax", 1)


@register("Pad")
class Pad(_Wrapped):
    """TVM's Pad; a ``constant_value`` given at run time (a graph input, not a constant) is
    handled too: TVM's converter reads it as a constant only. The input is padded with 0, a
    ones tensor likewise marks the original elements, and ``where`` puts the run-time value
    in the padding (exact for every value, NaN and infinities included)."""

    _base = "Pad"

    @classmethod
    def get_converter(cls, opset: int) -> Any:
        impl = _tvm_converter("Pad").get_converter(opset)

        def convert(bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
            from tvm import relax

            cval = inputs[2] if len(inputs) > 2 else None
            if opset < 11 or cval is None or _const_array(cval) is not None:
                return impl(bb, inputs, attr, params)
            rest = list(inputs)
            rest[2] = None
            mode = attr.get("mode", b"constant")
            mode = mode.decode() if isinstance(mode, bytes) else str(mode)
            padded = bb.emit(impl(bb, rest, attr, params))
            if mode != "constant":  # the value is only read in constant mode
                return padded
            x = inputs[0]
            op = relax.op
            ones = bb.emit(op.ones_like(x, "int8"))
            rest[0] = ones
            mask = bb.emit(impl(bb, rest, attr, params))
            value = bb.emit(op.astype(op.reshape(cval, []), x.ty.dtype))
            return op.where(op.not_equal(mask, relax.const(0, "int8")), padded, value)

        return convert


@register("RMSNormalization")
class RMSNormalization(_Wrapped):
    """TVM's RMSNormalization; normalising over every axis (``axis`` 0 or ``-rank``) is
    written out (mean of squares, rsqrt, scale), as TVM's ``rms_norm`` fails to build when
    nothing is left of the input's shape. Computed in fp32 when ``stash_type`` is 1, as the
    spec and onnxruntime do."""

    _base = "RMSNormalization"

    @classmethod
    def get_converter(cls, opset: int) -> Any:
        impl = _tvm_converter("RMSNormalization").get_converter(opset)

        def convert(bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
            from tvm import relax

            x, scale = inputs[0], inputs[1]
            rank = int(x.ty.ndim)
            axis = int(attr.get("axis", -1))
            if rank <= 0 or (axis + rank if axis < 0 else axis) != 0:
                return impl(bb, inputs, attr, params)
            op = relax.op
            dtype = x.ty.dtype
            work = "float32" if int(attr.get("stash_type", 1)) == 1 else dtype
            eps = float(attr.get("epsilon", 1e-5))
            xf = bb.emit(op.astype(x, work)) if work != dtype else x
            ms = bb.emit(op.mean(op.multiply(xf, xf), axis=list(range(rank)), keepdims=True))
            inv = bb.emit(op.rsqrt(op.add(ms, relax.const(eps, work))))
            sf = op.astype(scale, work) if work != dtype else scale
            y = bb.emit(op.multiply(op.multiply(xf, inv), sf))
            return op.astype(y, dtype) if work != dtype else y

        return convert


@register("CenterCropPad")
class CenterCropPad(_onnx_converter_base()):  # type: ignore[misc]
    """ONNX CenterCropPad (opset 18): per axis, a centred crop (start ``(d - s) // 2``) or a
    centred zero pad (``(s - d) // 2`` before, the rest after), as the spec's reference. The
    target shape must be a constant: as a graph input it is a guard (``onnx_guards``)."""

    @classmethod
    def _impl_v18(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        from tvm import relax, topi

        from terrazzo.errors import FrontendError

        x = inputs[0]
        target = _const_array(inputs[1])
        if target is None:
            raise FrontendError(
                "ONNX CenterCropPad: the target shape must be a constant (its value decides "
                "the output shape)"
            )
        dims = _static(x, "CenterCropPad")
        rank = len(dims)
        axes = [int(a) + rank if int(a) < 0 else int(a) for a in attr.get("axes", range(rank))]
        sizes = [int(s) for s in target.reshape(-1)]
        if len(sizes) != len(axes) or any(not 0 <= a < rank for a in axes):
            raise FrontendError(
                f"ONNX CenterCropPad: shape {sizes} does not match axes {axes} of a rank-{rank} input"
            )
        begin, end = [0] * rank, list(dims)
        before, after = [0] * rank, [0] * rank
        for a, s in zip(axes, sizes, strict=True):
            d = dims[a]
            if s < d:
                begin[a] = (d - s) // 2
                end[a] = begin[a] + s
            elif s > d:
                before[a] = (s - d) // 2
                after[a] = s - d - before[a]
        y = x
        if begin != [0] * rank or end != list(dims):
            y = bb.emit(relax.op.strided_slice(y, list(range(rank)), begin, end))
        if any(before) or any(after):
            y = bb.emit_te(topi.nn.pad, y, before, after, 0.0)
        return y


@register("Upsample")
class Upsample(_onnx_converter_base()):  # type: ignore[misc]
    """ONNX Upsample (opsets 7-9, deprecated in 10): the scales as an attribute (7) or an
    input (9; a constant, or a guard input). Output size ``d * scale``; ``nearest`` takes the
    source index ``floor(i / scale)`` (TVM's own converter rounds it, wrong for a scale of 3)
    and ``linear`` interpolates, both with asymmetric coordinates, as onnxruntime. 4-D NCHW
    inputs with whole scales, unit on batch and channel, only; others are refused."""

    @classmethod
    def _impl_v7(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        return cls._lower(inputs[0], attr.get("scales"), attr)

    @classmethod
    def _impl_v9(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        scales = _const_array(inputs[1]) if len(inputs) > 1 else None
        return cls._lower(inputs[0], None if scales is None else scales.tolist(), attr)

    @staticmethod
    def _lower(x: Any, scales: Any, attr: dict[str, Any]) -> Any:
        import math

        from tvm import relax

        from terrazzo.errors import FrontendError

        if scales is None:
            raise FrontendError("ONNX Upsample: the scales must be a constant")
        scales = [float(s) for s in scales]
        dims = _static(x, "Upsample")
        mode = attr.get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        whole = all(s == math.floor(s) and s >= 1 for s in scales)
        if (
            len(dims) != 4
            or scales[:2] != [1.0, 1.0]
            or mode not in ("nearest", "linear")
            or not whole
        ):
            # TVM's resize maps output i to i * in/out; that is i / scale only when the output
            # size is exactly d * scale, i.e. for whole scales
            raise FrontendError(
                f"ONNX Upsample: mode {mode!r} with scales {scales} on a rank-{len(dims)} "
                "input is not supported (4-D NCHW, whole scales, unit on batch/channel, "
                "nearest or linear)"
            )
        size = [int(d * s) for d, s in zip(dims[2:], scales[2:], strict=True)]
        return relax.op.image.resize2d(
            x,
            size=relax.ShapeExpr(size),
            layout="NCHW",
            method="nearest_neighbor" if mode == "nearest" else "linear",
            coordinate_transformation_mode="asymmetric",
            rounding_method="floor" if mode == "nearest" else "round",
        )


@register("RotaryEmbedding")
class RotaryEmbedding(_onnx_converter_base()):  # type: ignore[misc]
    """ONNX RotaryEmbedding (opset 23), as the spec's reference: 4-D ``[B, H, S, D]`` or 3-D
    ``[B, S, H*D]`` input (``num_heads``), caches gathered by ``position_ids`` when given,
    ``rotary_embedding_dim`` (0: the whole head) and ``interleaved`` pairs."""

    @classmethod
    def _impl_v23(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        from tvm import relax

        from terrazzo.errors import FrontendError

        op = relax.op
        x, cos, sin = inputs[0], inputs[1], inputs[2]
        pos = inputs[3] if len(inputs) > 3 else None
        dims = _static(x, "RotaryEmbedding")
        if len(dims) == 4:
            b, _, s, d = dims
            xs = bb.emit(op.permute_dims(x, [0, 2, 1, 3]))  # [B, S, H, D]
        elif len(dims) == 3:
            heads = int(attr.get("num_heads", 0))
            if heads <= 0 or dims[2] % heads:
                raise FrontendError("ONNX RotaryEmbedding: a 3-D input needs num_heads")
            b, s, d = dims[0], dims[1], dims[2] // heads
            xs = bb.emit(op.reshape(x, [b, s, heads, d]))
        else:
            raise FrontendError(f"ONNX RotaryEmbedding: rank-{len(dims)} input")
        rot = int(attr.get("rotary_embedding_dim", 0)) or d
        half = rot // 2
        if pos is not None:
            cos = bb.emit(op.take(cos, pos, axis=0))
            sin = bb.emit(op.take(sin, pos, axis=0))
        cos = bb.emit(op.expand_dims(cos, 2))  # [B, S, 1, rot/2]
        sin = bb.emit(op.expand_dims(sin, 2))
        xr = bb.emit(op.strided_slice(xs, [3], [0], [rot])) if rot < d else xs
        if int(attr.get("interleaved", 0)):
            x1 = bb.emit(op.strided_slice(xr, [3], [0], [rot], [2]))
            x2 = bb.emit(op.strided_slice(xr, [3], [1], [rot], [2]))
        else:
            x1 = bb.emit(op.strided_slice(xr, [3], [0], [half]))
            x2 = bb.emit(op.strided_slice(xr, [3], [half], [rot]))
        real = bb.emit(op.subtract(op.multiply(cos, x1), op.multiply(sin, x2)))
        imag = bb.emit(op.add(op.multiply(sin, x1), op.multiply(cos, x2)))
        if int(attr.get("interleaved", 0)):
            pairs = bb.emit(op.stack([real, imag], axis=4))
            rotated = bb.emit(op.reshape(pairs, [b, s, -1, rot]))
        else:
            rotated = bb.emit(op.concat([real, imag], axis=3))
        if rot < d:
            rest = bb.emit(op.strided_slice(xs, [3], [rot], [d]))
            rotated = bb.emit(op.concat([rotated, rest], axis=3))
        if len(dims) == 3:
            return op.reshape(rotated, dims)
        return op.permute_dims(rotated, [0, 2, 1, 3])


@register("TensorScatter")
class TensorScatter(_onnx_converter_base()):  # type: ignore[misc]
    """ONNX TensorScatter (opset 24): ``update`` written into ``past_cache`` along ``axis``
    from ``write_indices[b]`` (0 when absent) for each batch row; ``circular`` wraps around
    the cache length. Each cache position reads the update element that lands on it (a
    gather, then ``where``), so no scatter is needed."""

    @classmethod
    def _impl_v24(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        import numpy as np
        from tvm import relax

        from terrazzo.errors import FrontendError

        op = relax.op
        past, update = inputs[0], inputs[1]
        write = inputs[2] if len(inputs) > 2 else None
        dims, udims = _static(past, "TensorScatter"), _static(update, "TensorScatter")
        rank = len(dims)
        axis = int(attr.get("axis", -2))
        axis = axis + rank if axis < 0 else axis
        mode = attr.get("mode", b"linear")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if not 1 <= axis < rank or mode not in ("linear", "circular"):
            raise FrontendError(f"ONNX TensorScatter: axis {axis} / mode {mode!r} not supported")
        m, s, b = dims[axis], udims[axis], dims[0]
        i64 = "int64"
        if write is None:
            start = relax.const(np.zeros((b, 1), np.int64))
        else:
            start = bb.emit(op.reshape(op.astype(write, i64), [b, 1]))
        idx = bb.emit(op.subtract(op.reshape(op.arange(0, m, 1, i64), [1, m]), start))  # [B, M]
        if mode == "circular":
            idx = bb.emit(op.floor_mod(idx, relax.const(m, i64)))
        valid = bb.emit(
            op.logical_and(
                op.greater_equal(idx, relax.const(0, i64)), op.less(idx, relax.const(s, i64))
            )
        )
        safe = bb.emit(op.where(valid, idx, relax.const(0, i64)))
        lead = [b] + [1] * (axis - 1) + [m] + [1] * (rank - axis - 1)
        full = list(dims)  # the update's shape too, but for the axis (the spec)
        if [u for k, u in enumerate(udims) if k != axis] != [
            d for k, d in enumerate(dims) if k != axis
        ] or s > m:
            raise FrontendError(f"ONNX TensorScatter: update {udims} does not fit cache {dims}")
        index = bb.emit(op.broadcast_to(op.reshape(safe, lead), full))
        taken = bb.emit(op.gather_elements(update, index, axis))
        mask = bb.emit(op.broadcast_to(op.reshape(valid, lead), full))
        return op.where(mask, taken, past)


@register("MaxPool")
class MaxPool(_Wrapped):
    """TVM's MaxPool; with the second output (``Indices``, opset 8+), which TVM's converter
    does not give, 2-D pooling is written out: one strided slice per kernel offset, the
    maximum over the valid ones, and the first offset holding it (onnxruntime's scan order)
    mapped to the flat index into the input (``storage_order`` 0: row-major, 1: column-major
    within each image). ``auto_pad`` other than NOTSET and ``ceil_mode`` are refused there."""

    _base = "MaxPool"

    @classmethod
    def get_converter(cls, opset: int) -> Any:
        impl = _tvm_converter("MaxPool").get_converter(opset)

        def convert(bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
            if int(attr.get("tvm_custom", {}).get("num_outputs", 1)) < 2:
                return impl(bb, inputs, attr, params)
            return cls._with_indices(bb, inputs[0], attr)

        return convert

    @classmethod
    def _with_indices(cls, bb: Any, x: Any, attr: dict[str, Any]) -> Any:
        import numpy as np
        from tvm import relax, topi

        from terrazzo.errors import FrontendError

        op = relax.op
        dims = _static(x, "MaxPool")
        auto_pad = attr.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        dtype = str(x.ty.dtype)
        if len(dims) != 4 or auto_pad != "NOTSET" or int(attr.get("ceil_mode", 0)):
            raise FrontendError(
                "ONNX MaxPool with Indices: 2-D pooling without auto_pad/ceil_mode only"
            )
        if not dtype.startswith("float"):
            raise FrontendError(f"ONNX MaxPool with Indices: {dtype} input is not supported")
        n, c, h, w = dims
        kh, kw = (int(k) for k in attr["kernel_shape"])
        sh, sw = (int(s) for s in attr.get("strides", (1, 1)))
        dh, dw = (int(d) for d in attr.get("dilations", (1, 1)))
        pt, pl, pb, pr = (int(p) for p in attr.get("pads", (0, 0, 0, 0)))
        oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
        ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
        col = int(attr.get("storage_order", 0)) == 1
        xp = x
        if pt or pl or pb or pr:
            xp = bb.emit_te(topi.nn.pad, x, [0, 0, pt, pl], [0, 0, pb, pr], 0.0)
        slices, valid, offset = [], [], []
        hh = np.arange(oh)[:, None] * sh - pt
        ww = np.arange(ow)[None, :] * sw - pl
        for i in range(kh):
            for j in range(kw):
                b0, b1 = i * dh, j * dw
                slices.append(
                    op.strided_slice(
                        xp, [2, 3], [b0, b1], [b0 + (oh - 1) * sh + 1, b1 + (ow - 1) * sw + 1],
                        [sh, sw],
                    )
                )  # fmt: skip
                hk, wk = hh + i * dh, ww + j * dw
                valid.append((hk >= 0) & (hk < h) & (wk >= 0) & (wk < w))
                offset.append(wk * h + hk if col else hk * w + wk)
        stacked = bb.emit(op.stack(slices, axis=4))  # [N, C, OH, OW, K]
        ok = relax.const(np.stack(np.broadcast_arrays(*valid), axis=-1)[None, None])
        ninf = relax.const(float("-inf"), dtype)
        y = bb.emit(op.max(op.where(ok, stacked, ninf), axis=4))
        hit = op.logical_and(op.equal(stacked, op.expand_dims(y, 4)), ok)
        first = bb.emit(op.argmax(op.astype(hit, "int32"), axis=4, keepdims=True))
        table = np.stack(np.broadcast_arrays(*offset), axis=-1).astype(np.int64)
        table = np.broadcast_to(table[None, None], (n, c, oh, ow, kh * kw))
        picked = bb.emit(
            op.gather_elements(relax.const(np.ascontiguousarray(table)), first, axis=4)
        )
        base = (np.arange(n * c, dtype=np.int64) * h * w).reshape(n, c, 1, 1)
        idx = op.add(op.squeeze(picked, [4]), relax.const(base))
        return relax.Tuple([y, bb.emit(idx)])


@register("Col2Im")
class Col2Im(_onnx_converter_base()):  # type: ignore[misc]
    """ONNX Col2Im (opset 18), any number of spatial dimensions: each kernel offset's column
    ``[N, C, *blocks]`` is spread to its image positions (``dilate`` by the strides, then
    padded to its offset), the offsets are summed, and the padding is cropped. The image and
    block shapes must be constants (as graph inputs they are guards, ``onnx_guards``)."""

    @classmethod
    def _impl_v18(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        import itertools
        import math

        from tvm import relax, topi

        from terrazzo.errors import FrontendError

        op = relax.op
        x = inputs[0]
        image, block = _const_array(inputs[1]), _const_array(inputs[2])
        if image is None or block is None:
            raise FrontendError("ONNX Col2Im: image_shape and block_shape must be constants")
        image = [int(v) for v in image.reshape(-1)]
        block = [int(v) for v in block.reshape(-1)]
        r = len(image)
        n, ck, length = _static(x, "Col2Im")
        k = math.prod(block)
        dil = [int(v) for v in attr.get("dilations", [1] * r)]
        strides = [int(v) for v in attr.get("strides", [1] * r)]
        pads = [int(v) for v in attr.get("pads", [0] * (2 * r))]
        begin, end = pads[:r], pads[r:]
        blocks = [
            (image[a] + begin[a] + end[a] - dil[a] * (block[a] - 1) - 1) // strides[a] + 1
            for a in range(r)
        ]
        if ck % k or math.prod(blocks) != length or min(blocks) < 1:
            raise FrontendError(
                f"ONNX Col2Im: input [{n}, {ck}, {length}] does not fit image {image}, "
                f"block {block}"
            )
        c = ck // k
        cols = bb.emit(op.reshape(x, [n, c, k, *blocks]))
        padded = [image[a] + begin[a] + end[a] for a in range(r)]
        total: Any = None
        for idx, offs in enumerate(itertools.product(*(range(b) for b in block))):
            col = bb.emit(op.squeeze(op.strided_slice(cols, [2], [idx], [idx + 1]), [2]))
            if any(s > 1 for s in strides):
                col = bb.emit_te(topi.nn.dilate, col, [1, 1, *strides])
            at = [offs[a] * dil[a] for a in range(r)]
            span = [(blocks[a] - 1) * strides[a] + 1 for a in range(r)]
            after = [padded[a] - at[a] - span[a] for a in range(r)]
            col = bb.emit_te(topi.nn.pad, col, [0, 0, *at], [0, 0, *after], 0.0)
            total = col if total is None else bb.emit(op.add(total, col))
        return op.strided_slice(
            total, list(range(2, 2 + r)), begin, [begin[a] + image[a] for a in range(r)]
        )


@register("BitCast")
class BitCast(_onnx_converter_base()):  # type: ignore[misc]
    """ONNX BitCast (opset 26): the same bits read as another type of the same width
    (``topi.reinterpret``); other widths are refused."""

    @classmethod
    def _impl_v26(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        import numpy as np
        import onnx
        from tvm import topi

        from terrazzo.errors import FrontendError

        x = inputs[0]
        src = np.dtype(str(x.ty.dtype))
        dst = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(attr["to"])))
        if src.itemsize != dst.itemsize or dst.kind not in "iufb" or src.kind not in "iufb":
            raise FrontendError(f"ONNX BitCast: {src} to {dst} is not supported (same width only)")
        if src == dst:
            return x
        return bb.emit_te(topi.reinterpret, x, str(dst))


@register("Det")
class Det(_onnx_converter_base()):  # type: ignore[misc]
    """ONNX Det (opset 11) of ``[..., n, n]`` for n up to 4, by the Leibniz sum over the n!
    permutations (exact arithmetic order aside; larger matrices are refused)."""

    @classmethod
    def _impl_v11(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
        import itertools

        from tvm import relax

        from terrazzo.errors import FrontendError

        op = relax.op
        x = inputs[0]
        dims = _static(x, "Det")
        if len(dims) < 2 or dims[-1] != dims[-2] or not 1 <= dims[-1] <= 4:
            raise FrontendError(f"ONNX Det: shape {dims} (square matrices up to 4x4 only)")
        n, r = dims[-1], len(dims)
        entry = {
            (i, j): bb.emit(
                op.reshape(op.strided_slice(x, [r - 2, r - 1], [i, j], [i + 1, j + 1]), dims[:-2])
            )
            for i in range(n)
            for j in range(n)
        }
        total: Any = None
        for perm in itertools.permutations(range(n)):
            inversions = sum(perm[a] > perm[b] for a in range(n) for b in range(a + 1, n))
            term: Any = entry[0, perm[0]]
            for i in range(1, n):
                term = bb.emit(op.multiply(term, entry[i, perm[i]]))
            if total is None:
                total = term if inversions % 2 == 0 else bb.emit(op.negative(term))
            elif inversions % 2:
                total = bb.emit(op.subtract(total, term))
            else:
                total = bb.emit(op.add(total, term))
        return total
