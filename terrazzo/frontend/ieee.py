"""Build fixup shared by the reference build and codegen: float min/max that propagate NaN.

TVM lowers ``T.max(a, b)`` on floats to ``select(a > b, a, b)`` on LLVM and ``fmaxf`` on
CUDA; both drop a NaN operand, so ``relu(NaN)`` came out as 0, ``clip``, ``Max``/``Min``,
``HardSigmoid`` and max/min reductions swallowed NaN, and a NaN input to a CNN gave finite
outputs. onnxruntime, torch and numpy (``np.maximum``) return NaN when either operand is NaN.
This pass rewrites every float ``Max``/``Min`` of a lowered (TIR) function into
``isnan(a) ? a : isnan(b) ? b : max(a, b)``, which LLVM and nvcc keep exactly (no fast-math
flags are set on either target).

Where onnxruntime itself is order-dependent (its ``MaxPool`` keeps a NaN only when it is the
first element of a window), Terrazzo follows torch: any NaN in the window gives NaN.
"""

from __future__ import annotations

from typing import Any


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def _shareable(e: Any) -> bool:
    """Cheap to evaluate twice: a variable, a constant or a buffer load."""
    from tvm import ir
    from tvm.ir.prim import expr as E

    return isinstance(e, E.Var | E.IntImm | E.FloatImm | ir.TensorLoad)


def _nan_propagating(e: Any) -> Any:
    from tvm import tirx
    from tvm.ir.prim import expr as E

    if not _is_float(str(e.ty.dtype)):
        return e
    a, b = e.a, e.b
    lets = []
    if not _shareable(a):
        va = tirx.Var("nan_a", a.ty.dtype)
        lets.append((va, a))
        a = va
    if not _shareable(b):
        vb = tirx.Var("nan_b", b.ty.dtype)
        lets.append((vb, b))
        b = vb
    op = tirx.max if isinstance(e, E.Max) else tirx.min
    out = tirx.Select(tirx.isnan(a), a, tirx.Select(tirx.isnan(b), b, op(a, b)))
    for v, value in reversed(lets):
        out = tirx.Let(v, value, out)
    return out


def nan_propagating_function(func: Any) -> Any:
    """``func`` (a TIR PrimFunc) with every float Max/Min propagating NaN."""
    import tvm_ffi
    from tvm.ir.prim import expr as E

    return tvm_ffi.structural_map(func, ((E.Max, E.Min), _nan_propagating))


def NanPropagatingMinMax() -> Any:  # noqa: N802 - named like the TVM passes it sits among
    """A module pass applying ``nan_propagating_function`` to every PrimFunc of a module.

    Run it after legalization and scheduling (it changes the functions' structural hash, so
    tuning records are looked up before it runs).
    """
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="NanPropagatingMinMax")
    def _pass(mod: Any, _ctx: Any) -> Any:
        out = mod.clone() if hasattr(mod, "clone") else mod
        for gv, f in mod.functions.items():
            if isinstance(f, tirx.PrimFunc):
                out[gv] = nan_propagating_function(f)
        return out

    return _pass
