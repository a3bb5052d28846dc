"""Question: how much latency does each gRPC hop of Terrazzo serving add, by tensor size?

An identity stage (``terrazzo.runtime.runners:identity``, Triton's identity model) is served by
one worker process behind the gateway on loopback. For 4 KiB, 1 MiB and 16 MiB FP32 tensors we
time, request by request:

- ``direct``: the stage called in-process (what the work itself costs);
- ``1 hop``: the gateway's own stage call straight to the worker (``terrazzo.Stage/Infer``, raw
  tensors behind a small header: ``terrazzo.runtime.wire``), i.e. the worker hop as served;
- ``1 hop pb``: the same call as a KServe v2 ``ModelInfer`` protobuf message (the format the
  hop used before ``runtime.wire``);
- ``2 hops``: the stock ``tritonclient.grpc`` client through the gateway (client -> gateway ->
  worker), i.e. how a user calls ``terrazzo serve``.

- ``in gw``: the same client call to a second server started with ``stage_in_gateway`` (the
  stage runs in the gateway process: one hop); each served model runs in a process of its own,
  as ``terrazzo serve`` does, so the gateway never shares the client's GIL; ``gw_added`` = in gw - bare - direct at p50 is
  what the gateway adds over a bare bytes call (issue 14 target: ≤ 0.1 ms);
- ``bare kserve``: the stock tritonclient against a minimal grpcio KServe servicer in its own
  process that echoes the input (protobuf both ways, nothing else); ``gw_added_vs_kserve`` =
  in gw - bare kserve - direct is what the gateway adds beyond the KServe protocol's own cost.

- ``bare``: a bare grpcio unary call to an echo server in its own process moving the same
  bytes both ways (raw ``bytes`` messages, no protobuf, no Terrazzo; a registered method, grpc's
  fast path, as the stage call is): the floor a hop is judged against (issue 14: a hop should cost ≤ 1.1× this).

``per hop`` is (2 hops - direct) / 2 at p50 and p99: the latency one loopback hop adds,
including (de)serialisation and copies of the tensor on both sides; ``1hop/bare`` and
``hop/bare`` compare the worker hop and the mean gateway-path hop with the bare call. Runs are
closed-loop, one request at a time, after warm-up; the calls of each size are interleaved
(bare, 1 hop, 2 hops in turn) so load drifts hit all alike.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/serving_overhead.py [--quick]``.
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

SIZES = (("4 KiB", 4 << 10, 400), ("1 MiB", 1 << 20, 100), ("16 MiB", 16 << 20, 25))


def _pct(samples_s: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples_s), q))


def _time(fn, n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


_ECHO_SERVER = """
import sys, grpc
from concurrent import futures
opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
srv = grpc.server(futures.ThreadPoolExecutor(4), options=opts)
echo = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)
srv.add_registered_method_handlers("bare.Echo", {"Echo": echo})
port = srv.add_insecure_port("127.0.0.1:0")
srv.start()
print(port, flush=True)
sys.stdin.read()
srv.stop(0)
"""


_KSERVE_ECHO_SERVER = """
import sys, grpc
from concurrent import futures
from terrazzo.runtime.protos import grpc_service_pb2 as pb, grpc_service_pb2_grpc as pb_grpc
class Echo(pb_grpc.GRPCInferenceServiceServicer):
    def ModelInfer(self, request, context):
        resp = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        for t in request.inputs:
            resp.outputs.add(name="y", datatype=t.datatype, shape=t.shape)
        resp.raw_output_contents.extend(request.raw_input_contents)
        return resp
opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
srv = grpc.server(futures.ThreadPoolExecutor(4), options=opts)
pb_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(), srv)
port = srv.add_insecure_port("127.0.0.1:0")
srv.start()
print(port, flush=True)
sys.stdin.read()
srv.stop(0)
"""


# The served model, in a process of its own as `terrazzo serve` runs it (sharing the client's
# process would make the gateway compete with the client for the GIL; the echo servers have
# processes of their own too). argv[1] == "1": the stage runs in the gateway process.
_GATEWAY_SERVER = """
import json, sys
from terrazzo.runtime import RunnerSpec, ServingPlan, StageSpec, TensorSpec, serve
names = {"names": ["x"], "outputs": ["y"]}
stage = StageSpec(0, "cpu", ("x",), ("y",), RunnerSpec("terrazzo.runtime.runners:identity", names))
plan = ServingPlan(
    "identity", (TensorSpec("x", "FP32", (-1,)),), (TensorSpec("y", "FP32", (-1,)),), (stage,)
)
with serve(plan, max_message_bytes=64 << 20, stage_in_gateway=sys.argv[1] == "1") as server:
    workers = server.workers()
    print(json.dumps({
        "port": server.port,
        "worker": workers[0]["address"] if workers else None,
        "token": server._worker_opts.token,
    }), flush=True)
    sys.stdin.read()
"""


def _bare_echo(code: str = _ECHO_SERVER, *args: str) -> tuple[object, str]:
    """A server (``code``) in a fresh process; returns (process, the first line it prints)."""
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline()


def _interleaved(fns: dict[str, object], n: int, warmup: int = 3) -> dict[str, list[float]]:
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
    ap.add_argument("--quick", action="store_true", help="a quarter of the requests per size")
    ap.add_argument(
        "--sizes",
        default=",".join(s[0].replace(" ", "") for s in SIZES),
        help="tensor sizes to time, e.g. 4KiB (default: all)",
    )
    ap.add_argument("--scale", type=float, default=1.0, help="requests per size times this")
    args = ap.parse_args()
    sizes = [s for s in SIZES if s[0].replace(" ", "") in args.sizes.split(",")]

    import json

    import grpc
    import tritonclient.grpc as tc

    from terrazzo.runtime.protos import grpc_service_pb2 as pb
    from terrazzo.runtime.protos import grpc_service_pb2_grpc as pb_grpc
    from terrazzo.runtime.runners import identity
    from terrazzo.runtime.wire import STAGE_METHOD, decode_arrays, encode_arrays
    from terrazzo.runtime.worker import TOKEN_HEADER, grpc_options

    direct_runner = identity(["x"], ["y"])
    echo_proc, echo_port = _bare_echo()
    echo_channel = grpc.insecure_channel(
        f"127.0.0.1:{int(echo_port)}", options=grpc_options(64 << 20)
    )
    bare_echo = echo_channel.unary_unary("/bare.Echo/Echo", _registered_method=True)
    kserve_proc, kserve_port = _bare_echo(_KSERVE_ECHO_SERVER)
    kserve_client = tc.InferenceServerClient(f"127.0.0.1:{int(kserve_port)}")
    rows = []
    t_start = time.perf_counter()
    gw_proc, gw_line = _bare_echo(_GATEWAY_SERVER, "0")
    in_gw_proc, in_gw_line = _bare_echo(_GATEWAY_SERVER, "1")
    server, in_gw = json.loads(gw_line), json.loads(in_gw_line)
    try:
        ready_s = time.perf_counter() - t_start
        client = tc.InferenceServerClient(f"127.0.0.1:{server['port']}")
        client_gw = tc.InferenceServerClient(f"127.0.0.1:{in_gw['port']}")
        channel = grpc.insecure_channel(str(server["worker"]), options=grpc_options(64 << 20))
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stage_call = channel.unary_unary(STAGE_METHOD, _registered_method=True)
        md = ((TOKEN_HEADER, server["token"]),)  # the benchmark is a trusted caller
        for label, nbytes, n in sizes:
            n = max(5, int(n * args.scale) // (4 if args.quick else 1))
            x = np.random.default_rng(0).standard_normal(nbytes // 4).astype(np.float32)

            def call_direct(x=x):
                # what a single process does with the request: run the stage and own the output bytes
                return direct_runner({"x": x})["y"].tobytes()

            def call_bare(x=x):
                return np.frombuffer(bare_echo(x.tobytes(), timeout=30), np.float32)

            def call_worker(x=x):
                _, out = decode_arrays(stage_call(encode_arrays({}, {"x": x}), metadata=md))
                return out["y"]

            def call_worker_pb(x=x):
                req = pb.ModelInferRequest(model_name="stage0")
                req.inputs.add(name="x", datatype="FP32", shape=[x.size])
                req.raw_input_contents.append(x.tobytes())
                resp = stub.ModelInfer(req, metadata=md, timeout=30)
                return np.frombuffer(resp.raw_output_contents[0], np.float32)

            inp = tc.InferInput("x", [x.size], "FP32")
            inp.set_data_from_numpy(x)

            def call_gateway(inp=inp):
                return client.infer("identity", [inp], client_timeout=30).as_numpy("y")

            def call_bare_kserve(inp=inp):
                return kserve_client.infer("echo", [inp], client_timeout=30).as_numpy("y")

            def call_in_gw(inp=inp):
                return client_gw.infer("identity", [inp], client_timeout=30).as_numpy("y")

            assert np.array_equal(call_worker(), x) and np.array_equal(call_gateway(), x)
            assert np.array_equal(call_in_gw(), x) and np.array_equal(call_bare_kserve(), x)
            assert np.array_equal(call_bare(), x)
            direct = _time(call_direct, n)
            assert np.array_equal(call_worker_pb(), x)
            t = _interleaved(
                {
                    "bare": call_bare,
                    "1hop": call_worker,
                    "1hop_pb": call_worker_pb,
                    "2hop": call_gateway,
                    "in_gw": call_in_gw,
                    "bare_kserve": call_bare_kserve,
                },
                n,
            )
            row = {"tensor": label, "requests": n}
            for name, s in (("direct", direct), *t.items()):
                row[f"{name}_p50_ms"] = _pct(s, 50) * 1e3
                row[f"{name}_p99_ms"] = _pct(s, 99) * 1e3
            row["1hop/bare"] = row["1hop_p50_ms"] / row["bare_p50_ms"]
            row["1hop_pb/bare"] = row["1hop_pb_p50_ms"] / row["bare_p50_ms"]
            row["per_hop_p50_ms"] = (row["2hop_p50_ms"] - row["direct_p50_ms"]) / 2
            row["hop/bare"] = row["per_hop_p50_ms"] / row["bare_p50_ms"]
            row["per_hop_p99_ms"] = (row["2hop_p99_ms"] - row["direct_p99_ms"]) / 2
            row["gw_added_p50_ms"] = row["in_gw_p50_ms"] - row["bare_p50_ms"] - row["direct_p50_ms"]
            row["gw_added_vs_kserve_p50_ms"] = (
                row["in_gw_p50_ms"] - row["bare_kserve_p50_ms"] - row["direct_p50_ms"]
            )
            row["per_hop_p50_GBps"] = nbytes * 2 / 1e9 / max(row["per_hop_p50_ms"] / 1e3, 1e-9)
            rows.append(row)
        channel.close()
        client.close()
        client_gw.close()
    finally:  # a served model stops when its stdin closes
        for proc in (gw_proc, in_gw_proc):
            proc.communicate("")  # type: ignore[attr-defined]
    echo_channel.close()
    echo_proc.communicate("")
    kserve_client.close()
    kserve_proc.communicate("")
    cols = [
        "tensor",
        "requests",
        "direct_p50_ms",
        "bare_p50_ms",
        "1hop_p50_ms",
        "1hop_p99_ms",
        "2hop_p50_ms",
        "2hop_p99_ms",
        "in_gw_p50_ms",
        "gw_added_p50_ms",
        "bare_kserve_p50_ms",
        "gw_added_vs_kserve_p50_ms",
        "per_hop_p50_ms",
        "per_hop_p99_ms",
        "1hop_pb_p50_ms",
        "1hop/bare",
        "1hop_pb/bare",
        "hop/bare",
        "per_hop_p50_GBps",
    ]
    print_table(rows, cols, title="Per-hop serving overhead on loopback (identity stage, 1 worker)")
    print(
        f"server ready in {ready_s:.1f} s; per_hop_p50_GBps counts the tensor both ways (request + answer)"
    )
    extra = {"ready_s": ready_s, "quick": args.quick, "scale": args.scale}
    path = write_result("serving_overhead", rows, extra)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
