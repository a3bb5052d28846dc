"""Stage worker: one process (or Ray actor) per stage replica, serving its runner over loopback gRPC.

The gateway calls a worker on ``terrazzo.Stage/Infer`` with tensors as raw bytes behind a small
header (``terrazzo.runtime.wire``: no protobuf copies); the KServe v2 ``ModelInfer`` RPC (model
name ``stage<k>``) answers the same computation for other callers. Both honour the request
parameters ``priority`` and ``timeout`` (µs in the batch queue) that the gateway forwards. A worker runs one request at a time on its device, skips requests whose
caller has gone (deadline or cancel) while they wait, and reports compute seconds back in the
response parameters. ``python -m terrazzo.runtime.worker`` reads its JSON config from stdin,
prints ``TERRAZZO_WORKER_READY <port> [<certificate, base64>]`` once it serves, and exits when
stdin closes or on SIGTERM.

Two config keys make a worker safe to lose: ``tmpdir`` (a directory the parent owns and removes
whatever way the worker ends: everything the worker writes through ``tempfile`` goes there,
including its extracted bundle) and ``tls`` (``{"gateway_cert": PEM}``: serve mTLS with a fresh
identity of its own, accept only the gateway's certificate; see ``internal_tls``).

``batching`` (``{"*": BatchingOptions JSON, "<stage index>": ...}``) turns on dynamic batching
(``terrazzo.runtime.batcher``) for this stage when its signature proves a batch dimension; then
requests are merged by a ``DynamicBatcher`` instead of running one at a time. Either way the
worker counts requests, rows and executions (``StageStats``) and answers them as JSON on the
``terrazzo.WorkerStats/Get`` RPC (``STATS_METHOD``), which ``/metrics`` reads at scrape time.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent import futures
from typing import Any

import grpc
import numpy as np

from terrazzo.errors import ServingError
from terrazzo.runtime.batcher import (
    BatchRejectedError,
    DynamicBatcher,
    StageStats,
    batch_dimension,
    options_for_stage,
)
from terrazzo.runtime.plan import RunnerSpec
from terrazzo.runtime.protos import grpc_service_pb2 as pb
from terrazzo.runtime.protos import grpc_service_pb2_grpc as pb_grpc
from terrazzo.runtime.protos import health_pb2, health_pb2_grpc
from terrazzo.runtime.runners import block_heavy_imports, build_runner
from terrazzo.runtime.tensors import TensorError, WireTensor, from_numpy, to_numpy
from terrazzo.runtime.wire import STAGE_SERVICE, decode_arrays, encode_arrays

__all__ = [
    "READY_PREFIX",
    "STATS_METHOD",
    "TOKEN_HEADER",
    "WorkerServer",
    "block_heavy_imports",
    "grpc_options",
    "main",
]

READY_PREFIX = "TERRAZZO_WORKER_READY"
TOKEN_HEADER = "x-terrazzo-worker-token"
_POLL_S = 0.01
# The stage's counters (``StageStats.snapshot`` as JSON bytes), a unary RPC beside KServe's:
# request b"" (or any bytes), reply the JSON. Token-checked like ModelInfer.
STATS_SERVICE = "terrazzo.WorkerStats"
STATS_METHOD = f"/{STATS_SERVICE}/Get"
log = logging.getLogger("terrazzo.runtime")


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Channel/server options shared by gateway and workers: explicit message limits, keepalive."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def _int_param(request, key: str) -> int:
    p = request.parameters.get(key)
    if p is not None and p.WhichOneof("parameter_choice") in ("int64_param", "uint64_param"):
        return int(getattr(p, p.WhichOneof("parameter_choice")))
    return 0


class _WorkerServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, config: dict[str, Any]):
        stage = config["stage"]
        self.model_name = f"stage{stage['index']}"
        self.inputs = tuple(stage["inputs"])
        self.outputs = tuple(stage["outputs"])
        spec = RunnerSpec.from_json(stage["runner"])
        self.delay_s = spec.execute_delay_s
        self.runner = build_runner(spec.factory, spec.kwargs)
        self.token = str(config.get("token") or "")
        self.max_queue = int(config.get("max_queue", 64))
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._waiting = 0
        self.stats = StageStats(self.model_name)
        self.batcher: DynamicBatcher | None = None
        batching = options_for_stage(config.get("batching"), int(stage["index"]))
        if batching.enabled:
            ins = tuple(getattr(self.runner, "inputs", ()) or ())
            outs = tuple(getattr(self.runner, "outputs", ()) or ())
            dim = (
                batch_dimension(ins, outs)
                if hasattr(self.runner, "inputs") and all(hasattr(t, "dims") for t in ins + outs)
                else "its runner declares no tensor signature (dims) to prove a batch dimension"
            )
            if isinstance(dim, str):
                log.warning("%s: dynamic batching stays off: %s", self.model_name, dim)
            else:
                buckets = tuple(getattr(self.runner, "bucket_sizes", ()) or ())  # cut at them
                self.batcher = DynamicBatcher(
                    self._run_batch,
                    self.inputs,
                    self.outputs,
                    batching,
                    dim,
                    self.model_name,
                    buckets,
                )
                self.stats = self.batcher.stats

    def _run_batch(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.delay_s > 0:  # the test knob: a fixed cost per execution, as a device has
            time.sleep(self.delay_s)
        return self.runner(values)

    def _infer_concurrent(self, context, values) -> tuple[dict[str, np.ndarray], float, float, int]:
        """A runner that synchronises itself (``llm_batch``): called at once, no device lock."""
        t0 = time.perf_counter()
        try:
            result = self.runner({n: values[n] for n in self.inputs})
        except ServingError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{self.model_name}: {e}")
        except Exception as e:
            self.stats.failed()
            context.abort(
                grpc.StatusCode.INTERNAL, f"{self.model_name} failed: {type(e).__name__}: {e}"
            )
        return result, time.perf_counter() - t0, 0.0, 0

    def Stats(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._check_token(context)
        return json.dumps(self.stats.snapshot()).encode()

    def _infer_batched(self, context, values, priority: int, timeout_us: int | None):
        assert self.batcher is not None
        with self._count_lock:
            if self._waiting >= self.max_queue:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self.model_name}: worker queue full"
                )
            self._waiting += 1
        try:
            got = self.batcher.submit(
                {n: values[n] for n in self.inputs},
                priority,
                queue_timeout_us=timeout_us,
                is_active=context.is_active,
            )
        except BatchRejectedError as e:
            context.abort(getattr(grpc.StatusCode, e.code), f"{self.model_name}: {e}")
        except Exception as e:  # a runner failure is reported, never crashes the worker
            context.abort(
                grpc.StatusCode.INTERNAL, f"{self.model_name} failed: {type(e).__name__}: {e}"
            )
        finally:
            with self._count_lock:
                self._waiting -= 1
        return got.outputs, got.compute_s, got.queue_s, got.batch_rows

    def _response(self, request, context, result, compute_s: float, queue_s: float):
        response = pb.ModelInferResponse(model_name=self.model_name, id=request.id)
        for name in self.outputs:
            if name not in result:
                context.abort(
                    grpc.StatusCode.INTERNAL, f"{self.model_name} did not produce {name!r}"
                )
            wire = from_numpy(result[name])
            response.outputs.add(name=name, datatype=wire.datatype, shape=wire.shape)
            response.raw_output_contents.append(wire.raw)
        # compute_s is this request's share of its execution (all shares of one execution add
        # up to its compute time), so the gateway's device-busy seconds stay true when batching
        response.parameters["compute_s"].double_param = compute_s
        response.parameters["queue_s"].double_param = queue_s
        return response

    def _check_token(self, context: grpc.ServicerContext) -> None:
        if not self.token:
            return
        got = dict(context.invocation_metadata()).get(TOKEN_HEADER, "")
        if not hmac.compare_digest(str(got).encode(), self.token.encode()):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "worker token missing or wrong")

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        # token-checked: a gateway admitting a worker it did not start (`serve --worker`)
        # learns here whether both hold the same internal token
        self._check_token(context)
        return pb.ModelReadyResponse(ready=request.name == self.model_name)

    def ModelInfer(self, request, context):
        self._check_token(context)
        if request.model_name != self.model_name:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"worker serves {self.model_name}, not {request.model_name!r}",
            )
        try:
            values = {}
            for i, t in enumerate(request.inputs):
                values[t.name] = to_numpy(
                    t.name, WireTensor(t.datatype, tuple(t.shape), request.raw_input_contents[i])
                )
        except (TensorError, IndexError, ValueError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{self.model_name}: {e}")
        missing = [n for n in self.inputs if n not in values]
        if missing:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"{self.model_name}: missing inputs {missing}"
            )
        priority, timeout_us = _int_param(request, "priority"), _int_param(request, "timeout")
        result, compute_s, queue_s, rows = self._compute(
            context, values, priority, timeout_us or None
        )
        response = self._response(request, context, result, compute_s, queue_s)
        if rows:
            response.parameters["batch_size"].int64_param = rows
        return response

    def StageInfer(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        """A stage call in the gateway's raw format (``terrazzo.runtime.wire``): no protobuf."""
        self._check_token(context)
        try:
            header, values = decode_arrays(data)
        except TensorError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{self.model_name}: {e}")
        missing = [n for n in self.inputs if n not in values]
        if missing:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"{self.model_name}: missing inputs {missing}"
            )
        timeout = header.get("timeout")
        result, compute_s, queue_s, rows = self._compute(
            context,
            values,
            int(header.get("priority", 0)),
            int(timeout) if timeout else None,
        )
        absent = [n for n in self.outputs if n not in result]
        if absent:
            context.abort(grpc.StatusCode.INTERNAL, f"{self.model_name} did not produce {absent}")
        reply = {"compute_s": compute_s, "queue_s": queue_s}
        if rows:
            reply["batch_size"] = rows
        return encode_arrays(reply, {n: result[n] for n in self.outputs})

    def _compute(
        self, context, values, priority: int, timeout_us: int | None
    ) -> tuple[dict[str, np.ndarray], float, float, int]:
        """Run the stage on ``values`` (batched or alone): (outputs, compute_s, queue_s, rows
        of the execution, 0 when unbatched)."""
        if self.batcher is not None:
            return self._infer_batched(context, values, priority, timeout_us)
        if getattr(self.runner, "concurrent", False):  # it synchronises itself (llm_batch)
            return self._infer_concurrent(context, values)
        if self.delay_s <= 0 and self._lock.acquire(blocking=False):
            return self._run_uncontended(context, values)
        with self._count_lock:
            if self._waiting >= self.max_queue:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self.model_name}: worker queue full"
                )
            self._waiting += 1
        t_enqueue = time.perf_counter()
        try:
            while not self._lock.acquire(timeout=0.05):
                if not context.is_active():
                    context.abort(grpc.StatusCode.CANCELLED, "caller went away while queued")
        finally:
            with self._count_lock:
                self._waiting -= 1
        try:
            queue_s = time.perf_counter() - t_enqueue
            if not context.is_active():
                context.abort(grpc.StatusCode.CANCELLED, "caller went away while queued")
            t0 = time.perf_counter()
            if self.delay_s > 0:
                end = t0 + self.delay_s
                while time.perf_counter() < end:
                    if not context.is_active():
                        context.abort(
                            grpc.StatusCode.CANCELLED, "caller went away during execution"
                        )
                    time.sleep(min(_POLL_S, max(0.0, end - time.perf_counter())))
            result = self._call_runner(context, values)
            compute_s = time.perf_counter() - t0
        finally:
            self._lock.release()
        self.stats.record([(1, queue_s)], 1, compute_s)
        return result, compute_s, queue_s, 0

    def _call_runner(self, context, values) -> dict[str, np.ndarray]:
        """The runner on ``values``; a failure is reported (INTERNAL), never crashes the worker."""
        try:
            return self.runner({n: values[n] for n in self.inputs})
        except Exception as e:
            self.stats.failed()
            context.abort(
                grpc.StatusCode.INTERNAL, f"{self.model_name} failed: {type(e).__name__}: {e}"
            )
            raise  # abort raises; this line is for type checkers

    def _run_uncontended(self, context, values) -> tuple[dict[str, np.ndarray], float, float, int]:
        """``_compute`` when the device lock was free (held on entry, released here): nothing
        waited, so no queue accounting, no liveness check and one counter update (issue 14:
        the lock and stats path was a fifth of the worker's time per 4 KiB call)."""
        t0 = time.perf_counter()
        try:
            result = self._call_runner(context, values)
        finally:
            self._lock.release()
        compute_s = time.perf_counter() - t0
        self.stats.record_one(0.0, compute_s)
        return result, compute_s, 0.0, 0


class _HealthServicer(health_pb2_grpc.HealthServicer):
    def Check(self, request, context):
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class WorkerServer:
    """A stage worker's gRPC server, usable in its own process or inside a Ray actor.

    Args:
        config: ``{"stage": {...}, "token": str, "max_message_bytes": int, "host": str}``, and
            ``"port"`` (default 0: any free port).
    """

    def __init__(self, config: dict[str, Any]):
        max_bytes = int(config.get("max_message_bytes", 256 << 20))
        tmpdir = config.get("tmpdir")
        if tmpdir:  # the parent owns and removes it, however this process ends
            tempfile.tempdir = str(tmpdir)
            os.environ["TMPDIR"] = str(tmpdir)
        self.servicer = _WorkerServicer(config)
        threads = int(config.get("threads", 16))
        # A request waiting for its batch, or (unbatched) for the device lock, holds a thread:
        # keep threads for the whole queue plus a few, or an overloaded worker cannot answer
        # its health probes and is condemned (found by the adapt scenario's load steps)
        threads = max(threads, int(config.get("max_queue", 64)) + 4)
        if getattr(self.servicer.runner, "concurrent", False):  # each polling stream holds one
            threads = max(threads, 80)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tz-worker"),
            options=grpc_options(max_bytes),
        )
        self._server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    STATS_SERVICE,
                    {"Get": grpc.unary_unary_rpc_method_handler(self.servicer.Stats)},
                ),
            )
        )
        # the gateway's raw stage call (runtime.wire), registered: grpc serves registered
        # methods on its fast path (a generic handler costs ~0.2 ms more per call)
        self._server.add_registered_method_handlers(
            STAGE_SERVICE,
            {"Infer": grpc.unary_unary_rpc_method_handler(self.servicer.StageInfer)},
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(_HealthServicer(), self._server)
        host = str(config.get("host", "127.0.0.1"))
        want = int(config.get("port", 0))
        self.cert_pem: bytes | None = None
        tls = config.get("tls")
        if tls:
            from terrazzo.runtime.internal_tls import (
                WORKER_NAME,
                make_identity,
                worker_server_credentials,
            )

            me = make_identity(WORKER_NAME)
            self.cert_pem = me.cert_pem
            creds = worker_server_credentials(me, str(tls["gateway_cert"]).encode())
            self.port = self._server.add_secure_port(f"{host}:{want}", creds)
        else:
            self.port = self._server.add_insecure_port(f"{host}:{want}")
        if self.port == 0:
            raise RuntimeError(f"worker could not bind port {want} on {host}")

    def start(self) -> int:
        """Start serving and return the bound port."""
        self._server.start()
        return self.port

    def stop(self, grace_s: float = 5.0) -> None:
        """Finish in-flight requests (up to ``grace_s``) and stop."""
        self._server.stop(grace_s).wait()
        if self.servicer.batcher is not None:
            self.servicer.batcher.close()


def main() -> int:
    config = json.loads(sys.stdin.readline())
    if config.get("lean_imports", True):
        block_heavy_imports(str(config["stage"]["runner"]["factory"]))
    server = WorkerServer(config)
    port = server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    # Ctrl-C reaches the whole process group; the parent drains the gateway first and then
    # closes our stdin, so the worker must not stop on its own while requests still need it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _watch_stdin() -> None:  # the parent closes stdin (or dies): stop
        sys.stdin.read()
        done.set()

    threading.Thread(target=_watch_stdin, daemon=True).start()
    cert = f" {base64.b64encode(server.cert_pem).decode()}" if server.cert_pem else ""
    print(f"{READY_PREFIX} {port}{cert}", flush=True)
    done.wait()
    server.stop(float(config.get("grace_s", 5.0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
