"""Question: is KServe v2 HTTP/REST infer within 1.5x of gRPC at p50 for a 4 KiB input (issue 15)?

An identity stage (``terrazzo.runtime.runners:identity``) is served by one worker process behind
a fresh ``serve()`` with both the gRPC and the HTTP port on loopback. With the stock clients we
time, request by request, closed loop, one at a time, interleaved (so load drifts hit all alike):

- ``grpc``: ``tritonclient.grpc`` ``infer`` (raw tensor bytes in protobuf);
- ``http_json``: ``tritonclient.http`` with the tensor and the output as JSON numbers;
- ``http_binary``: ``tritonclient.http`` with Triton's binary tensor extension both ways.

Every path goes gateway -> worker -> gateway; the difference is the front door. Outputs are
checked equal to the input before timing. Reports p50/p99 in ms and each HTTP p50 / gRPC p50.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/http_vs_grpc.py [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import print_table, write_result  # noqa: E402

SIZES = (("4 KiB", 4 << 10, 1000), ("64 KiB", 64 << 10, 300))
TARGET = 1.5


def _pct(samples_s: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples_s), q))


def _interleaved(fns: dict[str, object], n: int, warmup: int = 20) -> dict[str, list[float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()  # type: ignore[operator]
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(n):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()  # type: ignore[operator]
            out[k].append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a fifth of the requests per size")
    args = ap.parse_args()

    import tritonclient.grpc as tcg
    import tritonclient.http as tch

    from terrazzo.runtime import RunnerSpec, ServingPlan, StageSpec, TensorSpec, serve

    plan = ServingPlan(
        "identity",
        (TensorSpec("x", "FP32", (-1,)),),
        (TensorSpec("y", "FP32", (-1,)),),
        (
            StageSpec(
                0,
                "cpu",
                ("x",),
                ("y",),
                RunnerSpec("terrazzo.runtime.runners:identity", {"names": ["x"], "outputs": ["y"]}),
            ),
        ),
    )
    rows = []
    t_start = time.perf_counter()
    with serve(plan, http_port=0) as server:
        ready_s = time.perf_counter() - t_start
        g = tcg.InferenceServerClient(f"127.0.0.1:{server.port}")
        h = tch.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        for label, nbytes, n in SIZES:
            n = max(20, n // 5) if args.quick else n
            x = np.random.default_rng(0).standard_normal(nbytes // 4).astype(np.float32)
            ginp = tcg.InferInput("x", [x.size], "FP32")
            ginp.set_data_from_numpy(x)
            jinp = tch.InferInput("x", [x.size], "FP32")
            jinp.set_data_from_numpy(x, binary_data=False)
            jout = [tch.InferRequestedOutput("y", binary_data=False)]
            binp = tch.InferInput("x", [x.size], "FP32")
            binp.set_data_from_numpy(x, binary_data=True)
            bout = [tch.InferRequestedOutput("y", binary_data=True)]

            def call_grpc(ginp=ginp):
                return g.infer("identity", [ginp], client_timeout=30).as_numpy("y")

            def call_json(jinp=jinp, jout=jout):
                return h.infer("identity", [jinp], outputs=jout).as_numpy("y")

            def call_binary(binp=binp, bout=bout):
                return h.infer("identity", [binp], outputs=bout).as_numpy("y")

            for fn in (call_grpc, call_json, call_binary):
                assert fn().tobytes() == x.tobytes(), fn.__name__
            t = _interleaved(
                {"grpc": call_grpc, "http_json": call_json, "http_binary": call_binary}, n
            )
            row: dict[str, object] = {"tensor": label, "requests": n}
            for name, s in t.items():
                row[f"{name}_p50_ms"] = _pct(s, 50) * 1e3
                row[f"{name}_p99_ms"] = _pct(s, 99) * 1e3
            g50 = float(row["grpc_p50_ms"])  # type: ignore[arg-type]
            row["json/grpc_p50"] = float(row["http_json_p50_ms"]) / g50  # type: ignore[arg-type]
            row["binary/grpc_p50"] = float(row["http_binary_p50_ms"]) / g50  # type: ignore[arg-type]
            rows.append(row)
        g.close()
        h.close()
    cols = [
        "tensor",
        "requests",
        "grpc_p50_ms",
        "grpc_p99_ms",
        "http_json_p50_ms",
        "http_json_p99_ms",
        "http_binary_p50_ms",
        "http_binary_p99_ms",
        "json/grpc_p50",
        "binary/grpc_p50",
    ]
    print_table(rows, cols, title="KServe v2 infer: HTTP (JSON, binary) vs gRPC, stock clients")
    four = rows[0]
    ok = float(four["json/grpc_p50"]) <= TARGET  # type: ignore[arg-type]
    print(
        f"server ready in {ready_s:.1f} s; target HTTP JSON p50 <= {TARGET}x gRPC at 4 KiB: "
        f"{four['json/grpc_p50']:.2f}x ({'met' if ok else 'NOT met'})"
    )
    path = write_result(
        "http_vs_grpc", rows, {"ready_s": ready_s, "quick": args.quick, "target_met": ok}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
