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


def _refuse_attr(base_op: str, attr_name: str, bad: Callable[[Any], bool], why: str) -> Any:
    """A converter that refuses ``attr_name`` when ``bad(value)`` and else is TVM's own."""
    from tvm.relax.frontend.onnx import onnx_frontend

    tvm_cls = getattr(onnx_frontend, base_op)

    class Checked(tvm_cls):  # type: ignore[misc,valid-type]
        @classmethod
        def get_converter(cls, opset: int) -> Any:
            impl = tvm_cls.get_converter(opset)

            def convert(bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
                from terrazzo.errors import FrontendError

                if attr_name in attr and bad(attr[attr_name]):
                    raise FrontendError(f"ONNX {base_op}: attribute {attr_name!r} {why}")
                return impl(bb, inputs, attr, params)

            return convert

    Checked.__name__ = base_op
    return Checked


def _register_refusals() -> None:
    """TVM converters that give a silent wrong answer for one attribute: refuse it instead."""
    if "BatchNormalization" in CONVERTERS:
        return
    CONVERTERS["BatchNormalization"] = _refuse_attr(
        "BatchNormalization",
        "training_mode",
        lambda v: int(v) != 0,
        "= 1 (batch statistics) is not supported; export the model in eval mode",
    )
    CONVERTERS["ConvTranspose"] = ConvTranspose


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
