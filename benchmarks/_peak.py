"""The CPU's measured fp32 FMA peak: the yardstick kernel figures are reported against.

``fma_peak_gflops(threads)`` builds (with TVM, for the host target actually present) a kernel
that keeps ``accs`` independent vector accumulators in registers and runs ``acc = acc·a + b`` on
each (``a``, ``b`` immediates), one chain per thread; the widest vector the target has (16 lanes with AVX-512, 8 with
AVX2) and enough chains to hide the FMA latency. It reports the best of a few (lanes,
accumulators) shapes, medians of 7 runs each. On a loaded machine the figure drops with the
share of the cores this process gets, as a kernel's does: measure it in the same run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def _kernel(lanes: int, accs: int, iters: int, threads: int) -> Any:
    from tvm.script import tirx as T

    @T.prim_func
    def fma(x: T.Buffer((lanes,), "float32"), out: T.Buffer((threads, accs, lanes), "float32")):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for t in T.parallel(threads):
            acc = T.alloc_buffer((accs, lanes), "float32", scope="local")
            for r in T.unroll(accs):
                for lane in T.vectorized(lanes):
                    acc[r, lane] = x[lane] + T.float32(r)
            for _i in T.serial(iters):
                for r in T.unroll(accs):
                    for lane in T.vectorized(lanes):
                        # Immediates, not loads of ``x``: TVM places ``acc`` in a heap workspace,
                        # and a load in the loop that may alias it makes LLVM store every
                        # accumulator back each iteration (store-bound: half the FMA peak).
                        acc[r, lane] = acc[r, lane] * T.float32(0.999) + T.float32(0.001)
            for r in T.unroll(accs):
                for lane in T.vectorized(lanes):
                    out[t, r, lane] = acc[r, lane]

    return fma


def fma_peak_gflops(threads: int = 1, iters: int = 200_000) -> dict[str, Any]:
    """Measured fp32 FMA peak on ``threads`` threads: {gflops, lanes, accs, threads}."""
    import tvm

    from terrazzo.codegen import host_target

    target = tvm.target.Target(dict(host_target()))
    best: dict[str, Any] = {"gflops": 0.0}
    for lanes in (8, 16):
        for accs in (8, 12):
            f = tvm.build(_kernel(lanes, accs, iters, threads), target=target)
            x = tvm.runtime.tensor(np.full(lanes, 0.999, "float32"))
            out = tvm.runtime.tensor(np.zeros((threads, accs, lanes), "float32"))
            f(x, out)
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                f(x, out)
                times.append(time.perf_counter() - t0)
            t = sorted(times)[len(times) // 2]
            gflops = 2 * lanes * accs * iters * threads / t / 1e9
            if not np.isfinite(out.numpy()).all():
                raise RuntimeError("FMA peak kernel produced non-finite values")
            if gflops > best["gflops"]:
                best = {"gflops": gflops, "lanes": lanes, "accs": accs, "threads": threads}
    best["target"] = str(target)
    return best


if __name__ == "__main__":
    for n in (1, 2):
        print(fma_peak_gflops(n))
