"""Serving entry point: start workers, the KServe v2 gateway and /metrics; supervise; drain on stop.

``serve(bundle_or_plan, ...)`` returns a running ``Server``; ``terrazzo serve`` wraps it. A
supervisor thread watches every worker: a dead one is marked down at once (its in-flight
requests fail with UNAVAILABLE, new ones go to other replicas), restarted, health-probed and
put back into rotation.

Hung and slow workers: the supervisor sends each worker a ``grpc.health.v1`` heartbeat every
``health_period_s``; ``heartbeat_misses`` unanswered in a row (each within
``heartbeat_timeout_s``), or ``deadline_misses`` stage calls in a row past their stage deadline,
condemn the worker: it leaves rotation at once (its calls in flight are cancelled and retried on
another replica), is killed with SIGKILL (which also ends a SIGSTOPped process) and restarted.
Readiness (ServerReady/ModelReady/grpc.health.v1) is false while a stage has no healthy replica.
A worker that keeps failing (``max_restarts`` failures in a row, each within ``stable_s`` of its
start) is restarted with exponential backoff and then given up on with one log line naming the
stage and its last exit status.

Temp files: each local worker gets a private directory under the server's run directory
(``terrazzo.runtime.rundir``), removed when the worker ends, however it ends; the run directory
goes with ``stop()``, and one left by a gateway killed with SIGKILL is swept by the next start.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from terrazzo.errors import ServingError
from terrazzo.runtime.batcher import BatchingOptions
from terrazzo.runtime.gateway import (
    Gateway,
    GatewayOptions,
    HealthService,
    ServerSettings,
    SharedMemoryRegistry,
    TokenAuthInterceptor,
)
from terrazzo.runtime.internal_tls import GATEWAY_NAME, make_identity
from terrazzo.runtime.kserve_wire import model_infer_handler
from terrazzo.runtime.launcher import Launcher, LocalLauncher, WorkerExitedError, WorkerOptions
from terrazzo.runtime.metrics import RuntimeMetrics, WorkerStatsCollector
from terrazzo.runtime.plan import ServingPlan
from terrazzo.runtime.pool import Replica, ReplicaPool
from terrazzo.runtime.protos import grpc_service_pb2_grpc as pb_grpc
from terrazzo.runtime.protos import health_pb2_grpc
from terrazzo.runtime.rundir import RunDir
from terrazzo.runtime.worker import grpc_options

log = logging.getLogger("terrazzo.runtime")

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from terrazzo.runtime.http_front import HTTPFront


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """PEM bytes for TLS; with ``client_ca`` set, clients must present a cert it signed (mTLS)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @staticmethod
    def from_files(cert: str | Path, key: str | Path, ca: str | Path | None = None) -> TLSOptions:
        """Read the PEM files; ``ca`` turns on client-certificate verification."""
        try:
            return TLSOptions(
                Path(cert).read_bytes(),
                Path(key).read_bytes(),
                Path(ca).read_bytes() if ca else None,
            )
        except OSError as e:
            raise ServingError(f"cannot read TLS file: {e}") from e


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """Knobs of a served model (all limits explicit; see DESIGN.md Runtime and docs/serving.md).

    Admission: ``max_message_bytes`` (gRPC's per-message cap, refused by gRPC before the
    handler runs), ``max_queue`` requests and ``max_inflight_bytes`` request bytes in flight
    per model (RESOURCE_EXHAUSTED beyond), ``max_rpcs`` concurrent RPCs including open
    streams (gRPC's ``maximum_concurrent_rpcs``; each holds one of ``gateway_threads``,
    which defaults to ``max_rpcs``). Stage deadline: ``stage_timeout_s`` if given, else
    ``stage_timeout_sla_factor`` x the plan's SLA latency clamped to
    [``stage_timeout_floor_s``, ``stage_timeout_ceiling_s``], else the ceiling.
    """

    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int | None = None
    http_port: int | None = None  # KServe v2 HTTP/REST (terrazzo.runtime.http_front); None: off
    replicas: int | None = None
    token: str | None = None
    tls: TLSOptions | None = None
    default_timeout_s: float = 30.0
    max_message_bytes: int = 256 << 20
    max_queue: int = 256
    max_inflight_bytes: int = 1 << 30
    max_rpcs: int = 256
    gateway_threads: int | None = None
    drain_timeout_s: float = 30.0
    health_period_s: float = 0.25
    heartbeat_timeout_s: float = 0.5
    heartbeat_misses: int = 3
    stage_timeout_s: float | None = None
    stage_timeout_floor_s: float = 1.0
    stage_timeout_ceiling_s: float = 30.0
    stage_timeout_sla_factor: float = 10.0
    deadline_misses: int = 3
    restart_workers: bool = True
    max_restarts: int = 5
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 8.0
    stable_s: float = 10.0
    internal_tls: bool = False
    run_dir_base: str | None = None
    ray_address: str | None = None
    trust_key: Any = None  # what terrazzo.bundle.resolve_trust reads
    # Workers started elsewhere (``terrazzo worker``, e.g. Kubernetes pods): stage -> addresses,
    # and the internal token they were given (default: a fresh random one for local workers).
    static_workers: Mapping[int, tuple[str, ...]] | None = None
    worker_token: str | None = None
    # False: no gRPC port of its own (a model of a repository, served by its one endpoint)
    listen: bool = True
    # a single-stage model runs in the gateway process, no worker hop (runtime.inprocess)
    stage_in_gateway: bool = False
    # --- dynamic batching (terrazzo.runtime.batcher) ---
    # One BatchingOptions for every stage, or stage index -> options; off by default (Triton's
    # default too): merging is right only for stages whose batch rows are independent.
    batching: BatchingOptions | Mapping[int, BatchingOptions] | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "default_timeout_s",
            "max_message_bytes",
            "max_queue",
            "max_inflight_bytes",
            "max_rpcs",
            "health_period_s",
            "heartbeat_timeout_s",
            "heartbeat_misses",
            "stage_timeout_floor_s",
            "stage_timeout_ceiling_s",
            "stage_timeout_sla_factor",
            "deadline_misses",
        ):
            value = getattr(self, name)
            if not value > 0:
                raise ServingError(f"serve option {name} must be > 0, got {value!r}")
        if self.stage_timeout_s is not None and not self.stage_timeout_s > 0:
            raise ServingError(
                f"serve option stage_timeout_s must be > 0, got {self.stage_timeout_s!r}"
            )
        if self.max_restarts < 0:
            raise ServingError(f"serve option max_restarts must be >= 0, got {self.max_restarts!r}")

    def stage_timeout(self, plan: ServingPlan) -> float:
        """Server-side deadline of one stage call for ``plan`` (see the class docstring)."""
        if self.stage_timeout_s is not None:
            return self.stage_timeout_s
        if plan.sla_latency_s:
            return min(
                self.stage_timeout_ceiling_s,
                max(self.stage_timeout_floor_s, self.stage_timeout_sla_factor * plan.sla_latency_s),
            )
        return self.stage_timeout_ceiling_s


class Server:
    """A running model server (gateway + workers). Use as a context manager or call ``stop()``."""

    def __init__(
        self,
        plan: ServingPlan,
        opts: ServeOptions,
        make_launcher: Callable[[WorkerOptions], Launcher],
        shm: SharedMemoryRegistry | None = None,
        settings: ServerSettings | None = None,
    ):
        self.plan = plan
        self.opts = opts
        self.metrics = RuntimeMetrics()
        self.run_dir = RunDir(opts.run_dir_base)
        atexit.register(self.run_dir.remove)  # a safety net: stop() removes it first
        tls_on = opts.internal_tls or bool(opts.ray_address)
        self._tls = make_identity(GATEWAY_NAME) if tls_on else None
        self._worker_opts = WorkerOptions(
            token=opts.worker_token or ("" if tls_on else secrets.token_hex(16)),
            max_message_bytes=opts.max_message_bytes,
            tls=self._tls,
            run_dir=self.run_dir,
            batching=_batching_json(opts.batching),  # dynamic batching: passed to each worker
        )
        self.stage_timeout_s = opts.stage_timeout(plan)
        self.pools = [
            ReplicaPool(s, self.metrics, self.stage_timeout_s, opts.deadline_misses)
            for s in plan.stages
        ]
        self.gateway = Gateway(
            plan,
            self.pools,
            self.metrics,
            GatewayOptions(
                default_timeout_s=opts.default_timeout_s,
                max_queue=opts.max_queue,
                max_inflight_bytes=opts.max_inflight_bytes,
                worker_token=self._worker_opts.token,
            ),
            shm,
            settings,
        )
        if opts.stage_in_gateway:  # the one stage runs here: no workers (runtime.inprocess)
            from terrazzo.runtime.inprocess import InProcessGateway

            self.pools = []
            self.gateway = InProcessGateway(
                plan, self.metrics, self.gateway.opts, self._worker_opts, shm=shm, settings=settings
            )
        self.gateway.batching = opts.batching  # ModelConfig reports it (runtime.batch_config)
        from terrazzo.runtime.cost import CostAccount  # USD per request / hour, planned vs actual

        self.cost = CostAccount(plan, plan.usd_per_hour_by_device)
        self.metrics.registry.register(self.cost)
        self.gateway.cost = self.cost
        self._launcher: Launcher | None = None
        self._make_launcher = make_launcher
        self._stop = threading.Event()
        self._stopped = False
        self._stop_lock = threading.Lock()
        self._grpc: grpc.Server | None = None
        self._metrics_http: WSGIServer | None = None
        self._http: HTTPFront | None = None
        self.http_port: int | None = None
        self._supervisor: threading.Thread | None = None
        self.port = 0
        self.metrics_port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def _start(self) -> None:
        self._launcher = self._make_launcher(self._worker_opts)
        if self.pools:  # none when the stage runs in the gateway (stage_in_gateway)
            self._launcher.check(self.plan.stages)
        jobs = [(rep.stage, rep.index) for pool in self.pools for rep in pool.replicas]
        handles = self._launcher.start_many(jobs)
        reps = [rep for pool in self.pools for rep in pool.replicas]
        for rep, handle in zip(reps, handles, strict=True):
            rep.attach(handle, self.opts.max_message_bytes, self._tls)
        for pool in self.pools:
            for rep in pool.replicas:
                if not rep.probe(timeout_s=30.0):
                    raise ServingError(
                        f"worker {rep.name} started but does not answer health checks"
                    )
                pool.set_healthy(rep, True)
                rep.healthy_since = time.monotonic()
        if self.opts.listen:
            self._start_grpc()
        # same token and TLS as the gRPC port; a repository's models share its one endpoint
        if self.opts.listen and self.opts.http_port is not None:
            from terrazzo.runtime.http_front import HTTPFront

            self._http = HTTPFront(
                self.gateway,
                self.opts.host,
                self.opts.http_port,
                token=self.opts.token,
                tls=self.opts.tls,
                max_body_bytes=self.opts.max_message_bytes,
                max_connections=self.opts.max_rpcs,
            )
            self.http_port = self._http.port
        if self.opts.metrics_port is not None:
            from terrazzo.runtime.http_front import start_metrics_http

            try:  # /metrics only: 404 elsewhere (a probe of /v2/health/* there must not pass)
                self._metrics_http = start_metrics_http(
                    self.opts.host, self.opts.metrics_port, self.metrics.registry
                )
            except OSError as e:
                raise ServingError(
                    f"cannot serve /metrics on port {self.opts.metrics_port}: {e}"
                ) from e
            self.metrics_port = self._metrics_http.server_port
        # dynamic batching: per-stage inference/execution counts, read from workers at scrape
        self.worker_stats = WorkerStatsCollector(
            self.pools, self.plan.model_name, self._worker_opts.token
        )
        self.metrics.registry.register(self.worker_stats)
        if _batching_json(self.opts.batching):  # which stages really batch (ModelConfig says)
            inproc = getattr(self.gateway, "servicer", None)
            rows = (
                [{"stage": 0, "batching": inproc.batcher is not None}]
                if inproc is not None
                else self.worker_stats.fetch()
            )
            self.gateway.batching_active = {int(r["stage"]): bool(r["batching"]) for r in rows}
        self._supervisor = threading.Thread(
            target=self._supervise, name="tz-supervisor", daemon=True
        )
        self._supervisor.start()

    def _start_grpc(self) -> None:
        self._grpc, self.port = start_grpc(self.gateway, HealthService(self.gateway), self.opts)

    def stop(self, drain_timeout_s: float | None = None) -> None:
        """Refuse new requests, let in-flight ones finish (up to the drain timeout), stop workers."""
        with self._stop_lock:  # a second caller waits for the first stop to finish
            if self._stopped:
                return
            self._stop_now(drain_timeout_s)
            self._stopped = True

    def _stop_now(self, drain_timeout_s: float | None) -> None:
        grace = self.opts.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        self.gateway.draining.set()
        self.gateway.wait_idle(grace)
        self._stop.set()
        if self._grpc is not None:
            self._grpc.stop(1.0).wait()
        if self._http is not None:
            self._http.stop()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        handles = []
        for pool in self.pools:
            for rep in pool.replicas:
                rep.detach()
                if rep.handle is not None:
                    handles.append(rep.handle)
        if handles:  # each drains for up to its grace period: stop them side by side
            with futures.ThreadPoolExecutor(max_workers=len(handles)) as ex:
                list(ex.map(lambda h: h.stop(), handles))
        close = getattr(self.gateway, "close", None)  # an in-gateway stage's batcher
        if close is not None:
            close()
        if self._launcher is not None:
            self._launcher.close()
        self.run_dir.remove()
        atexit.unregister(self.run_dir.remove)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self) -> None:
        """Block until ``stop()`` is called (from a signal handler or another thread)."""
        while not self._stop.wait(0.5):
            pass

    # -- introspection ------------------------------------------------------------------
    def workers(self) -> list[dict[str, object]]:
        """One row per replica: stage, replica, device, target, fallback, address, health, restarts."""
        rows = []
        for pool in self.pools:
            for rep in pool.replicas:
                h = rep.handle
                rows.append(
                    {
                        "worker": rep.name,
                        "stage": pool.stage.index,
                        "replica": rep.index,
                        "device": pool.stage.device,
                        "target": pool.stage.target,
                        "fallback_reason": pool.stage.fallback_reason,
                        "address": h.address if h else None,
                        "where": h.where if h else None,
                        "healthy": rep.healthy,
                        "restarts": rep.restarts,
                        "gave_up": rep.gave_up,
                        "handle": h,
                    }
                )
        return rows

    # -- supervision ---------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stop.wait(0.05):
            for pool in self.pools:
                for rep in pool.replicas:
                    if rep.restarting or rep.gave_up or rep.handle is None:
                        continue
                    if rep.condemned is None and not rep.handle.alive():
                        status = rep.handle.exit_status()
                        pool.condemn(rep, f"worker exited with status {status}")
                    if rep.condemned is not None:
                        pool.set_healthy(rep, False)
                        if self.opts.restart_workers:
                            rep.restarting = True
                            threading.Thread(
                                target=self._restart, args=(pool, rep), daemon=True
                            ).start()
                        continue
                    self._heartbeat(pool, rep)
            self.gateway.maybe_trim()

    def _heartbeat(self, pool: ReplicaPool, rep: Replica) -> None:
        if (
            rep.pending_probe is None
            and time.monotonic() - rep.probe_sent < self.opts.health_period_s
        ):
            return
        answered = rep.heartbeat(self.opts.heartbeat_timeout_s)
        if answered is None:
            return
        if answered:
            rep.heartbeat_misses = 0
            if not rep.healthy:
                pool.set_healthy(rep, True)
            return
        rep.heartbeat_misses += 1
        if rep.heartbeat_misses >= self.opts.heartbeat_misses:
            pool.condemn(
                rep,
                f"missed {rep.heartbeat_misses} heartbeats of {self.opts.heartbeat_timeout_s:g} s",
            )

    def _backoff(self, streak: int) -> float:
        if streak <= 1:
            return 0.0
        return min(self.opts.restart_backoff_max_s, self.opts.restart_backoff_s * 2 ** (streak - 2))

    def _restart(self, pool: ReplicaPool, rep: Replica) -> None:
        stage = pool.stage
        try:
            old = rep.handle
            reason = rep.condemned or "unhealthy"
            rep.detach()
            status = None
            if old is not None:
                status = old.exit_status()
                old.kill()  # SIGKILL: ends a SIGSTOPped worker too; removes its temp dir
                if status is None:
                    status = old.exit_status()
            if time.monotonic() - rep.healthy_since >= self.opts.stable_s:
                rep.crash_streak = 0
            log.warning("worker %s (stage %d) is restarted: %s", rep.name, stage.index, reason)
            while not self._stop.is_set():
                rep.crash_streak += 1
                if rep.crash_streak > self.opts.max_restarts:
                    rep.gave_up = True
                    pool.condemn(rep, "given up")
                    log.error(
                        "worker %s (stage %d, device %s) gave up after %d failed restarts in a "
                        "row; last exit status %s",
                        rep.name,
                        stage.index,
                        stage.device,
                        self.opts.max_restarts,
                        status,
                    )
                    return
                if self._stop.wait(self._backoff(rep.crash_streak)):
                    return
                try:
                    assert self._launcher is not None
                    (handle,) = self._launcher.start_many([(stage, rep.index)])
                except WorkerExitedError as e:
                    status = e.exit_status
                    continue
                except ServingError:
                    continue
                if self._stop.is_set():
                    handle.stop()
                    return
                rep.attach(handle, self.opts.max_message_bytes, self._tls)
                rep.restarts += 1
                self.metrics.worker_restarts.labels(
                    stage=str(stage.index), device=stage.device
                ).inc()
                if rep.probe(timeout_s=30.0):
                    rep.healthy_since = time.monotonic()
                    pool.set_healthy(rep, True)
                    return
                rep.detach()
                status = handle.exit_status()
                handle.kill()
        finally:
            rep.restarting = False


def start_grpc(servicer: Any, health: Any, opts: ServeOptions) -> tuple[grpc.Server, int]:
    """Start the gRPC endpoint (KServe v2 ``servicer`` + ``grpc.health.v1``); return it and its port."""
    interceptors = [TokenAuthInterceptor(opts.token)] if opts.token else []
    server = grpc.server(
        futures.ThreadPoolExecutor(  # every active RPC (a stream too) holds one thread
            max_workers=opts.gateway_threads or opts.max_rpcs,
            thread_name_prefix="tz-gateway",
        ),
        options=grpc_options(opts.max_message_bytes),
        interceptors=interceptors,
        maximum_concurrent_rpcs=opts.max_rpcs,
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    # ModelInfer again, replacing the generated handler: raw tensor contents stay views of the
    # received message and the reply is written without protobuf copies (runtime.kserve_wire)
    server.add_registered_method_handlers(
        "inference.GRPCInferenceService", {"ModelInfer": model_infer_handler(servicer)}
    )
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    address = f"{opts.host}:{opts.port}"
    try:
        if opts.tls is not None:
            tls = opts.tls
            creds = grpc.ssl_server_credentials(
                [(tls.private_key, tls.cert_chain)],
                root_certificates=tls.client_ca,
                require_client_auth=tls.client_ca is not None,
            )
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise ServingError(f"cannot listen on {address}: {e}") from e
    if port == 0:
        raise ServingError(f"cannot listen on {address} (port in use?)")
    server.start()
    return server, port


def _batching_json(
    batching: BatchingOptions | Mapping[int, BatchingOptions] | None,
) -> dict[str, Any] | None:
    """ServeOptions.batching as the worker config's ``batching`` (dynamic batching)."""
    if batching is None:
        return None
    if isinstance(batching, BatchingOptions):
        return {"*": batching.to_json()} if batching.enabled else None
    return {str(k): v.to_json() for k, v in batching.items() if v.enabled} or None


def serve(
    model: str | Path | ServingPlan,
    port: int = 0,
    *,
    metrics_port: int | None = None,
    replicas: int | None = None,
    token: str | None = None,
    tls: TLSOptions | None = None,
    ray_address: str | None = None,
    trust_key: Any = None,
    allow_unsigned: bool = False,
    shm_registry: SharedMemoryRegistry | None = None,
    server_settings: ServerSettings | None = None,
    **options: object,
) -> Server:
    """Serve a .tzb bundle (or a ServingPlan) over KServe v2 gRPC and return the running Server.

    Args:
        model: path of a .tzb bundle (verified before any worker loads it) or a ServingPlan.
        port: gateway port (0 picks a free one; read ``Server.port``).
        metrics_port: port of the Prometheus /metrics endpoint (None: no endpoint; 0: any).
        http_port (in ``options``): port of the KServe v2 HTTP/REST endpoint (None: off; 0: any).
        replicas: replicas per stage, overriding the plan.
        token: require ``authorization: Bearer <token>`` on every inference RPC.
        tls: serve TLS (mTLS when ``tls.client_ca`` is set).
        ray_address: place workers as Ray actors on this cluster ("auto" or an address).
        trust_key: public key(s) the bundle's signature must verify against (default: the
            local trust, ``terrazzo.bundle.resolve_trust``).
        allow_unsigned: serve a bundle that is unsigned or not signed by a trusted key.
        shm_registry, server_settings: shared with other models (a repository's endpoint).
        **options: other ``ServeOptions`` fields (default_timeout_s, max_message_bytes, ...).

    Raises:
        BundleError: the bundle fails verification.
        ServingError: workers cannot start, ports are taken, or a device class is missing on Ray.
    """
    opts = ServeOptions(
        port=port,
        metrics_port=metrics_port,
        replicas=replicas,
        token=token,
        tls=tls,
        ray_address=ray_address,
        trust_key=trust_key,
        **options,  # type: ignore[arg-type]
    )
    plan = (
        model
        if isinstance(model, ServingPlan)
        else ServingPlan.from_bundle(model, trust_key=trust_key, allow_unsigned=allow_unsigned)
    )
    plan = plan.with_replicas(replicas)
    plan.verify()
    make_launcher: Callable[[WorkerOptions], Launcher] = LocalLauncher
    if opts.static_workers is not None:
        from terrazzo.runtime.static_launcher import StaticLauncher

        workers = opts.static_workers
        # one replica per given address; check() names stages without any
        plan = replace(
            plan,
            stages=tuple(
                replace(s, replicas=len(opts.static_workers.get(s.index, ())) or s.replicas)
                for s in plan.stages
            ),
        )
        if opts.internal_tls:
            raise ServingError(
                "--internal-tls covers workers this gateway starts; for --worker, protect the "
                "hop with the network (a NetworkPolicy or a service mesh's mTLS)"
            )
        StaticLauncher(workers).check(plan.stages)
        # Their own supervisor (Kubernetes) restarts them, however long it takes: never give up
        # on a replica; a restart here is a handshake with whatever answers at the address.
        opts = dataclasses.replace(opts, max_restarts=1 << 30)

        def make_launcher(wopts: WorkerOptions) -> Launcher:
            return StaticLauncher(workers, wopts.token)

    elif ray_address:
        from terrazzo.runtime.ray_launcher import RayLauncher

        def make_launcher(wopts: WorkerOptions) -> Launcher:
            return RayLauncher(ray_address, wopts)

    if ray_address:  # workers on other hosts: the hop is mTLS, and that is not optional
        opts = dataclasses.replace(opts, internal_tls=True)
    server = Server(plan, opts, make_launcher, shm_registry, server_settings)
    try:
        server._start()
    except BaseException:
        server.stop(drain_timeout_s=0)
        raise
    return server
