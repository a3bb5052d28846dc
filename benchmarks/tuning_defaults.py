"""Untuned CPU builds: plain loop nests vs default schedules vs onnxruntime; GEMM epilogues.

Question 1 (issue 14, deliverable 2): without any tuning record, how far is a Terrazzo CPU
build from onnxruntime on the issue's four held-out shapes (``_heldout.py``: small convnet
1×3×32×32, attention block 1×16×64, BERT d=256 4 layers seq 128, residual CNN 112×112),
with TVM's plain loop nests (``TERRAZZO_DEFAULT_SCHEDULES=0``, what every untuned build was
before) and with the default schedules (``terrazzo.codegen.tuning.defaults``)? Target: the
default-scheduled build within 3× of onnxruntime.

Question 2 (deliverable 3): what does a fused epilogue cost inside the GEMM micro-kernel?
GEMM+bias vs GEMM+bias+ReLU vs GEMM+bias+GELU (erf), with the vectorized erf
(``tuning.vector_math``) and with the libm ``erff`` it replaces (``TERRAZZO_VECTOR_MATH=0``).
Target: GEMM+GELU ≤ 1.3× GEMM.

Method: every engine takes host NumPy inputs and returns host NumPy outputs (TVM's timing
includes the tensor conversions, like onnxruntime's). Engines of one comparison run in the
same process, interleaved round by round (``--rounds``), each round a time-bounded median;
the figure is the median over rounds, and ratios are taken within the process. The load
average (``os.getloadavg``) is recorded before and after each model; the CPU model with the
result file. On a shared machine compare the ratios, not the absolute times.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/tuning_defaults.py [--models
convnet,attention,bert256,rescnn] [--threads 1,2] [--rounds 5] [--skip-gemm]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, print_table, write_result  # noqa: E402


def _median_s(fn: Callable[[], Any], min_runs: int = 5, min_s: float = 0.15) -> float:
    fn()
    ts: list[float] = []
    t_end = time.perf_counter() + min_s
    while len(ts) < min_runs or (time.perf_counter() < t_end and len(ts) < 2000):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _interleaved(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    per: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            per[k].append(_median_s(fn))
    return {k: statistics.median(v) for k, v in per.items()}


def _compile(mod: Any, env: dict[str, str]) -> Any:
    from terrazzo.codegen import compile_module, host_target

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return compile_module(mod, dict(host_target()))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _tvm_fn(ex: Any, inputs: list[Any], threads: int) -> Callable[[], Any]:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(ex, tvm.cpu())
    f = vm["main"]
    config = tvm.get_global_func("runtime.config_threadpool")

    def run() -> Any:
        out = f(*[tvm.runtime.tensor(x) for x in inputs])
        return out.numpy() if hasattr(out, "numpy") else out[0].numpy()

    run.config = lambda: config(0, threads)  # type: ignore[attr-defined]
    return run


def bench_model(name: str, threads: list[int], rounds: int, onnx_dir: Path) -> list[dict[str, Any]]:
    import _heldout
    import numpy as np
    import onnxruntime as ort

    from terrazzo.pipeline import load_model

    path, feeds = _heldout.export(name, onnx_dir)
    graph, _ = load_model(str(path))
    t0 = time.perf_counter()
    ex_plain = _compile(graph.relax_mod, {"TERRAZZO_DEFAULT_SCHEDULES": "0"})
    t1 = time.perf_counter()
    ex_default = _compile(graph.relax_mod, {})
    t2 = time.perf_counter()
    inputs = list(feeds.values())
    rows = []
    for n in threads:
        so = ort.SessionOptions()
        so.intra_op_num_threads = n
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        plain, default = _tvm_fn(ex_plain, inputs, n), _tvm_fn(ex_default, inputs, n)
        plain.config()  # type: ignore[attr-defined]
        want = sess.run(None, feeds)[0]
        err = float(np.abs(default() - want).max())
        err_plain = float(np.abs(plain() - want).max())
        load0 = os.getloadavg()[0]
        lat = _interleaved(
            {"ort": lambda s=sess: s.run(None, feeds), "default": default, "plain": plain},
            rounds,
        )
        rows.append(
            {
                "model": name,
                "threads": n,
                "plain_ms": lat["plain"] * 1e3,
                "default_ms": lat["default"] * 1e3,
                "ort_ms": lat["ort"] * 1e3,
                "plain_over_ort": lat["plain"] / lat["ort"],
                "default_over_ort": lat["default"] / lat["ort"],
                "speedup": lat["plain"] / lat["default"],
                "max_abs_err_vs_ort": err,
                "plain_max_abs_err_vs_ort": err_plain,
                "build_plain_s": t1 - t0,
                "build_default_s": t2 - t1,
                "load_avg_1m": [load0, os.getloadavg()[0]],
                "target_met": lat["default"] / lat["ort"] <= 3.0,
            }
        )
        print(rows[-1], flush=True)
    return rows


def _gemm_module(m: int, k: int, n: int, epilogue: str) -> Any:
    from tvm import relax
    from tvm.script import relax as R

    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor((m, k), "float32"))
    w = relax.Var("w", R.Tensor((k, n), "float32"))
    b = relax.Var("b", R.Tensor((n,), "float32"))
    with bb.function("main", [x, w, b]):
        with bb.dataflow():
            y = relax.op.add(relax.op.matmul(x, w), b)
            if epilogue == "relu":
                y = relax.op.nn.relu(y)
            elif epilogue.startswith("gelu"):
                y = relax.op.nn.gelu(y)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def bench_gemm(shapes: list[tuple[int, int, int]], rounds: int) -> list[dict[str, Any]]:
    """GEMM+bias vs +ReLU vs +GELU (vectorized erf) vs +GELU (libm erff), one thread."""
    import numpy as np
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(0, 1)
    rows = []
    for m, k, n in shapes:
        rng = np.random.default_rng(0)
        inputs = [rng.standard_normal(s).astype("float32") for s in ((m, k), (k, n), (n,))]
        variants = {
            "gemm": {},
            "relu": {},
            "gelu": {},
            "gelu_libm": {"TERRAZZO_VECTOR_MATH": "0"},
        }
        fns = {
            v: _tvm_fn(_compile(_gemm_module(m, k, n, v), env), inputs, 1)
            for v, env in variants.items()
        }
        y = inputs[0] @ inputs[1] + inputs[2]
        from scipy.special import erf

        ref = y * 0.5 * (1.0 + erf(y / np.sqrt(2.0)))
        err = float(np.abs(fns["gelu"]() - ref).max())
        load0 = os.getloadavg()[0]
        lat = _interleaved(fns, rounds)
        row = {
            "shape": f"{m}x{k}x{n}",
            **{f"{v}_us": t * 1e6 for v, t in lat.items()},
            "relu_over_gemm": lat["relu"] / lat["gemm"],
            "gelu_over_gemm": lat["gelu"] / lat["gemm"],
            "gelu_libm_over_gemm": lat["gelu_libm"] / lat["gemm"],
            "gemm_gflops": 2 * m * k * n / lat["gemm"] / 1e9,
            "gelu_max_abs_err": err,
            "load_avg_1m": [load0, os.getloadavg()[0]],
            "target_met": lat["gelu"] / lat["gemm"] <= 1.3,
        }
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="convnet,attention,bert256,rescnn")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-gemm", action="store_true")
    ap.add_argument("--gemm-shapes", default="16x64x256,128x256x1024,128x1024x256,512x512x512")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    onnx_dir = Path(tempfile.gettempdir()) / "terrazzo-bench-heldout"
    threads = [int(t) for t in args.threads.split(",")]
    rows: list[dict[str, Any]] = []
    for name in [m for m in args.models.split(",") if m]:
        rows += bench_model(name, threads, args.rounds, onnx_dir)
    os.environ.setdefault("COLUMNS", "220")
    cpu = machine_info()["cpu"]
    if rows:
        print_table(
            rows,
            ["model", "threads", "plain_ms", "default_ms", "ort_ms", "plain_over_ort",
             "default_over_ort", "speedup", "max_abs_err_vs_ort", "load_avg_1m", "target_met"],
            title=f"Untuned Terrazzo (plain loops / default schedules) vs onnxruntime — {cpu}",
        )  # fmt: skip
    gemm: list[dict[str, Any]] = []
    if not args.skip_gemm:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.gemm_shapes.split(",")]
        gemm = bench_gemm(shapes, args.rounds)  # type: ignore[arg-type]
        print_table(
            gemm,
            ["shape", "gemm_us", "relu_us", "gelu_us", "gelu_libm_us", "relu_over_gemm",
             "gelu_over_gemm", "gelu_libm_over_gemm", "gemm_gflops", "load_avg_1m",
             "target_met"],
            title=f"GEMM+bias epilogues, default schedule, 1 thread — {cpu}",
        )  # fmt: skip
    write_result(
        "tuning_defaults",
        rows,
        {"gemm_rows": gemm, "rounds": args.rounds, "threads": threads},
    )


if __name__ == "__main__":
    main()
