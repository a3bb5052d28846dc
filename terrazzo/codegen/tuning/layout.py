"""Tuning-friendly layouts: convolutions to NHWC with packed weights on CPU targets.

Sits before kernel extraction in the schedule search and (the same pass) before LegalizeOps
in codegen. NCHW/OIHW convolutions cannot vectorize well on a CPU when the spatial extent
is small (ResNet's late layers are 2×2 or 4×4): the innermost contiguous axis of both output
and weight is short or strided. In NHWC the output channel is innermost and contiguous, so
the conv template vectorizes over output channels and register-tiles over width.

The weights are then packed into output-channel blocks, ``[CO/P, KH, KW, CI, P]`` with
``P`` = :data:`PACK_LANES` (one AVX2 vector), and the convolution becomes a ``call_tir`` of a
direct NHWC convolution that reads them. A parallel task owning a tile of output channels
then streams its weights as a few sequential runs; with plain HWIO weights it would read
one short chunk every ``CO`` floats, which defeats the hardware prefetcher. That matters
because small-input CNNs are bound by weight traffic from DRAM: ResNet-18 at 64×64 reads
45 MB of weights per inference for 0.3 GFLOP, and with strided HWIO reads its 2×2 layers
ran 3–4× slower in the model than in a warm-cache kernel benchmark. With constant weights
FoldConstant packs them at build time; with weight parameters ``lift_weight_prep`` moves
the packing into the once-per-load weight preparation.
"""

from __future__ import annotations

from typing import Any

#: Relax ConvertLayout request: data NHWC, weight HWIO (output channel innermost).
CPU_CONV_LAYOUTS: dict[str, list[str]] = {"relax.nn.conv2d": ["NHWC", "HWIO"]}

#: Output channels per packed weight block (8 fp32 = one 256-bit vector).
PACK_LANES = 8

#: ``call_tir`` name hint of the packed-weight convolution (fused kernels keep "conv2d").
PACKED_CONV_NAME = "conv2d_nhwc_packed"


def _is_cpu(target: Any) -> bool:
    kind = target.get("kind") if isinstance(target, dict) else str(target.kind.name)
    return kind in ("llvm", "c")


def _conv_calls(mod: Any) -> tuple[list[Any], list[Any]]:
    """(convs not yet NHWC/HWIO, NHWC/HWIO convs) among the Relax functions of ``mod``."""
    import tvm_ffi
    from tvm import relax

    other: list[Any] = []
    nhwc: list[Any] = []

    def cb(call: Any) -> None:
        op = getattr(call, "op", None)
        if getattr(op, "name", None) == "relax.nn.conv2d":
            attrs = call.attrs
            if str(attrs.data_layout) == "NHWC" and str(attrs.kernel_layout) == "HWIO":
                nhwc.append(call)
            else:
                other.append(call)

    for _gv, fn in mod.functions.items():
        if isinstance(fn, relax.Function):
            tvm_ffi.structural_walk(fn.body, [(relax.Call, cb)])
    return other, nhwc


def _type_of(expr: Any) -> Any:
    """The Relax type of ``expr`` (``ty`` in TVM 0.27, ``struct_info`` before)."""
    return getattr(expr, "ty", None) or getattr(expr, "struct_info", None)


def _static_shape(expr: Any) -> tuple[int, ...] | None:
    from tvm import tirx

    sinfo = _type_of(expr)
    shape = getattr(sinfo, "shape", None)
    values = getattr(shape, "values", None)
    if values is None or not all(isinstance(v, tirx.IntImm) for v in values):
        return None
    return tuple(int(v) for v in values)


def packable(call: Any) -> bool:
    """Whether an NHWC/HWIO ``relax.nn.conv2d`` call can use packed weights.

    Needs static float shapes, one group, output layout NHWC, no dtype change and an output
    channel count divisible by :data:`PACK_LANES`.
    """
    attrs = call.attrs
    x_shape = _static_shape(call.args[0])
    w_shape = _static_shape(call.args[1])
    if x_shape is None or w_shape is None or len(x_shape) != 4 or len(w_shape) != 4:
        return False
    dtype = str(_type_of(call.args[0]).dtype)
    out_dtype = str(attrs.out_dtype)
    return (
        str(attrs.data_layout) == "NHWC"
        and str(attrs.kernel_layout) == "HWIO"
        and str(attrs.out_layout) in ("NHWC", "")
        and int(attrs.groups) == 1
        and dtype.startswith("float")
        and out_dtype in ("", "void", "None", dtype)
        and str(_type_of(call.args[1]).dtype) == dtype
        and w_shape[3] % PACK_LANES == 0
        and x_shape[3] == w_shape[2]
    )


def conv2d_nhwc_packed(
    data: Any, packed: Any, strides: tuple[int, int], padding: tuple[int, ...], dilation: Any
) -> Any:
    """TE direct convolution: NHWC data × ``[CO/P, KH, KW, CI, P]`` weights → NHWC output.

    Same loop nest as ``topi.nn.conv2d_nhwc`` (n, h, w, co; kh, kw, ci), with the padding
    as a separate ``pad_temp`` stage the conv template inlines.
    """
    from tvm import te, topi

    n, h, w, ci = (int(d) for d in data.shape)
    cb, kh, kw, _ci, p = (int(d) for d in packed.shape)
    sh, sw = strides
    dh, dw = dilation
    pt, pl, pb, pr = padding
    if any(padding):
        data = topi.nn.pad(data, [0, pt, pl, 0], [0, pb, pr, 0], name="pad_temp")
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    rc = te.reduce_axis((0, ci), name="rc")
    return te.compute(
        (n, oh, ow, cb * p),
        lambda b, y, x, co: te.sum(
            data[b, y * sh + ry * dh, x * sw + rx * dw, rc] * packed[co // p, ry, rx, rc, co % p],
            axis=[ry, rx, rc],
        ),
        name="conv2d_nhwc",
    )


def _pack_weights(mod: Any) -> Any:
    """Rewrite packable NHWC/HWIO conv2d calls to packed weights + a ``call_tir``."""
    from tvm import relax

    @relax.expr_functor.mutator
    class _Packer(relax.PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if getattr(call.op, "name", None) != "relax.nn.conv2d" or not packable(call):
                return call
            attrs = call.attrs
            kh, kw, ci, co = _static_shape(call.args[1])  # type: ignore[misc]
            bb = self.builder_
            w = bb.emit(relax.op.reshape(call.args[1], (kh, kw, ci, co // PACK_LANES, PACK_LANES)))
            w = bb.emit(relax.op.permute_dims(w, [3, 0, 1, 2, 4]))
            pad = [int(v) for v in attrs.padding]
            if len(pad) == 2:
                pad = [pad[0], pad[1], pad[0], pad[1]]
            return bb.call_te(
                conv2d_nhwc_packed,
                call.args[0],
                w,
                strides=tuple(int(v) for v in attrs.strides),
                padding=tuple(pad),
                dilation=tuple(int(v) for v in attrs.dilation),
                primfunc_name_hint=PACKED_CONV_NAME,
            )

        def transform(self, module: Any) -> Any:
            for gv, func in module.functions.items():
                if isinstance(func, relax.Function):
                    self.builder_.update_func(gv, self.visit_expr(func))
            return self.builder_.get()

    return _Packer(mod).transform(mod)


def prepare_module(mod: Any, target: Any, *, pack_weights: bool = True) -> Any:
    """The Relax module codegen and the schedule search both lower (same kernels, same hashes).

    On CPU targets, 2-D convolutions become NHWC (ConvertLayout over the whole module, so
    the layout changes cancel between consecutive convolutions and only the model's
    boundaries transpose) and, with ``pack_weights``, read output-channel-blocked weights
    (see the module docstring). Other modules and targets are returned unchanged.
    Idempotent. Codegen must call this before LegalizeOps for tuned records to match.

    Args:
        mod: a Relax IRModule (model or stage).
        target: a ``tvm.target.Target`` or its dict form.
        pack_weights: pack conv weights into ``[CO/P, KH, KW, CI, P]`` blocks.

    Returns:
        The (possibly) re-laid-out module.
    """
    from tvm import relax

    if not _is_cpu(target):
        return mod
    other, nhwc = _conv_calls(mod)
    if not other and not nhwc:
        return mod
    if other:
        mod = relax.transform.ConvertLayout(CPU_CONV_LAYOUTS)(mod)
    if pack_weights:
        _, nhwc = _conv_calls(mod)
        if any(packable(c) for c in nhwc):
            mod = _pack_weights(mod)
    return mod


__all__ = [
    "CPU_CONV_LAYOUTS",
    "PACKED_CONV_NAME",
    "PACK_LANES",
    "conv2d_nhwc_packed",
    "prepare_module",
]
