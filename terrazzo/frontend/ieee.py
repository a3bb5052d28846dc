"""Build fixup shared by the reference build and codegen: float min/max that propagate NaN.

TVM lowers ``T.max(a, b)`` on floats to ``select(a > b, a, b)`` on LLVM and ``fmaxf`` on
CUDA; both drop a NaN operand, so ``relu(NaN)`` came out as 0, ``clip``, ``Max``/``Min``,
``HardSigmoid`` and max/min reductions swallowed NaN, and a NaN input to a CNN gave finite
outputs. onnxruntime, torch and numpy (``np.maximum``) return NaN when either operand is NaN.
This pass rewrites every float ``Max``/``Min`` of a lowered (TIR) function into
``isnan(b) ? b : (a < b ? b : a)`` on CPUs (``min``: ``a > b``; no ``isnan`` when ``b`` is a
constant), which LLVM keeps exactly and still vectorizes, and into
``isnan(a) ? a : isnan(b) ? b : max(a, b)`` on GPUs; no fast-math flags are set on either
target.

On GPU targets the combiner of a reduction block (``C[i] = max(C[i], A[i, k])``) is kept as
it is: TVM's cross-thread reduction and rfactor only recognise the plain ``max``/``min``
combiner (with a guard, the CUDA build fails with "No matched reducer"). Everything inside the
combiner's operands and every elementwise max/min is still guarded, so ``relu``, ``clip`` and
softmax (``exp(x - max)`` is NaN for a NaN ``x``) propagate NaN on GPUs; a bare max/min
*reduction* (``ReduceMax``, max pooling) may drop a NaN there, as ``fmaxf`` does.

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


def _constant(e: Any) -> bool:
    """A float constant that is not NaN (it can never be the NaN operand)."""
    import math

    from tvm.ir.prim import expr as E

    return isinstance(e, E.FloatImm) and not math.isnan(float(e.value))


def _nan_propagating(e: Any, cpu: bool = True) -> Any:
    """``max(a, b)`` as ``isnan(b) ? b : (a < b ? b : a)`` (``min``: ``a > b``) on CPUs.

    A NaN ``a`` fails the comparison and is kept; a NaN ``b`` is caught by the one ``isnan``,
    left out when ``b`` is a constant (``relu``'s ``max(x, 0)``, ``clip``). Plain comparisons
    and selects keep the epilogue of a tuned kernel vectorized: the GPU form
    ``isnan(a) ? a : isnan(b) ? b : max(a, b)`` made a tuned conv+ReLU 2.4x slower and a
    depthwise conv+ReLU 5.8x slower on the CPU (8.2 -> 19.9 us, 1.3 -> 7.6 us, 1 thread,
    AVX-512).
    """
    from tvm import tirx
    from tvm.ir.prim import expr as E

    if not _is_float(str(e.ty.dtype)):
        return e
    a, b = e.a, e.b
    if cpu and _constant(a) and not _constant(b):  # the constant second: no NaN check
        a, b = b, a
    lets = []
    if not _shareable(a):
        va = tirx.Var("nan_a", a.ty.dtype)
        lets.append((va, a))
        a = va
    if not _shareable(b):
        vb = tirx.Var("nan_b", b.ty.dtype)
        lets.append((vb, b))
        b = vb
    if cpu:
        out = tirx.Select(a < b if isinstance(e, E.Max) else a > b, b, a)
        if not _constant(b):
            out = tirx.Select(tirx.isnan(b), b, out)
    else:
        op = tirx.max if isinstance(e, E.Max) else tirx.min
        out = tirx.Select(tirx.isnan(a), a, tirx.Select(tirx.isnan(b), b, op(a, b)))
    for v, value in reversed(lets):
        out = tirx.Let(v, value, out)
    return out


#: Marks a reduction combiner kept unguarded while the rest of the function is rewritten.
_KEEP = {"max": "__tz_keep_max", "min": "__tz_keep_min"}


def _keep_combiners(func: Any) -> Any:
    """Reduction blocks' top-level max/min combiners replaced by marker calls."""
    import tvm_ffi
    from tvm import s_tir, tirx
    from tvm.ir.prim import expr as E

    def store(st: Any) -> Any:
        v = st.value
        if isinstance(v, E.Max | E.Min) and _is_float(str(v.ty.dtype)):
            name = _KEEP["max" if isinstance(v, E.Max) else "min"]
            call = tirx.call_pure_extern(str(v.ty.dtype), name, v.a, v.b)
            return tirx.BufferStore(st.buffer, call, st.indices)
        return st

    def block(b: Any) -> Any:
        if any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in b.iter_vars):
            return tvm_ffi.structural_map(b, (tirx.BufferStore, store))
        return b

    return tvm_ffi.structural_map(func, (s_tir.SBlock, block))


def _restore_combiner(call: Any) -> Any:
    from tvm import tirx

    args = list(call.args)
    if len(args) == 3 and getattr(args[0], "value", None) in _KEEP.values():
        op = tirx.max if args[0].value == _KEEP["max"] else tirx.min
        return op(args[1], args[2])
    return call


def nan_propagating_function(func: Any, keep_reduction_combiners: bool = False) -> Any:
    """``func`` (a TIR PrimFunc) with every float Max/Min propagating NaN.

    ``keep_reduction_combiners`` (GPU targets) leaves reduction blocks' top-level max/min
    combiners plain, so cross-thread reductions still lower (see the module docstring).
    """
    import tvm_ffi
    from tvm import ir
    from tvm.ir.prim import expr as E

    if not keep_reduction_combiners:
        return tvm_ffi.structural_map(func, ((E.Max, E.Min), _nan_propagating))
    return tvm_ffi.structural_map(
        _keep_combiners(func),
        [((E.Max, E.Min), lambda e: _nan_propagating(e, cpu=False)), (ir.Call, _restore_combiner)],
    )


def NanPropagatingMinMax(gpu: bool = False) -> Any:  # noqa: N802 - named like TVM's passes
    """A module pass applying ``nan_propagating_function`` to every PrimFunc of a module
    (``gpu``: keeping reduction combiners plain).

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
                out[gv] = nan_propagating_function(f, keep_reduction_combiners=gpu)
        return out

    return _pass
