"""Gateway: the KServe v2 gRPC front door that validates requests and routes them through the stage DAG.

Each ModelInfer is admitted (or refused with RESOURCE_EXHAUSTED), validated (INVALID_ARGUMENT
naming the tensor), given a deadline (client deadline, ``timeout`` parameter and the server
default, whichever is first), then dispatched stage by stage to the least busy healthy replica;
a stage starts as soon as every value it reads exists, so independent stages run concurrently.
Client cancellation cancels the worker calls in flight.

Admission bounds both the requests in flight (``max_queue``) and their bytes
(``max_inflight_bytes``, the tensor bytes of the requests being served, ``request_bytes``); either answers
RESOURCE_EXHAUSTED at once, before any worker is involved. Each stage call has its own
server-side deadline (``ReplicaPool.stage_timeout_s``, derived from the SLA): a call that misses
it, a worker that answers UNAVAILABLE, or a call cancelled because its replica was condemned is
retried once on another healthy replica (stage calls are pure functions of their inputs) while
the request's own deadline allows; otherwise the request fails with UNAVAILABLE naming the
worker, well before the request deadline.

The protocol is Triton's own ``GRPCInferenceService`` (grpc_service.proto and
model_config.proto vendored verbatim from triton-inference-server/common and generated with
grpcio-tools into ``terrazzo.runtime.protos``). They are vendored rather than imported from
``tritonclient.grpc`` because the serving image must carry neither the compiler nor the client
(tritonclient is a dev extra), and because our stubs live in a private descriptor pool so
server and stock client load side by side. Besides inference and metadata, a Gateway answers
ModelConfig, ModelStatistics (Triton's definitions: ``queue`` from arrival to the first stage
call, ``compute_input`` decoding inputs, ``compute_infer`` the stage DAG, ``compute_output``
building the response; ``success`` the whole request; no batching here, so inference_count ==
execution_count), RepositoryIndex (its one model), system shared memory (inputs are read from
and outputs written to the client's registered region: same-host clients skip the copy on the
wire), trace/log settings (accepted and echoed). CUDA shared memory answers UNIMPLEMENTED.
Model load/unload belong to ``terrazzo.runtime.repository``; a lone Gateway refuses them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hmac
import itertools
import mmap
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from terrazzo import __version__
from terrazzo.runtime import kserve_wire, wire
from terrazzo.runtime.batch_config import forwarded_parameters
from terrazzo.runtime.metrics import RuntimeMetrics, access_log_enabled, log_request
from terrazzo.runtime.plan import ServingPlan
from terrazzo.runtime.pool import Replica, ReplicaPool
from terrazzo.runtime.protos import grpc_service_pb2 as pb
from terrazzo.runtime.protos import grpc_service_pb2_grpc as pb_grpc
from terrazzo.runtime.protos import health_pb2, health_pb2_grpc
from terrazzo.runtime.protos import model_config_pb2 as mc
from terrazzo.runtime.tensors import TensorError, WireTensor, decode_inputs, numpy_dtype
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
# request ids for requests without one: a per-process random prefix and a counter
_ID_PREFIX = uuid.uuid4().hex[:12]
_IDS = itertools.count(1)


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS (glibc keeps them after large requests otherwise)."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name) if name else False
    if isinstance(_libc, ctypes.CDLL) and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


_libc: ctypes.CDLL | bool | None = None


class SharedMemoryRegistry:
    """System shared-memory regions registered by same-host clients (Triton's shm extension).

    A region is the POSIX shared-memory object ``key`` (``/dev/shm/<key>``), mapped from
    ``offset`` for ``byte_size`` bytes; inputs are read from it and outputs written to it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._regions: dict[str, tuple[str, int, int, mmap.mmap]] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise InferError(grpc.StatusCode.INVALID_ARGUMENT, "shared memory region needs a name")
        if offset < 0 or byte_size <= 0:
            raise InferError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"shared memory region {name!r}: offset {offset} / byte_size {byte_size} invalid",
            )
        path = "/dev/shm/" + key.lstrip("/")
        with self._lock:
            if name in self._regions:
                raise InferError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"shared memory region {name!r} is already registered",
                )
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError as e:
                raise InferError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"cannot open shared memory key {key!r}: {e.strerror}",
                ) from None
            try:
                size = os.fstat(fd).st_size
                if offset + byte_size > size:
                    raise InferError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"shared memory region {name!r}: offset {offset} + byte_size "
                        f"{byte_size} exceeds the {size} bytes of key {key!r}",
                    )
                mem = mmap.mmap(fd, offset + byte_size)
            finally:
                os.close(fd)
            self._regions[name] = (key, offset, byte_size, mem)

    def status(self, name: str = "") -> dict[str, tuple[str, int, int]]:
        with self._lock:
            if name and name not in self._regions:
                raise InferError(
                    grpc.StatusCode.NOT_FOUND, f"no shared memory region named {name!r}"
                )
            return {n: r[:3] for n, r in self._regions.items() if not name or n == name}

    def unregister(self, name: str = "") -> None:
        with self._lock:
            names = [name] if name else list(self._regions)
            for n in names:
                region = self._regions.pop(n, None)
                if region is not None:
                    region[3].close()

    def _region(self, name: str, offset: int, size: int) -> tuple[mmap.mmap, int]:
        with self._lock:
            region = self._regions.get(name)
        if region is None:
            raise InferError(
                grpc.StatusCode.INVALID_ARGUMENT, f"no shared memory region named {name!r}"
            )
        _, base, byte_size, mem = region
        if offset < 0 or offset + size > byte_size:
            raise InferError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"shared memory region {name!r}: {size} bytes at offset {offset} exceed its "
                f"{byte_size} bytes",
            )
        return mem, base + offset

    def read(self, name: str, offset: int, size: int) -> bytes:
        mem, at = self._region(name, offset, size)
        return mem[at : at + size]

    def write(self, name: str, offset: int, data: bytes) -> None:
        mem, at = self._region(name, offset, len(data))
        mem[at : at + len(data)] = data

    def close(self) -> None:
        self.unregister()


@dataclass(slots=True)
class ServerSettings:
    """Trace and log settings: accepted and echoed (Terrazzo logs requests as JSON lines)."""

    trace: dict[str, list[str]]
    log: dict[str, object]

    @staticmethod
    def defaults() -> ServerSettings:
        return ServerSettings(
            trace={
                "trace_level": ["OFF"],
                "trace_rate": ["1000"],
                "trace_count": ["-1"],
                "log_frequency": ["0"],
                "trace_file": [""],
                "trace_mode": ["triton"],
            },
            log={
                "log_file": "",
                "log_info": True,
                "log_warning": True,
                "log_error": True,
                "log_verbose_level": 0,
                "log_format": "default",
            },
        )


class ModelStats:
    """Triton's per-model statistics (durations in ns).

    Issue 14: each thread adds to a list of its own (no lock, no dict per request); ``fill``
    sums the threads' lists when the statistics are asked for.
    """

    _KINDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
    # a thread's list: [count, ns] per kind, then inference_count, execution_count, last ms
    _AT = {k: 2 * i for i, k in enumerate(_KINDS)}
    _INFER, _EXEC, _LAST = 2 * len(_KINDS), 2 * len(_KINDS) + 1, 2 * len(_KINDS) + 2

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards the list of threads' lists only
        self._local = threading.local()
        self._threads: list[list[int]] = []

    def _mine(self) -> list[int]:
        try:
            return self._local.acc  # type: ignore[no-any-return]
        except AttributeError:
            acc = [0] * (self._LAST + 1)
            self._local.acc = acc
            with self.lock:
                self._threads.append(acc)
            return acc

    def record(self, ok: bool, total_s: float, phases: dict[str, float]) -> None:
        a = self._mine()
        a[self._LAST] = int(time.time() * 1000)
        i = 0 if ok else 2  # success, fail
        a[i] += 1
        a[i + 1] += int(total_s * 1e9)
        if not ok:
            return
        a[self._INFER] += 1
        a[self._EXEC] += 1
        at = self._AT
        for k, v in phases.items():
            i = at[k]
            a[i] += 1
            a[i + 1] += int(v * 1e9)

    def totals(self) -> list[int]:
        """The threads' lists summed (last inference: the latest)."""
        with self.lock:
            rows = [list(a) for a in self._threads]
        out = [0] * (self._LAST + 1)
        for a in rows:
            for i in range(self._LAST):
                out[i] += a[i]
            out[self._LAST] = max(out[self._LAST], a[self._LAST])
        return out

    def fill(self, out) -> None:
        t = self.totals()
        out.inference_count = t[self._INFER]
        out.execution_count = t[self._EXEC]
        out.last_inference = t[self._LAST]
        for k in self._KINDS:
            d = getattr(out.inference_stats, k)
            d.count = t[self._AT[k]]
            d.ns = t[self._AT[k] + 1]


_TYPE_OF = {"BYTES": "TYPE_STRING"}

# Triton protocol extensions a Gateway answers (a repository adds "model_repository").
EXTENSIONS = (
    "model_configuration",
    "system_shared_memory",
    "statistics",
    "trace",
    "logging",
)


def model_config(plan: ServingPlan, max_batch_size: int = 0):
    """Triton ModelConfig of a plan: names, dtypes and dims as compiled (-1: symbolic)."""
    cfg = mc.ModelConfig(  # type: ignore[attr-defined]
        name=plan.model_name,
        platform=plan.platform,
        backend="terrazzo",
        max_batch_size=max_batch_size,
    )
    dims = (lambda shape: shape[1:]) if max_batch_size > 0 else (lambda shape: shape)
    for t in plan.inputs:
        cfg.input.add(
            name=t.name,
            data_type=mc.DataType.Value(_TYPE_OF.get(t.datatype, "TYPE_" + t.datatype)),  # type: ignore[attr-defined]
            dims=list(dims(t.shape)),
        )
    for t in plan.outputs:
        cfg.output.add(
            name=t.name,
            data_type=mc.DataType.Value(_TYPE_OF.get(t.datatype, "TYPE_" + t.datatype)),  # type: ignore[attr-defined]
            dims=list(dims(t.shape)),
        )
    for st in plan.stages:
        gpu = not st.device.lower().startswith("cpu") and st.fallback_reason is None
        g = cfg.instance_group.add(
            name=f"stage{st.index}:{st.device}",
            count=st.replicas,
            kind=mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU,  # type: ignore[attr-defined]
        )
        g.profile.append(st.device)
    cfg.parameters["stages"].string_value = str(len(plan.stages))
    return cfg


def _settings_response(values: dict[str, list[str]]):
    resp = pb.TraceSettingResponse()  # type: ignore[attr-defined]
    for k, v in values.items():
        resp.settings[k].value.extend(v)
    return resp


def _log_response(values: dict[str, object]):
    resp = pb.LogSettingsResponse()  # type: ignore[attr-defined]
    for k, v in values.items():
        if isinstance(v, bool):
            resp.settings[k].bool_param = v
        elif isinstance(v, int):
            resp.settings[k].uint32_param = v
        else:
            resp.settings[k].string_param = str(v)
    return resp


class ProtocolMixin:
    """The model-independent RPCs (shared memory, trace/log settings), over ``self.shm`` and
    ``self.settings``; shared by a lone Gateway and the repository front."""

    shm: SharedMemoryRegistry
    settings: ServerSettings

    def SystemSharedMemoryRegister(self, request, context):
        try:
            self.shm.register(request.name, request.key, request.offset, request.byte_size)
        except InferError as e:
            context.abort(e.code, str(e))
        return pb.SystemSharedMemoryRegisterResponse()  # type: ignore[attr-defined]

    def SystemSharedMemoryStatus(self, request, context):
        try:
            regions = self.shm.status(request.name)
        except InferError as e:
            context.abort(e.code, str(e))
        resp = pb.SystemSharedMemoryStatusResponse()  # type: ignore[attr-defined]
        for name, (key, offset, size) in regions.items():
            r = resp.regions[name]
            r.name, r.key, r.offset, r.byte_size = name, key, offset, size
        return resp

    def SystemSharedMemoryUnregister(self, request, context):
        self.shm.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()  # type: ignore[attr-defined]

    def _no_cuda(self, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "CUDA shared memory is not supported by terrazzo: register system shared memory "
            "instead (tritonclient.utils.shared_memory)",
        )

    def CudaSharedMemoryRegister(self, request, context):
        self._no_cuda(context)

    def CudaSharedMemoryStatus(self, request, context):
        self._no_cuda(context)

    def CudaSharedMemoryUnregister(self, request, context):
        self._no_cuda(context)

    def TraceSetting(self, request, context):
        for k, v in request.settings.items():
            if list(v.value):
                self.settings.trace[k] = list(v.value)
        return _settings_response(self.settings.trace)

    def LogSettings(self, request, context):
        for k, v in request.settings.items():
            kind = v.WhichOneof("parameter_choice")
            if kind is not None:
                self.settings.log[k] = getattr(v, kind)
        return _log_response(self.settings.log)


def request_bytes(request) -> int:
    """The bytes a ModelInferRequest holds, for admission: its tensors' sizes from their
    datatypes and shapes. ``ByteSize()`` serialises the message to count it (120 ms for a
    16 MiB tensor, most of what the gateway itself spent); it is only used for BYTES or typed
    contents. A shape that lies about its raw bytes is refused by validation right after."""
    total = 0
    for t in request.inputs:
        if t.datatype == "BYTES" or t.HasField("contents"):
            return int(request.ByteSize())
        try:
            itemsize = numpy_dtype(t.datatype).itemsize
        except TensorError:
            return int(request.ByteSize())
        n = 1
        for d in t.shape:
            n *= max(int(d), 0)
        total += n * itemsize
    return total


def shm_param(params, name: str) -> object:
    p = params.get(name)
    if p is None:
        return None
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


class Gateway(ProtocolMixin, pb_grpc.GRPCInferenceServiceServicer):
    """KServe v2 servicer over one served model."""

    def __init__(
        self,
        plan: ServingPlan,
        pools: list[ReplicaPool],
        metrics: RuntimeMetrics,
        opts: GatewayOptions,
        shm: SharedMemoryRegistry | None = None,
        settings: ServerSettings | None = None,
    ):
        self.plan = plan
        self.shm = shm if shm is not None else SharedMemoryRegistry()
        self.settings = settings if settings is not None else ServerSettings.defaults()
        self.stats = ModelStats()
        self.pools = pools
        self.metrics = metrics
        self.opts = opts
        self.input_specs = {t.name: t for t in plan.inputs}
        self.output_specs = {t.name: t for t in plan.outputs}
        self.draining = threading.Event()
        self.drain_reason = "server is shutting down"  # the UNAVAILABLE message while draining
        self._inflight = 0
        self._inflight_bytes = 0
        self._big_since_trim = 0
        self._inflight_lock = threading.Lock()
        self._idle = threading.Condition(self._inflight_lock)
        self._worker_md = ((TOKEN_HEADER, opts.worker_token),) if opts.worker_token else ()
        self._children: dict[tuple[Any, ...], Any] = {}  # labelled metric children (_child)
        self._request_kids: dict[tuple[str, str], tuple[Any, Any]] = {}  # _tally_request
        # queue depth is the in-flight count, read at scrape time (issue 14: no gauge update
        # per request)
        metrics.queue_depth.labels(model=plan.model_name).set_function(self.inflight)
        self.cost: Any = None  # runtime.cost.CostAccount: charges stage device-seconds
        self.batching: Any = None  # ServeOptions.batching, reported by ModelConfig
        self.batching_active: dict[int, bool] | None = None  # stage -> its worker batches
        # --- adapt: hooks of terrazzo.runtime.adapt (observe + hot swap); None: off
        self.adapt: Any = None

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
        return pb.ServerMetadataResponse(
            name="terrazzo", version=__version__, extensions=list(EXTENSIONS)
        )

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

    def ModelConfig(self, request, context):
        if not self._known(request.name, request.version):
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model {request.name!r} version {request.version!r}",
            )
        from terrazzo.runtime.batch_config import batched_model_config

        config = batched_model_config(self.plan, self.batching, self.batching_active)
        return pb.ModelConfigResponse(config=config)  # type: ignore[attr-defined]

    def model_statistics(self, out) -> None:
        """Fill one ModelStatistics message."""
        out.name = self.plan.model_name
        out.version = self.plan.version
        self.stats.fill(out)

    def ModelStatistics(self, request, context):
        resp = pb.ModelStatisticsResponse()  # type: ignore[attr-defined]
        if request.name and not self._known(request.name, request.version):
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model {request.name!r} version {request.version!r}",
            )
        self.model_statistics(resp.model_stats.add())
        return resp

    def RepositoryIndex(self, request, context):
        resp = pb.RepositoryIndexResponse()  # type: ignore[attr-defined]
        resp.models.add(
            name=self.plan.model_name,
            version=self.plan.version,
            state="READY" if self.model_ready() else "UNAVAILABLE",
        )
        return resp

    def RepositoryModelLoad(self, request, context):
        context.abort(
            grpc.StatusCode.UNAVAILABLE,
            "explicit model load/unload not allowed: serve a model repository directory "
            "with --model-control-mode explicit",
        )

    def RepositoryModelUnload(self, request, context):
        self.RepositoryModelLoad(request, context)

    # -- inference ---------------------------------------------------------------------
    def infer(self, request, context):
        """Serve one ModelInferRequest in-process; raises InferError (code + message)."""
        return self._infer(request, context)

    def ModelInfer(self, request, context):
        try:
            return self._infer(request, context)
        except InferError as e:
            context.abort(e.code, str(e))

    def model_infer_raw(self, request, context) -> bytes:
        """``ModelInfer`` answered as its serialised bytes, each raw output copied once into them
        (the gRPC endpoint's handler: ``terrazzo.runtime.kserve_wire``)."""
        try:
            return self._infer(request, context, lean=True)
        except InferError as e:
            context.abort(e.code, str(e))
            raise  # abort raises; never reached

    def ModelStreamInfer(self, request_iterator, context) -> Iterator[pb.ModelStreamInferResponse]:  # type: ignore[name-defined]
        for request in request_iterator:
            try:
                yield pb.ModelStreamInferResponse(infer_response=self._infer(request, context))  # type: ignore[attr-defined]
            except InferError as e:
                yield pb.ModelStreamInferResponse(error_message=f"{e.code.name}: {e}")  # type: ignore[attr-defined]

    def _infer(self, request, context, lean: bool = False) -> Any:
        t0 = time.perf_counter()
        request_id = request.id or f"{_ID_PREFIX}-{next(_IDS)}"  # uuid4 costs ~20 us
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
            raise InferError(grpc.StatusCode.UNAVAILABLE, self.drain_reason)
        size = request_bytes(request)
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
        phases: dict[str, float] = {"queue": time.perf_counter() - t0}
        try:
            response = self._run(request, context, request_id, workers, phases, lean)
            return response
        except InferError as e:
            status = e.code.name
            raise
        except Exception as e:  # a bug: say so as INTERNAL rather than hang the client
            status = "INTERNAL"
            raise InferError(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}") from e
        finally:
            with self._idle:
                self._inflight -= 1
                self._inflight_bytes -= size
                self._big_since_trim += size if size >= _TRIM_AFTER_BYTES else 0
                self._idle.notify_all()
            self._count(model, status, t0, request_id, workers)
            self.stats.record(status == "OK", time.perf_counter() - t0, phases)

    def _child(self, family: Any, **labels: str) -> Any:
        """``family.labels(**labels)``, cached: prometheus' lookup costs ~10 us a call."""
        key = (id(family), *labels.values())
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(**labels)
        return child

    def _count(
        self, model: str, status: str, t0: float, request_id: str, workers: list[str]
    ) -> None:
        latency_s = time.perf_counter() - t0
        self._tally_request(model, status, latency_s)
        if self.adapt is not None:  # --- adapt
            self.adapt.request_done(status, latency_s)
        if access_log_enabled():  # issue 14: no arguments built while the access log is off
            log_request(
                id=request_id,
                model=model,
                status=status,
                latency_s=round(latency_s, 6),
                workers=workers,
            )

    # --- issue 14: request metrics through RuntimeMetrics.tally, folded at scrape time
    def _tally_request(self, model: str, status: str, latency_s: float) -> None:
        """Count a request (and its latency when OK); failures go to the counter directly."""
        kids = self._request_kids.get((model, status))
        if kids is None:
            ok = status == "OK"
            kids = self._request_kids[(model, status)] = (
                self._child(self.metrics.requests, model=model, status=status),
                self._child(self.metrics.request_latency, model=model) if ok else None,
            )
        if kids[1] is None:
            kids[0].inc()
            return
        tally = self.metrics.tally
        tally.inc(kids[0])
        tally.observe(kids[1], latency_s)

    # --- end issue 14

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

    def _from_shm(self, request):
        """A copy of ``request`` with inputs held in shared memory read into raw contents."""
        if not any("shared_memory_region" in i.parameters for i in request.inputs):
            return request
        out = pb.ModelInferRequest()  # type: ignore[attr-defined]
        out.CopyFrom(request)
        del out.raw_input_contents[:]
        raw = iter(request.raw_input_contents)
        for inp in out.inputs:
            region = shm_param(inp.parameters, "shared_memory_region")
            if region is None:
                out.raw_input_contents.append(next(raw, b""))
                continue
            size = shm_param(inp.parameters, "shared_memory_byte_size")
            offset = shm_param(inp.parameters, "shared_memory_offset") or 0
            if not isinstance(size, int) or not isinstance(offset, int):
                raise InferError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {inp.name!r}: shared_memory_byte_size must be an integer",
                )
            out.raw_input_contents.append(self.shm.read(str(region), offset, size))
            for k in ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"):
                if k in inp.parameters:
                    del inp.parameters[k]
        return out

    def _run(
        self,
        request,
        context,
        request_id: str,
        workers: list[str],
        phases: dict[str, float],
        lean: bool = False,
    ) -> Any:
        """The ModelInferResponse, or with ``lean`` its serialised bytes (kserve_wire)."""
        deadline = self._deadline(request, context)
        t_in = time.perf_counter()
        request = self._from_shm(request)
        try:
            env: dict[str, WireTensor] = decode_inputs(
                request, self.input_specs, self.plan.model_name
            )
        except TensorError as e:
            raise InferError(e.code, str(e)) from e
        wanted = self._requested_outputs(request)
        t_run = time.perf_counter()
        phases["compute_input"] = t_run - t_in
        if self.cost is not None:
            self.cost.begin()
        self._execute(env, deadline, context, request_id, workers, forwarded_parameters(request))
        t_out = time.perf_counter()
        phases["compute_infer"] = t_out - t_run
        resp = pb.ModelInferResponse(
            model_name=self.plan.model_name, model_version=self.plan.version, id=request.id
        )  # type: ignore[attr-defined]
        if self.cost is not None:  # the device-seconds this request used, at the plan's prices
            resp.parameters["cost_usd"].double_param = self.cost.request_usd()
        to_shm = {
            o.name: o.parameters for o in request.outputs if "shared_memory_region" in o.parameters
        }
        raws: list[Any] = []  # views into the worker reply (or the stage's arrays)
        for name in wanted:
            t = env[name]
            out = resp.outputs.add(name=name, datatype=t.datatype, shape=t.shape)
            params = to_shm.get(name)
            if params is None:
                raws.append(t.raw)
                continue
            region = str(shm_param(params, "shared_memory_region"))
            size = shm_param(params, "shared_memory_byte_size")
            offset = shm_param(params, "shared_memory_offset") or 0
            if not isinstance(size, int) or not isinstance(offset, int) or len(t.raw) > size:
                raise InferError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"output {name!r} needs {len(t.raw)} bytes; shared memory region "
                    f"{region!r} offers {size}",
                )
            self.shm.write(region, offset, t.raw)
            out.parameters["shared_memory_region"].string_param = region
            out.parameters["shared_memory_byte_size"].int64_param = len(t.raw)
            if offset:
                out.parameters["shared_memory_offset"].int64_param = offset
            raws.append(b"")
        if lean:  # one copy of each output, into the reply's bytes
            data = kserve_wire.encode_response(resp, raws)
            phases["compute_output"] = time.perf_counter() - t_out
            return data
        resp.raw_output_contents.extend([bytes(r) for r in raws])
        phases["compute_output"] = time.perf_counter() - t_out
        return resp

    def _execute(
        self,
        env: dict[str, WireTensor],
        deadline: float,
        context,
        request_id: str,
        workers: list[str],
        fwd: dict[str, int] | None = None,
    ) -> None:
        # --- adapt: a request keeps the pools it started with (hot swap at request boundaries)
        hook = self.adapt
        gen, pending = (0, list(self.pools)) if hook is None else hook.pin(self.pools, env)
        running: dict[int, tuple[grpc.Future, Replica, ReplicaPool, float, int]] = {}
        done: queue.Queue[int | None] = queue.Queue()
        context.add_callback(lambda: done.put(None))  # fires when the client RPC ends
        try:
            while pending or running:
                for pool in [p for p in pending if all(v in env for v in p.stage.inputs)]:
                    pending.remove(pool)
                    self._launch(pool, env, deadline, request_id, running, done, workers, fwd=fwd)
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
                        pool,
                        env,
                        deadline,
                        request_id,
                        running,
                        done,
                        workers,
                        rep,
                        tries + 1,
                        e,
                        fwd=fwd,
                    )
        finally:
            for fut, rep, pool, _, _ in running.values():
                fut.cancel()
                pool.release(rep, ok=False, call=fut)
            if hook is not None:  # --- adapt
                hook.unpin(gen)

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
        fwd: dict[str, int] | None = None,
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
        # raw tensors behind a small header (runtime.wire): no protobuf copy of the tensors
        req = wire.encode(
            {"id": request_id, **(fwd or {})}, {name: env[name] for name in stage.inputs}
        )
        try:
            call = rep.stage_call
            if call is None:  # detached after acquire (a concurrent restart)
                raise InferError(grpc.StatusCode.UNAVAILABLE, f"worker {rep.name} was detached")
            timeout = min(deadline - time.monotonic(), pool.stage_timeout_s)
            fut = call.future(req, timeout=max(timeout, 1e-3), metadata=self._worker_md)
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
        try:
            header, outputs = wire.decode(resp)
        except TensorError as e:
            raise InferError(grpc.StatusCode.INTERNAL, f"{where}: {e}") from None
        compute_s = float(header.get("compute_s", 0.0))
        self.metrics.device_busy.labels(device=stage.device).inc(max(0.0, compute_s))
        if self.cost is not None:
            self.cost.charge(stage.index, compute_s)
        if self.adapt is not None:  # --- adapt
            self.adapt.stage_done(
                pool, time.perf_counter() - t_start, compute_s, float(header.get("queue_s", 0.0))
            )
        env.update(outputs)
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
