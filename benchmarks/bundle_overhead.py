"""What the in-process run path costs on top of the compiled function, next to onnxruntime.

The question: how much does ``open_bundle(p).run(feeds)`` — what users call, host NumPy in and
host NumPy out — add to the compiled function itself, and where does that leave it against
onnxruntime's ``InferenceSession.run`` on the same model?

Fairness: every (engine, model) sample runs in a fresh process with the same thread count
(``--threads``: OMP/TVM threads and onnxruntime's intra-op threads); engines are interleaved
round by round and each cell is the median over rounds of per-process medians; the load
average is recorded at every sample. Engines:

- ``raw``: the stage's compiled VM function with its inputs already TVM tensors (the floor);
- ``bundle``: ``open_bundle(p).run({name: array})`` in a loop, stages loaded on first use;
- ``ort``: ``InferenceSession.run(None, feeds)`` on the ONNX file the bundle was compiled from.

``--terrazzo PATH`` imports terrazzo from another checkout for the ``raw``/``bundle`` engines
(e.g. a worktree of an older commit), to measure before/after with the same script.

    python benchmarks/bundle_overhead.py [--rounds 5] [--calls 3000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_table, write_result  # noqa: E402

_CHILD = r"""
import json, os, sys, time
import numpy as np
engine, onnx_path, bundle_path, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
threads = int(os.environ["OMP_NUM_THREADS"])
feeds = {k: np.load(v) for k, v in json.loads(os.environ["TZ_FEEDS"]).items()}
if engine == "ort":
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    call = lambda: sess.run(None, feeds)
else:
    from terrazzo.bundle import open_bundle
    b = open_bundle(bundle_path)
    if engine == "bundle":
        call = lambda: b.run(feeds)
    else:
        import tvm
        (r,) = b.runners() if hasattr(b, "runners") else b.load_stages()
        args = [tvm.runtime.tensor(feeds[s.name], r._dev) for s in r.inputs]
        fn, weights = r._fn, r._weights
        call = lambda: fn(*args, *weights)
for _ in range(max(200, calls // 10)):
    call()
ts = []
for _ in range(calls):
    t0 = time.perf_counter(); call(); ts.append(time.perf_counter() - t0)
ts.sort()
print(json.dumps({"median_us": ts[len(ts) // 2] * 1e6, "load": os.getloadavg()[0]}))
"""


def _models(work: Path) -> dict[str, Path]:
    """The ONNX models: an elementwise pair (pure overhead) and the zoo MLP (a real GEMM chain)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from terrazzo.zoo import export_onnx

    nodes = [helper.make_node("Add", ["x", "b"], ["y"]), helper.make_node("Relu", ["y"], ["out"])]
    g = helper.make_graph(
        nodes, "add_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16])],
        [numpy_helper.from_array(np.ones((1, 16), "float32"), "b")],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(work / "add_relu.onnx"))
    return {"add_relu 1x16": work / "add_relu.onnx", "zoo mlp 8x256": export_onnx("mlp", work)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--terrazzo", default=None, help="checkout to import terrazzo from")
    ap.add_argument("--label", default="", help="suffix of the result file name (e.g. before)")
    args = ap.parse_args()

    import numpy as np
    import onnxruntime as ort

    from terrazzo.pipeline import compile_model
    from terrazzo.placement import SLA, Fleet

    work = Path(tempfile.mkdtemp(prefix="tz-bench-"))
    fleet = Fleet.from_dict({"devices": {"cpu": {"count": 1}}})
    cases = []
    for name, onnx_path in _models(work).items():
        stem = onnx_path.stem
        bundle = compile_model(onnx_path, fleet, SLA(latency_s=0.05), out_path=work / f"{stem}.tzb")
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        feeds = {}
        for i in sess.get_inputs():
            shape = [int(d) for d in i.shape]
            arr = np.random.default_rng(0).standard_normal(shape).astype("float32")
            np.save(work / f"{stem}.{i.name}.npy", arr)
            feeds[i.name] = str(work / f"{stem}.{i.name}.npy")
        cases.append((name, onnx_path, bundle.path, feeds))

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TVM_NUM_THREADS=str(args.threads))
    if args.terrazzo:
        env["PYTHONPATH"] = os.pathsep.join([args.terrazzo, env.get("PYTHONPATH", "")])
    engines = ("raw", "bundle", "ort")
    samples: dict[tuple[str, str], list[float]] = {}
    loads: list[float] = []
    for _ in range(args.rounds):
        for name, onnx_path, bundle, feeds in cases:
            for engine in engines:
                out = subprocess.run(
                    [sys.executable, "-c", _CHILD, engine, str(onnx_path), str(bundle),
                     str(args.calls)],
                    env=dict(env, TZ_FEEDS=json.dumps(feeds)), capture_output=True, text=True,
                    check=True, cwd=work,
                )  # fmt: skip
                res = json.loads(out.stdout.strip().splitlines()[-1])
                samples.setdefault((name, engine), []).append(res["median_us"])
                loads.append(res["load"])
    rows = []
    for name, *_ in cases:
        med = {e: statistics.median(samples[(name, e)]) for e in engines}
        rows.append(
            {
                "model": name,
                "threads": args.threads,
                "raw_us": med["raw"],
                "bundle_us": med["bundle"],
                "ort_us": med["ort"],
                "bundle_overhead_us": med["bundle"] - med["raw"],
                "bundle_vs_ort": med["bundle"] / med["ort"],
            }
        )
    mi = machine_info()
    title = (
        f"open_bundle(p).run vs the compiled function vs onnxruntime — {mi['cpu']}, "
        f"{args.threads} thread(s), load {min(loads):.2f}–{max(loads):.2f}, "
        f"medians of {args.rounds} interleaved fresh processes × {args.calls} calls"
    )
    print_table(rows, list(rows[0]), title=title)
    path = write_result(
        "bundle_overhead" + (f"_{args.label}" if args.label else ""),
        rows,
        {"rounds": args.rounds, "calls": args.calls, "load_min": min(loads),
         "load_max": max(loads), "terrazzo_path": args.terrazzo},
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
