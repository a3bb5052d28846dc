"""Tuning-friendly layouts: convolutions to NHWC/HWIO on CPU targets before lowering.

Sits before kernel extraction in the schedule search and (the same pass) before LegalizeOps
in codegen. NCHW/OIHW convolutions cannot vectorize well on a CPU when the spatial extent
is small (ResNet's late layers are 2×2 or 4×4): the innermost contiguous axis of both output
and weight is short or strided. In NHWC with HWIO weights the output channel is innermost
and contiguous in output and weight alike, so the tiled template vectorizes over output
channels and register-tiles over width. With constant weights, FoldConstant turns the
weight permutation into a build-time constant; activations are transposed once at the
model's boundaries.
"""

from __future__ import annotations

from typing import Any

#: Relax ConvertLayout request: data NHWC, weight HWIO (output channel innermost).
CPU_CONV_LAYOUTS: dict[str, list[str]] = {"relax.nn.conv2d": ["NHWC", "HWIO"]}


def _is_cpu(target: Any) -> bool:
    kind = target.get("kind") if isinstance(target, dict) else str(target.kind.name)
    return kind in ("llvm", "c")


def _has_conv2d(mod: Any) -> bool:
    import tvm_ffi
    from tvm import relax

    found: list[Any] = []

    def cb(call: Any) -> None:
        op = getattr(call, "op", None)
        if getattr(op, "name", None) == "relax.nn.conv2d":
            attrs = call.attrs
            if str(attrs.data_layout) != "NHWC" or str(attrs.kernel_layout) != "HWIO":
                found.append(call)

    for _gv, fn in mod.functions.items():
        if isinstance(fn, relax.Function):
            tvm_ffi.structural_walk(fn.body, [(relax.Call, cb)])
    return bool(found)


def prepare_module(mod: Any, target: Any) -> Any:
    """The Relax module codegen and the schedule search both lower (same kernels, same hashes).

    On CPU targets, NCHW 2-D convolutions become NHWC with HWIO weights; other modules and
    targets are returned unchanged. Codegen must call this before LegalizeOps for tuned
    convolution records to match.

    Args:
        mod: a Relax IRModule (model or stage).
        target: a ``tvm.target.Target`` or its dict form.

    Returns:
        The (possibly) re-laid-out module.
    """
    from tvm import relax

    if not _is_cpu(target) or not _has_conv2d(mod):
        return mod
    return relax.transform.ConvertLayout(CPU_CONV_LAYOUTS)(mod)


__all__ = ["CPU_CONV_LAYOUTS", "prepare_module"]
