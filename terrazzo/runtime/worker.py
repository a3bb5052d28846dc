"""Stage worker: one process (or Ray actor) per stage replica, serving its runner over loopback gRPC.

The gateway calls a worker with the KServe v2 ``ModelInfer`` RPC (model name ``stage<k>``,
tensors as raw bytes). A worker runs one request at a time on its device, skips requests whose
caller has gone (deadline or cancel) while they wait, and reports compute seconds back in the
response parameters. ``python -m terrazzo.runtime.worker`` reads its JSON config from stdin,
prints ``TERRAZZO_WORKER_READY <port> [<certificate, base64>]`` once it serves, and exits when
stdin closes or on SIGTERM.

Two config keys make a worker safe to lose: ``tmpdir`` (a directory the parent owns and removes
whatever way the worker ends: everything the worker writes through ``tempfile`` goes there,
including its extracted bundle) and ``tls`` (``{"gateway_cert": PEM}``: serve mTLS with a fresh
identity of its own, accept only the gateway's certificate; see ``internal_tls``).
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent import futures
from typing import Any

import grpc

from terrazzo.runtime.plan import RunnerSpec
from terrazzo.runtime.protos import grpc_service_pb2 as pb
from terrazzo.runtime.protos import grpc_service_pb2_grpc as pb_grpc
from terrazzo.runtime.protos import health_pb2, health_pb2_grpc
from terrazzo.runtime.runners import block_heavy_imports, build_runner
from terrazzo.runtime.tensors import TensorError, WireTensor, from_numpy, to_numpy

__all__ = [
    "READY_PREFIX",
    "TOKEN_HEADER",
    "WorkerServer",
    "block_heavy_imports",
    "grpc_options",
    "main",
]

READY_PREFIX = "TERRAZZO_WORKER_READY"
TOKEN_HEADER = "x-terrazzo-worker-token"
_POLL_S = 0.01


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
            try:
                result = self.runner({n: values[n] for n in self.inputs})
            except Exception as e:  # a runner failure is reported, never crashes the worker
                context.abort(
                    grpc.StatusCode.INTERNAL, f"{self.model_name} failed: {type(e).__name__}: {e}"
                )
            compute_s = time.perf_counter() - t0
        finally:
            self._lock.release()
        response = pb.ModelInferResponse(model_name=self.model_name, id=request.id)
        for name in self.outputs:
            if name not in result:
                context.abort(
                    grpc.StatusCode.INTERNAL, f"{self.model_name} did not produce {name!r}"
                )
            wire = from_numpy(result[name])
            response.outputs.add(name=name, datatype=wire.datatype, shape=wire.shape)
            response.raw_output_contents.append(wire.raw)
        response.parameters["compute_s"].double_param = compute_s
        response.parameters["queue_s"].double_param = queue_s
        return response


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
        self._server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=int(config.get("threads", 16)), thread_name_prefix="tz-worker"
            ),
            options=grpc_options(max_bytes),
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
