"""Gateway: the KServe v2 gRPC front door that validates requests and routes them through the stage DAG.

Each ModelInfer is admitted (or refused with RESOURCE_EXHAUSTED), validated (INVALID_ARGUMENT
naming the tensor), given a deadline (client deadline, ``timeout`` parameter and the server
default, whichever is first), then dispatched stage by stage to the least busy healthy replica;
a stage starts as soon as every value it reads exists, so independent stages run concurrently.
Client cancellation cancels the worker calls in flight.

Admission bounds both the requests in flight (``max_queue``) and their bytes
(``max_inflight_bytes``, the serialized size of the requests being served); either answers
RESOURCE_EXHAUSTED at once, before any worker is involved. Each stage call has its own
server-side deadline (``ReplicaPool.stage_timeout_s``, derived from the SLA): a call that misses
it, a worker that answers UNAVAILABLE, or a call cancelled because its replica was condemned is
retried once on another healthy replica (stage calls are pure functions of their inputs) while
the request's own deadline allows; otherwise the request fails with UNAVAILABLE naming the
worker, well before the request deadline.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hmac
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from terrazzo import __version__
from terrazzo.runtime.metrics import RuntimeMetrics, log_request
from terrazzo.runtime.plan import ServingPlan
from terrazzo.runtime.pool import Replica, ReplicaPool
from terrazzo.runtime.protos import grpc_service_pb2 as pb
from terrazzo.runtime.protos import grpc_service_pb2_grpc as pb_grpc
from terrazzo.runtime.protos import health_pb2, health_pb2_grpc
from terrazzo.runtime.tensors import TensorError, WireTensor, decode_inputs
from terrazzo.runtime.worker import TOKEN_HEADER

_PASS_THROUGH = {
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNAVAILABLE,
}


class InferError(Exception):
    """A request failed with a gRPC status code and a message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


class _Retryable(Exception):
    """A stage call failed in a way another replica may not (worker gone, hung or condemned)."""

    def __init__(self, message: str, miss: bool = False):
        super().__init__(message)
        self.miss = miss


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    """Limits of the gateway: default deadline, admission bounds, worker token, retries."""

    default_timeout_s: float = 30.0
    max_queue: int = 256
    max_inflight_bytes: int = 1 << 30
    worker_token: str = ""
    stage_retries: int = 1


_TRIM_AFTER_BYTES = 16 << 20


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS (glibc keeps them after large requests otherwise)."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name) if name else False
    if isinstance(_libc, ctypes.CDLL) and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


_libc: ctypes.CDLL | bool | None = None


class Gateway(pb_grpc.GRPCInferenceServiceServicer):
    """KServe v2 servicer over one served model."""

    def __init__(
        self,
        plan: ServingPlan,
        pools: list[ReplicaPool],
        metrics: RuntimeMetrics,
        opts: GatewayOptions,
    ):
        self.plan = plan
        self.pools = pools
        self.metrics = metrics
        self.opts = opts
        self.input_specs = {t.name: t for t in plan.inputs}
        self.output_specs = {t.name: t for t in plan.outputs}
        self.draining = threading.Event()
        self._inflight = 0
        self._inflight_bytes = 0
        self._big_since_trim = 0
        self._inflight_lock = threading.Lock()
        self._idle = threading.Condition(self._inflight_lock)
        self._worker_md = ((TOKEN_HEADER, opts.worker_token),) if opts.worker_token else ()

    # -- readiness ---------------------------------------------------------------------
    def model_ready(self) -> bool:
        """True when every stage has at least one healthy replica."""
        return all(p.healthy_count() > 0 for p in self.pools)

    def server_ready(self) -> bool:
        return not self.draining.is_set() and self.model_ready()

    def inflight(self) -> int:
        with self._inflight_lock:
            return self._inflight

    def inflight_bytes(self) -> int:
        with self._inflight_lock:
            return self._inflight_bytes

    def maybe_trim(self) -> bool:
        """After large requests, once none is in flight, return freed heap to the OS (the
        supervisor calls this periodically, after gRPC has dropped the request objects)."""
        with self._inflight_lock:
            if self._inflight or not self._big_since_trim:
                return False
            self._big_since_trim = 0
        _malloc_trim()
        return True

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no request is in flight (or the timeout passes); True when idle."""
        end = time.monotonic() + timeout_s
        with self._idle:
            while self._inflight > 0:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _known(self, name: str, version: str) -> bool:
        return name == self.plan.model_name and version in ("", self.plan.version)

    # -- metadata RPCs -----------------------------------------------------------------
    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.server_ready())

    def ModelReady(self, request, context):
        ok = self._known(request.name, request.version)
        return pb.ModelReadyResponse(ready=ok and self.server_ready())

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="terrazzo", version=__version__, extensions=[])

    def ModelMetadata(self, request, context):
        if not self._known(request.name, request.version):
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model {request.name!r} version {request.version!r}",
            )
        resp = pb.ModelMetadataResponse(
            name=self.plan.model_name, versions=[self.plan.version], platform=self.plan.platform
        )
        for t in self.plan.inputs:
            resp.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        for t in self.plan.outputs:
            resp.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        return resp

    # -- inference ---------------------------------------------------------------------
    def ModelInfer(self, request, context):
        try:
            return self._infer(request, context)
        except InferError as e:
            context.abort(e.code, str(e))

    def ModelStreamInfer(self, request_iterator, context) -> Iterator[pb.ModelStreamInferResponse]:  # type: ignore[name-defined]
        for request in request_iterator:
            try:
                yield pb.ModelStreamInferResponse(infer_response=self._infer(request, context))  # type: ignore[attr-defined]
            except InferError as e:
                yield pb.ModelStreamInferResponse(error_message=f"{e.code.name}: {e}")  # type: ignore[attr-defined]

    def _infer(self, request, context) -> pb.ModelInferResponse:  # type: ignore[name-defined]
        t0 = time.perf_counter()
        request_id = request.id or uuid.uuid4().hex
        model = request.model_name
        status = "OK"
        workers: list[str] = []
        if not self._known(model, request.model_version):
            self._count(
                model if model == self.plan.model_name else "_unknown",
                "NOT_FOUND",
                t0,
                request_id,
                workers,
            )
            raise InferError(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model {model!r} version {request.model_version!r}",
            )
        if self.draining.is_set():
            self._count(model, "UNAVAILABLE", t0, request_id, workers)
            raise InferError(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        size = request.ByteSize()
        refusal = ""
        with self._inflight_lock:
            if self._inflight >= self.opts.max_queue:
                refusal = f"queue full ({self.opts.max_queue} requests in flight)"
            elif size > self.opts.max_inflight_bytes:
                refusal = (
                    f"request of {size} bytes exceeds the {self.opts.max_inflight_bytes} bytes "
                    "allowed in flight"
                )
            elif self._inflight_bytes + size > self.opts.max_inflight_bytes:
                refusal = (
                    f"{size} request bytes would exceed the {self.opts.max_inflight_bytes} bytes "
                    f"allowed in flight ({self._inflight_bytes} in use); retry later"
                )
            else:
                self._inflight += 1
                self._inflight_bytes += size
        if refusal:
            self._count(model, "RESOURCE_EXHAUSTED", t0, request_id, workers)
            raise InferError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"model {model!r}: {refusal}")
        self.metrics.queue_depth.labels(model=model).inc()
        try:
            response = self._run(request, context, request_id, workers)
            return response
        except InferError as e:
            status = e.code.name
            raise
        except Exception as e:  # a bug: say so as INTERNAL rather than hang the client
            status = "INTERNAL"
            raise InferError(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}") from e
        finally:
            self.metrics.queue_depth.labels(model=model).dec()
            with self._idle:
                self._inflight -= 1
                self._inflight_bytes -= size
                self._big_since_trim += size if size >= _TRIM_AFTER_BYTES else 0
                self._idle.notify_all()
            self._count(model, status, t0, request_id, workers)

    def _count(
        self, model: str, status: str, t0: float, request_id: str, workers: list[str]
    ) -> None:
        latency_s = time.perf_counter() - t0
        self.metrics.requests.labels(model=model, status=status).inc()
        if status == "OK":
            self.metrics.request_latency.labels(model=model).observe(latency_s)
        log_request(
            id=request_id,
            model=model,
            status=status,
            latency_s=round(latency_s, 6),
            workers=workers,
        )

    def _deadline(self, request, context) -> float:
        budget_s = self.opts.default_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            budget_s = min(budget_s, remaining)
        p = request.parameters.get("timeout")
        if p is not None and p.WhichOneof("parameter_choice") in ("int64_param", "uint64_param"):
            us = getattr(p, p.WhichOneof("parameter_choice"))
            if us > 0:
                budget_s = min(budget_s, us / 1e6)
        return time.monotonic() + budget_s

    def _requested_outputs(self, request) -> list[str]:
        names = [o.name for o in request.outputs]
        for n in names:
            if n not in self.output_specs:
                raise InferError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"model {self.plan.model_name!r} has no output named {n!r}",
                )
        if len(set(names)) != len(names):
            raise InferError(grpc.StatusCode.INVALID_ARGUMENT, "an output is requested twice")
        return names or [t.name for t in self.plan.outputs]

    def _run(self, request, context, request_id: str, workers: list[str]) -> pb.ModelInferResponse:  # type: ignore[name-defined]
        deadline = self._deadline(request, context)
        try:
            env: dict[str, WireTensor] = decode_inputs(
                request, self.input_specs, self.plan.model_name
            )
        except TensorError as e:
            raise InferError(e.code, str(e)) from e
        wanted = self._requested_outputs(request)
        self._execute(env, deadline, context, request_id, workers)
        resp = pb.ModelInferResponse(
            model_name=self.plan.model_name, model_version=self.plan.version, id=request.id
        )  # type: ignore[attr-defined]
        for name in wanted:
            t = env[name]
            resp.outputs.add(name=name, datatype=t.datatype, shape=t.shape)
            resp.raw_output_contents.append(t.raw)
        return resp

    def _execute(
        self,
        env: dict[str, WireTensor],
        deadline: float,
        context,
        request_id: str,
        workers: list[str],
    ) -> None:
        pending = list(self.pools)
        running: dict[int, tuple[grpc.Future, Replica, ReplicaPool, float, int]] = {}
        done: queue.Queue[int | None] = queue.Queue()
        context.add_callback(lambda: done.put(None))  # fires when the client RPC ends
        try:
            while pending or running:
                for pool in [p for p in pending if all(v in env for v in p.stage.inputs)]:
                    pending.remove(pool)
                    self._launch(pool, env, deadline, request_id, running, done, workers)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise InferError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"deadline exceeded with stages {sorted(running)} unfinished",
                    )
                try:
                    idx = done.get(timeout=remaining)
                except queue.Empty:
                    continue
                if idx is None:
                    if not context.is_active():
                        raise InferError(
                            grpc.StatusCode.CANCELLED, "request cancelled by the client"
                        )
                    continue
                if idx not in running or not running[idx][0].done():
                    continue  # a stale wake-up from a call already replaced by its retry
                fut, rep, pool, t_start, tries = running.pop(idx)
                try:
                    self._collect(fut, rep, pool, t_start, env, deadline)
                except _Retryable as e:
                    if tries >= self.opts.stage_retries or time.monotonic() >= deadline:
                        raise InferError(grpc.StatusCode.UNAVAILABLE, str(e)) from None
                    self._launch(
                        pool, env, deadline, request_id, running, done, workers, rep, tries + 1, e
                    )
        finally:
            for fut, rep, pool, _, _ in running.values():
                fut.cancel()
                pool.release(rep, ok=False, call=fut)

    def _launch(
        self,
        pool: ReplicaPool,
        env: dict[str, WireTensor],
        deadline: float,
        request_id: str,
        running: dict,
        done: queue.Queue,
        workers: list[str],
        exclude: Replica | None = None,
        tries: int = 0,
        cause: Exception | None = None,
    ) -> None:
        stage = pool.stage
        rep = pool.acquire(exclude)
        if rep is None:
            if cause is not None:  # no other replica to retry on: the first failure stands
                raise InferError(grpc.StatusCode.UNAVAILABLE, str(cause))
            raise InferError(
                grpc.StatusCode.UNAVAILABLE,
                f"no healthy worker for stage {stage.index} (device {stage.device})",
            )
        workers.append(rep.name)
        req = pb.ModelInferRequest(model_name=f"stage{stage.index}", id=request_id)  # type: ignore[attr-defined]
        for name in stage.inputs:
            t = env[name]
            req.inputs.add(name=name, datatype=t.datatype, shape=t.shape)
            req.raw_input_contents.append(t.raw)
        try:
            stub = rep.stub
            if stub is None:  # detached after acquire (a concurrent restart)
                raise InferError(grpc.StatusCode.UNAVAILABLE, f"worker {rep.name} was detached")
            timeout = min(deadline - time.monotonic(), pool.stage_timeout_s)
            fut = stub.ModelInfer.future(req, timeout=max(timeout, 1e-3), metadata=self._worker_md)
        except Exception:
            pool.release(rep, ok=False)
            raise
        if not pool.track(rep, fut):  # condemned between acquire and now
            fut.cancel()
        running[stage.index] = (fut, rep, pool, time.perf_counter(), tries)
        fut.add_done_callback(lambda _f, i=stage.index: done.put(i))

    def _collect(
        self,
        fut: grpc.Future,
        rep: Replica,
        pool: ReplicaPool,
        t_start: float,
        env: dict[str, WireTensor],
        deadline: float,
    ) -> None:
        stage = pool.stage
        where = f"stage {stage.index} on worker {rep.name} ({stage.device})"
        try:
            resp = fut.result(timeout=0)
        except grpc.RpcError as e:
            pool.release(rep, ok=False, call=fut)
            code = e.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                pool.set_healthy(rep, False)  # the supervisor re-probes or restarts it
                raise _Retryable(f"{where}: {e.details()}") from None
            took = time.perf_counter() - t_start
            if (
                code == grpc.StatusCode.DEADLINE_EXCEEDED
                and took >= 0.9 * pool.stage_timeout_s
                and time.monotonic() < deadline - 5e-3
            ):
                # the stage deadline, not the request's, expired: the worker is hung or slow
                pool.missed_deadline(rep)
                raise _Retryable(
                    f"{where} did not answer within the stage deadline of "
                    f"{pool.stage_timeout_s:g} s",
                    miss=True,
                ) from None
            msg = f"{where}: {e.details()}"
            raise InferError(
                code if code in _PASS_THROUGH else grpc.StatusCode.INTERNAL, msg
            ) from None
        except grpc.FutureCancelledError:
            pool.release(rep, ok=False, call=fut)
            if rep.condemned is not None:
                raise _Retryable(f"{where} was taken out of service: {rep.condemned}") from None
            raise InferError(
                grpc.StatusCode.CANCELLED, f"stage {stage.index} call cancelled"
            ) from None
        pool.release(rep, ok=True, call=fut)
        self.metrics.stage_latency.labels(
            model=self.plan.model_name, stage=str(stage.index), device=stage.device
        ).observe(time.perf_counter() - t_start)
        compute = resp.parameters.get("compute_s")
        if compute is not None:
            self.metrics.device_busy.labels(device=stage.device).inc(max(0.0, compute.double_param))
        for i, t in enumerate(resp.outputs):
            env[t.name] = WireTensor(t.datatype, tuple(t.shape), resp.raw_output_contents[i])
        missing = [v for v in stage.outputs if v not in env]
        if missing:
            raise InferError(
                grpc.StatusCode.INTERNAL, f"stage {stage.index} did not return {missing}"
            )


class HealthService(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 on the gateway port: '' and the KServe service name follow readiness."""

    _NAMES = ("", "inference.GRPCInferenceService")

    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def _status(self) -> int:
        ok = self.gateway.server_ready()
        return (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )  # type: ignore[attr-defined]

    def Check(self, request, context):
        if request.service not in self._NAMES:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=self._status())

    def Watch(self, request, context):
        if request.service not in self._NAMES:
            yield health_pb2.HealthCheckResponse(
                status=health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            )
            return
        last = None
        while context.is_active():
            status = self._status()
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            time.sleep(0.1)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every RPC except grpc.health.v1 probes."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

        def deny_stream(request_iterator, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.stream_stream_rpc_method_handler(deny_stream)

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith("/grpc.health.v1.Health/"):
            return continuation(handler_call_details)
        got = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                got = value if isinstance(value, str) else value.decode(errors="replace")
        if hmac.compare_digest(got.encode(), self._expected):
            return continuation(handler_call_details)
        return self._deny_stream if method.endswith("/ModelStreamInfer") else self._deny_unary
