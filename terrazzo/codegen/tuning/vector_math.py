"""Vectorizable fp32 transcendental functions for CPU kernels (``erf`` today).

Sits in codegen's CPU pipeline after the schedules (``_build._pipeline``). LLVM has no
vector form of ``erff``: TVM lowers ``tirx.erf`` to a call of the C library's ``erff`` for
every element, so a vectorized GELU epilogue becomes 16 scalar calls per vector and a
GEMM with a fused GELU took 5-10× the time of its twin without it (issue 14). This pass
replaces each fp32 ``tirx.erf`` with branch-free piecewise polynomials (:func:`erf_f32`)
built from arithmetic that LLVM vectorizes.

TVM's own ``topi.fast_erf`` (Eigen's rational approximation) was measured here at up to
6.5 ulp and answers ±1 for NaN (its clamp swallows NaN), so it is not used. Here a
NaN input is passed through (``select(x != x, x, ...)``), ±inf gives ±1 (as ``erff`` does),
and ``-0.0`` stays ``-0.0``. Accuracy, measured against the float64 ``erf`` over a dense sweep
of fp32 inputs (``tests/unit/codegen/test_default_schedules.py`` checks the bound): at most
:data:`ERF_MAX_ULP` units in the last place and :data:`ERF_MAX_ABS` absolute error; libm
``erff`` is within 1 ulp. ``TERRAZZO_VECTOR_MATH=0`` keeps the libm calls.
"""

from __future__ import annotations

import os
from typing import Any

#: Environment switch: ``0`` keeps TVM's scalar libm calls.
VECTOR_MATH_ENV = "TERRAZZO_VECTOR_MATH"

#: Worst error of :func:`erf_f32` over the test sweep, in fp32 ulps of the exact result and
#: absolute (see the module docstring).
ERF_MAX_ULP = 1.5
ERF_MAX_ABS = 1e-7

# Coefficients (highest power first, rounded to fp32), from Chebyshev interpolation in float64
# of scipy's erf: degree 7 in x² for erf(x)/x on [0, 1] (≤ 1.2e-9 relative), degree 16 in
# s = (|x| - 2.46) / 1.46 for erf on [1, 3.92] (≤ 8e-9 absolute with fp32 coefficients);
# beyond 3.92 erf rounds to 1 in fp32. Both below fp32 rounding.
_SMALL = (-9.673591193859465e-06, 0.00011268253729213029, -0.0008484396385028958,
          0.005221053492277861, -0.026865437626838684, 0.11283782869577408,
          -0.37612637877464294, 1.128379225730896)  # fmt: skip
#: 2/√π minus its fp32 rounding ``_SMALL[-1]``.
_TWO_OVER_SQRT_PI_LO = -5.8635382e-08
_LARGE_MID, _LARGE_INV_HALF, _LARGE_END = 2.46, 0.684931506849315, 3.92
_LARGE = (-3.5903608477383386e-06, -0.0001071550723281689, 0.0002332033182028681,
          0.0004148174775764346, -0.0016492033610120416, 0.0009846612811088562,
          0.0033567643258720636, -0.00857069157063961, 0.007338379044085741,
          0.006306893192231655, -0.02844529040157795, 0.045146577060222626,
          -0.04504755511879921, 0.030596280470490456, -0.013928969390690327,
          0.0038782041519880295, 0.9994966387748718)  # fmt: skip


def enabled() -> bool:
    """Whether the rewrite is on (``TERRAZZO_VECTOR_MATH`` is not ``0``)."""
    return os.environ.get(VECTOR_MATH_ENV, "1") != "0"


def _estrin(coeffs: tuple[float, ...], t: Any) -> Any:
    """``sum(coeffs[i] · t^(n-i))`` by Estrin's scheme: pairs ``a·t + b`` combined with
    ``t², t⁴, ...`` — a dependency chain of depth log2(n) instead of Horner's n, so vector
    FMAs overlap (an epilogue's erf is latency-bound otherwise)."""
    from tvm import tirx

    terms = [tirx.const(v, "float32") for v in reversed(coeffs)]  # lowest power first
    power = t
    while len(terms) > 1:
        nxt = [terms[i] + terms[i + 1] * power for i in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            nxt.append(terms[-1])
        terms, power = nxt, power * power
    return terms[0]


def erf_f32(x: Any) -> Any:
    """fp32 ``erf(x)`` as a TIR expression of ``x`` (vectorizable, NaN-preserving).

    ``|x| < 1``: ``x · P(x²)`` (exact sign and relative accuracy down to subnormals);
    ``1 ≤ |x| < 3.92``: one degree-16 polynomial in ``|x|`` with the sign of ``x``;
    ``|x| ≥ 3.92`` (±inf too): ±1. Both branches are computed and blended (no branches).
    """
    from tvm import tirx

    f32 = "float32"

    def c(v: float) -> Any:
        return tirx.const(v, f32)

    x2 = x * x
    p = _estrin(_SMALL[:-1], x2)
    # x·2/√π with the constant split in two fp32 parts, the leading product fused into one
    # rounding (LLVM contracts ``a*b + c`` to an FMA): 0.7 → 0.4 ulp on average near zero.
    small = x * c(_SMALL[-1]) + (x * c(_TWO_OVER_SQRT_PI_LO) + x * (x2 * p))
    a = tirx.min(tirx.abs(x), c(_LARGE_END))
    t = (a - c(_LARGE_MID)) * c(_LARGE_INV_HALF)
    q = c(_LARGE[0])  # Horner: Estrin's shorter chain cost 2.5 ulp of accuracy here
    for k in _LARGE[1:]:
        q = q * t + c(k)
    q = tirx.Select(a < c(_LARGE_END), q, c(1.0))
    large = tirx.Select(x < c(0.0), -q, q)
    # NaN passes through, ±0 keeps its sign.
    keep = tirx.Or(tirx.isnan(x), x == c(0.0))
    return tirx.Select(keep, x, tirx.Select(a < c(1.0), small, large))


def _rewrite_call(call: Any) -> Any:
    import tvm

    if (
        isinstance(call.op, tvm.ir.Op)
        and call.op.name == "tirx.erf"
        and str(call.ty) == "float32"
        and len(call.args) == 1
    ):
        return erf_f32(call.args[0])
    return call


def vectorize_math(func: Any) -> Any:
    """``func`` (a PrimFunc) with every fp32 ``erf`` call replaced by :func:`erf_f32`."""
    import tvm
    import tvm_ffi

    found: list[Any] = []

    def cb(call: Any) -> None:
        if getattr(call.op, "name", None) == "tirx.erf":
            found.append(call)

    tvm_ffi.structural_walk(func.body, [(tvm.ir.expr.Call, cb)])
    if not found:
        return func
    return tvm_ffi.structural_map(func, [(tvm.ir.expr.Call, _rewrite_call)], order="post")


def apply_vector_math(mod: Any) -> Any:
    """Apply :func:`vectorize_math` to every PrimFunc of ``mod`` (unchanged when disabled)."""
    from tvm import tirx

    if not enabled():
        return mod
    out = mod.clone() if hasattr(mod, "clone") else mod
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tirx.PrimFunc):
            new = vectorize_math(func)
            if not new.same_as(func):
                out.update_func(gv, new)
    return out


__all__ = [
    "ERF_MAX_ABS",
    "ERF_MAX_ULP",
    "VECTOR_MATH_ENV",
    "apply_vector_math",
    "enabled",
    "erf_f32",
    "vectorize_math",
]
