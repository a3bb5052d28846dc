"""Question: does a 3-stage pipeline served by Terrazzo keep up with the same model run in one process?

The model is an MLP of ``3 * --layers`` dense+ReLU layers (``--hidden`` wide, batch ``--batch``),
cut into 3 stages of ``--layers`` layers each; every stage is a Relax function compiled by TVM
for the CPU and exported as a library (``terrazzo.runtime.runners:relax_library``), so each
stage takes a few ms. Two ways to run it:

- ``in-process``: the three stage libraries called one after the other in this process (the
  TVM thread pool sized by ``TVM_NUM_THREADS``, measured at 1 thread and at all cores);
- ``served``: ``terrazzo.runtime.serve`` with one worker process per stage (each worker's TVM
  pool at ``--worker-threads``), driven closed-loop by N threads of the stock
  ``tritonclient.grpc`` client (N = ``--concurrency``). Stages of different requests overlap
  across the workers, which amortises the RPC hops.

At saturation the served throughput should be >= 0.9x the in-process throughput. Every served
answer is checked against the in-process answer. The machine may be shared: the load average
is recorded with the results.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/serving_pipeline.py [--seconds 8]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import print_table, write_result  # noqa: E402

RELAX = "terrazzo.runtime.runners:relax_library"


def build_stage_libs(out: Path, hidden: int, batch: int, layers: int, seed: int = 0) -> list[str]:
    """Compile 3 stages of ``layers`` dense+ReLU layers each with TVM and export them as libraries."""
    import tvm
    from tvm import relax

    rng = np.random.default_rng(seed)
    paths = []
    for k in range(3):
        bb = relax.BlockBuilder()
        x = relax.Var("h", relax.TensorType((batch, hidden), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                h = x
                for _ in range(layers):
                    w = rng.standard_normal((hidden, hidden)).astype(np.float32) / np.sqrt(hidden)
                    h = bb.emit(relax.op.nn.relu(relax.op.matmul(h, relax.const(w))))
                out_v = bb.emit_output(h)
            bb.emit_func_output(out_v)
        path = out / f"stage{k}.so"
        tvm.compile(bb.get(), target="llvm").export_library(str(path))
        paths.append(str(path))
    return paths


def _in_process(paths: list[str], x: np.ndarray, seconds: float, threads: int) -> dict:
    """Run the 3 stages sequentially in a fresh process with ``threads`` TVM threads."""
    code = f"""
import sys, time, json, numpy as np
sys.path.insert(0, {str(ROOT)!r})
from terrazzo.runtime.runners import relax_library
paths = {paths!r}
runners = [relax_library(p, ["h"], ["h"]) for p in paths]
x = np.load(sys.argv[1])
def model(h):
    for r in runners:
        h = r({{"h": h}})["h"]
    return h
for _ in range(5):
    y = model(x)
np.save(sys.argv[2], y)
lat = []
end = time.perf_counter() + {seconds}
t_start = time.perf_counter()
while time.perf_counter() < end:
    t0 = time.perf_counter(); model(x); lat.append(time.perf_counter() - t0)
wall = time.perf_counter() - t_start
print(json.dumps({{"n": len(lat), "wall_s": wall, "lat": lat}}))
"""
    with tempfile.TemporaryDirectory() as d:
        xin, yout = Path(d) / "x.npy", Path(d) / "y.npy"
        np.save(xin, x)
        env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        out = subprocess.run(
            [sys.executable, "-c", code, str(xin), str(yout)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        import json

        res = json.loads(out.stdout.strip().splitlines()[-1])
        res["y"] = np.load(yout)
    lat = np.asarray(res["lat"])
    return {
        "rps": res["n"] / res["wall_s"],
        "p50_ms": float(np.percentile(lat, 50)) * 1e3,
        "p99_ms": float(np.percentile(lat, 99)) * 1e3,
        "requests": res["n"],
        "y": res["y"],
    }


def _closed_loop(
    url: str, x: np.ndarray, expected: np.ndarray, threads: int, seconds: float
) -> dict:
    """N stock-client threads, each sending the next request as soon as the last one answered."""
    import tritonclient.grpc as tc

    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def loop() -> None:
        c = tc.InferenceServerClient(url)
        inp = tc.InferInput("h", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        c.infer("mlp3", [inp])  # warm this connection
        mine = []
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                y = c.infer("mlp3", [inp], client_timeout=30).as_numpy("out")
            except Exception as e:  # noqa: BLE001  counted and reported
                with lock:
                    errors.append(str(e))
                continue
            mine.append(time.perf_counter() - t0)
            if not np.allclose(y, expected, rtol=1e-4, atol=1e-4):
                with lock:
                    errors.append("wrong answer")
        with lock:
            lat.extend(mine)
        c.close()

    ts = [threading.Thread(target=loop) for _ in range(threads)]
    for t in ts:
        t.start()
    time.sleep(1.0)  # every thread warmed up
    with lock:
        lat.clear()
    t_start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join(timeout=60)
    wall = time.perf_counter() - t_start
    if not lat:
        raise RuntimeError(f"no request succeeded; first error: {errors[:1]}")
    a = np.asarray(lat)
    return {
        "rps": len(a) / wall,
        "p50_ms": float(np.percentile(a, 50)) * 1e3,
        "p99_ms": float(np.percentile(a, 99)) * 1e3,
        "requests": int(len(a)),
        "errors": len(errors),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--layers", type=int, default=2, help="dense layers per stage")
    ap.add_argument("--seconds", type=float, default=8.0, help="measurement time per row")
    ap.add_argument("--concurrency", default="1,2,4,8", help="client threads, comma-separated")
    ap.add_argument("--worker-threads", type=int, default=1, help="TVM threads per worker process")
    args = ap.parse_args()
    cores = os.cpu_count() or 1

    from terrazzo.runtime import RunnerSpec, ServingPlan, StageSpec, TensorSpec, serve

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        paths = build_stage_libs(Path(d), args.hidden, args.batch, args.layers)
        build_s = time.perf_counter() - t0
        x = np.random.default_rng(1).standard_normal((args.batch, args.hidden)).astype(np.float32)
        base = {}
        for threads in sorted({1, cores}):
            r = _in_process(paths, x, args.seconds, threads)
            base[threads] = r
            rows.append(
                {
                    "mode": "in-process",
                    "threads": f"TVM {threads}",
                    "concurrency": 1,
                    **{k: v for k, v in r.items() if k != "y"},
                    "errors": 0,
                }
            )
        expected = base[1]["y"]
        shape = (args.batch, args.hidden)
        names = ["h", "h1", "h2", "out"]  # the values flowing between the stages
        plan = ServingPlan(
            "mlp3",
            (TensorSpec("h", "FP32", shape),),
            (TensorSpec("out", "FP32", shape),),
            tuple(
                StageSpec(
                    k,
                    "cpu",
                    (names[k],),
                    (names[k + 1],),
                    RunnerSpec(RELAX, {"path": p, "inputs": [names[k]], "outputs": [names[k + 1]]}),
                )
                for k, p in enumerate(paths)
            ),
        )
        saved = {k: os.environ.get(k) for k in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
        os.environ["TVM_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.worker_threads)
        t0 = time.perf_counter()
        try:
            server = serve(plan, default_timeout_s=60.0)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        ready_s = time.perf_counter() - t0
        with server:
            url = f"127.0.0.1:{server.port}"
            for n in (int(c) for c in args.concurrency.split(",")):
                r = _closed_loop(url, x, expected, n, args.seconds)
                rows.append(
                    {
                        "mode": "served (3 workers)",
                        "threads": f"TVM {args.worker_threads}/worker",
                        "concurrency": n,
                        **r,
                    }
                )
    best_base = max(base.values(), key=lambda r: r["rps"])["rps"]
    best_served = max((r for r in rows if r["mode"].startswith("served")), key=lambda r: r["rps"])
    for r in rows:
        r["vs_best_in_process"] = r["rps"] / best_base
    load_after = os.getloadavg()
    print_table(
        rows,
        [
            "mode",
            "threads",
            "concurrency",
            "requests",
            "rps",
            "p50_ms",
            "p99_ms",
            "errors",
            "vs_best_in_process",
        ],
        title=f"3-stage MLP ({3 * args.layers} x dense {args.hidden}, batch {args.batch}): served vs one process",
    )
    ratio = best_served["rps"] / best_base
    print(
        f"saturation throughput served / in-process = {ratio:.2f}x (target >= 0.9x) at concurrency "
        f"{best_served['concurrency']}; stage libraries built in {build_s:.1f} s; server ready in {ready_s:.1f} s; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after on {cores} cores"
    )
    path = write_result(
        "serving_pipeline",
        rows,
        {
            "saturation_ratio": ratio,
            "ready_s": ready_s,
            "build_s": build_s,
            "hidden": args.hidden,
            "batch": args.batch,
            "layers_per_stage": args.layers,
            "worker_threads": args.worker_threads,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
