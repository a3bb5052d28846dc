"""Held-out models, tuned, through the path users run, against onnxruntime: issue 14's headline.

Question: on the four held-out shapes (``_heldout.py``: small convnet 1×3×32×32, attention
block 1×16×64, BERT d=256 4 layers seq 128, residual CNN 112×112), after the user's steps
``terrazzo tune M.onnx`` (the CLI's default budget) and ``terrazzo compile M.onnx --tuning DB``
on a CPU-only fleet, how long does ``terrazzo.open_bundle(p).run({...})`` take per call, compared
with ``onnxruntime.InferenceSession.run``? Targets: median ratio ≤ 0.9, worst ≤ 1.2, at 1 and 2
threads.

Each thread count gets its own ``tune`` + ``compile`` with ``TVM_NUM_THREADS`` set to it (tuning
records are keyed by the thread count: a kernel tuned single-threaded is serial).

Method (the fair-benchmark rules of issue 14):
- every measurement runs in a **fresh process** holding one engine (``--child``), with the
  same thread count (``TVM_NUM_THREADS``/``OMP_NUM_THREADS`` and ORT's intra-op threads);
- both take host NumPy arrays and return host NumPy arrays;
- engines are **interleaved** round by round (ORT, Terrazzo, ORT, ...); each child reports the
  median of a time-bounded run after warm-up; the figure is the median over rounds;
- outputs are checked against onnxruntime (max abs error) before timing;
- the CPU model and features, load average (before/after each model) and versions go in the
  JSON (``results/heldout_speed.json``).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/heldout_speed.py [--models
convnet,attention,bert256,rescnn] [--threads 1,2] [--rounds 5] [--trials 32] [--workdir DIR]``.
``--no-tune`` skips tuning (the default schedules only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, print_table, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CPU_FLEET = "devices:\n  cpu: {count: 1}\npricing: {mode: cloud}\n"


def _child(engine: str, model: str, feeds_path: str, threads: int, seconds: float) -> None:
    """One engine in this fresh process: check outputs, then time calls; print JSON."""
    import numpy as np

    feeds = dict(np.load(feeds_path))
    if engine == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

        def call() -> Any:
            return sess.run(None, feeds)[0]
    else:
        import terrazzo

        bundle = terrazzo.open_bundle(model)

        def call() -> Any:
            return next(iter(bundle.run(feeds).values()))

    out = np.asarray(call())
    for _ in range(3):
        call()
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while len(times) < 20 or (time.perf_counter() < t_end and len(times) < 20000):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    np.save(feeds_path + f".{engine}.out.npy", out)
    print(json.dumps({"median_s": statistics.median(times), "calls": len(times)}))


def _run_child(engine: str, model: Path, feeds: Path, threads: int, seconds: float) -> float:
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--child", engine, "--model", str(model),
           "--feeds", str(feeds), "--threads", str(threads), "--seconds", str(seconds)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} child failed: {proc.stderr.strip().splitlines()[-1:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["median_s"])


def _terrazzo(env: dict[str, str], *args: str) -> None:
    exe = Path(sys.executable).with_name("terrazzo")
    cmd = [str(exe), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"terrazzo {args[0]} failed: {proc.stderr.strip()[-400:]}")


def bench_model(name: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    import _heldout
    import numpy as np

    path, feeds = _heldout.export(name, work)
    feeds_path = work / f"{name}.feeds.npz"
    np.savez(feeds_path, **feeds)
    fleet = work / "cpu.yaml"
    fleet.write_text(CPU_FLEET)
    db = work / f"{name}.records.jsonl"
    rows = []
    for n in args.threads:
        # Tuned and compiled at the thread count it runs with, as a user deploying at n
        # threads does (records are keyed by TVM_NUM_THREADS: a kernel tuned on one thread
        # is serial and would leave the second core idle).
        env = dict(os.environ, TVM_NUM_THREADS=str(n), OMP_NUM_THREADS=str(n))
        bundle = work / f"{name}.t{n}.tzb"
        t0 = time.perf_counter()
        if not args.no_tune:
            _terrazzo(env, "tune", str(path), "--fleet", str(fleet), "--tuning", str(db),
                      "--trials", str(args.trials))  # fmt: skip
        t1 = time.perf_counter()
        tuning = ["--tuning", str(db)] if db.exists() else []
        _terrazzo(env, "compile", str(path), "--fleet", str(fleet), "--sla", "10s", *tuning,
                  "-o", str(bundle))  # fmt: skip
        t2 = time.perf_counter()
        load0 = os.getloadavg()[0]
        per: dict[str, list[float]] = {"ort": [], "terrazzo": []}
        for _ in range(args.rounds):
            per["ort"].append(_run_child("ort", path, feeds_path, n, args.seconds))
            per["terrazzo"].append(_run_child("terrazzo", bundle, feeds_path, n, args.seconds))
        want = np.load(str(feeds_path) + ".ort.out.npy")
        got = np.load(str(feeds_path) + ".terrazzo.out.npy")
        ort_s, tz_s = (statistics.median(v) for v in (per["ort"], per["terrazzo"]))
        rows.append(
            {
                "model": name,
                "threads": n,
                "ort_ms": ort_s * 1e3,
                "terrazzo_ms": tz_s * 1e3,
                "ratio": tz_s / ort_s,
                "max_abs_err_vs_ort": float(np.abs(got.astype(np.float64) - want).max()),
                "tuned": bool(tuning),
                "tune_s": t1 - t0,
                "compile_s": t2 - t1,
                "load_avg_1m": [load0, os.getloadavg()[0]],
                "rounds_ort_ms": [t * 1e3 for t in per["ort"]],
                "rounds_terrazzo_ms": [t * 1e3 for t in per["terrazzo"]],
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="convnet,attention,bert256,rescnn")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per child")
    ap.add_argument("--trials", type=int, default=32, help="trials per kernel (CLI default 32)")
    ap.add_argument("--no-tune", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", choices=("ort", "terrazzo"))
    ap.add_argument("--model")
    ap.add_argument("--feeds")
    ap.add_argument("--name", default="heldout_speed")
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.model, args.feeds, int(args.threads), args.seconds)
        return
    args.threads = [int(t) for t in str(args.threads).split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tz-heldout-"))
    work.mkdir(parents=True, exist_ok=True)
    print("machine:", machine_info(), flush=True)
    rows = [r for m in args.models.split(",") for r in bench_model(m, args, work)]
    ratios = [r["ratio"] for r in rows]
    summary = {
        "median_ratio": statistics.median(ratios),
        "worst_ratio": max(ratios),
        "target_met": statistics.median(ratios) <= 0.9 and max(ratios) <= 1.2,
    }
    print_table(
        rows,
        ["model", "threads", "ort_ms", "terrazzo_ms", "ratio", "max_abs_err_vs_ort", "load_avg_1m"],
        title=f"Held-out models, tuned, bundle path vs onnxruntime (fresh process per engine): "
        f"median ratio {summary['median_ratio']:.2f}, worst {summary['worst_ratio']:.2f}",
    )
    write_result(args.name, rows, {"summary": summary, "rounds": args.rounds,
                                   "trials": None if args.no_tune else args.trials})  # fmt: skip


if __name__ == "__main__":
    main()
