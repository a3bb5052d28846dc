"""Small built-in workloads (single kernels and Relax modules) for tests, benchmarks and demos.

Sits beside the schedule search: it gives the loop and the benchmarks known kernels
(matmul, conv2d, softmax, a fused MLP) without needing a model file.
"""

from __future__ import annotations

from typing import Any


def matmul(m: int, n: int, k: int, dtype: str = "float32") -> Any:
    """C[m, n] = A[m, k] @ B[k, n] as a schedulable PrimFunc."""
    from tvm import te

    a = te.placeholder((m, k), dtype, name="A")
    b = te.placeholder((k, n), dtype, name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    return _prim(a, b, c)


def batch_matmul(batch: int, m: int, n: int, k: int, dtype: str = "float32") -> Any:
    """C[b, m, n] = A[b, m, k] @ B[b, k, n]: attention's scores (Q·Kᵀ) or context (P·V)."""
    from tvm import te

    a = te.placeholder((batch, m, k), dtype, name="A")
    b = te.placeholder((batch, k, n), dtype, name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((batch, m, n), lambda z, i, j: te.sum(a[z, i, r] * b[z, r, j], axis=r), name="C")
    return _prim(a, b, c)


def conv2d(
    batch: int, cin: int, hw: int, cout: int, kernel: int, pad: int = 1, dtype: str = "float32"
) -> Any:
    """NCHW conv2d (stride 1) with explicit padding, as legalised by Relax."""
    from tvm import te, topi

    x = te.placeholder((batch, cin, hw, hw), dtype, name="X")
    w = te.placeholder((cout, cin, kernel, kernel), dtype, name="W")
    y = topi.nn.conv2d_nchw(x, w, stride=1, padding=pad, dilation=1)
    return _prim(x, w, y)


def conv2d_nhwc(
    batch: int, cin: int, hw: int, cout: int, kernel: int, pad: int = 1, dtype: str = "float32"
) -> Any:
    """NHWC conv2d with HWIO weights (stride 1), the CPU layout ``prepare_module`` picks."""
    from tvm import te, topi

    x = te.placeholder((batch, hw, hw, cin), dtype, name="X")
    w = te.placeholder((kernel, kernel, cin, cout), dtype, name="W")
    y = topi.nn.conv2d_nhwc(x, w, stride=1, padding=pad, dilation=1)
    return _prim(x, w, y)


def softmax(rows: int, cols: int, dtype: str = "float32") -> Any:
    """Row softmax (max, exp, sum, divide): a multi-block reduction kernel."""
    from tvm import te, topi

    x = te.placeholder((rows, cols), dtype, name="X")
    y = topi.nn.softmax(x, axis=1)
    return _prim(x, y)


def add_relu(rows: int, cols: int, dtype: str = "float32") -> Any:
    """Elementwise relu(a + b)."""
    from tvm import te, topi

    a = te.placeholder((rows, cols), dtype, name="A")
    b = te.placeholder((rows, cols), dtype, name="B")
    y = topi.nn.relu(topi.add(a, b))
    return _prim(a, b, y)


def mlp_module(batch: int = 8, d_in: int = 256, d_hidden: int = 512, d_out: int = 10) -> Any:
    """A Relax MLP x → matmul+bias+relu → matmul → softmax, weights as parameters."""
    import numpy as np
    from tvm import relax
    from tvm.script import relax as R

    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor((batch, d_in), "float32"))
    rng = np.random.default_rng(0)
    w1 = relax.const(rng.standard_normal((d_in, d_hidden)).astype("float32") * 0.05)
    b1 = relax.const(rng.standard_normal((d_hidden,)).astype("float32") * 0.05)
    w2 = relax.const(rng.standard_normal((d_hidden, d_out)).astype("float32") * 0.05)
    with bb.function("main", [x]):
        with bb.dataflow():
            h = bb.emit(relax.op.matmul(x, w1))
            h = bb.emit(relax.op.add(h, b1))
            h = bb.emit(relax.op.nn.relu(h))
            o = bb.emit(relax.op.matmul(h, w2))
            o = bb.emit(relax.op.nn.softmax(o))
            out = bb.emit_output(o)
        bb.emit_func_output(out)
    return bb.get()


def _prim(*tensors: Any) -> Any:
    from tvm import te

    func = te.create_prim_func(list(tensors))
    return func.with_attr({"global_symbol": "main", "tirx.noalias": True})


KERNELS = {
    "matmul": lambda: matmul(64, 64, 64),
    "conv": lambda: conv2d(1, 8, 16, 16, 3),
    "conv_nhwc": lambda: conv2d_nhwc(1, 8, 8, 16, 3),
    "softmax": lambda: softmax(16, 128),
    "elementwise": lambda: add_relu(64, 128),
}

__all__ = ["KERNELS", "add_relu", "conv2d", "conv2d_nhwc", "matmul", "mlp_module", "softmax"]
