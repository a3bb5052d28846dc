"""Serving entry point: start workers, the KServe v2 gateway and /metrics; supervise; drain on stop.

``serve(bundle_or_plan, ...)`` returns a running ``Server``; ``terrazzo serve`` wraps it. A
supervisor thread watches every worker: a dead one is marked down at once (its in-flight
requests fail with UNAVAILABLE, new ones go to other replicas), restarted, health-probed and
put back into rotation.
"""

from __future__ import annotations

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
from terrazzo.runtime.gateway import Gateway, GatewayOptions, HealthService, TokenAuthInterceptor
from terrazzo.runtime.launcher import Launcher, LocalLauncher, WorkerOptions
from terrazzo.runtime.metrics import RuntimeMetrics
from terrazzo.runtime.plan import ServingPlan
from terrazzo.runtime.pool import Replica, ReplicaPool
from terrazzo.runtime.protos import grpc_service_pb2_grpc as pb_grpc
from terrazzo.runtime.protos import health_pb2_grpc
from terrazzo.runtime.worker import grpc_options

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer


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
    """Knobs of a served model (all limits explicit; see DESIGN.md Runtime)."""

    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int | None = None
    replicas: int | None = None
    token: str | None = None
    tls: TLSOptions | None = None
    default_timeout_s: float = 30.0
    max_message_bytes: int = 256 << 20
    max_queue: int = 128
    gateway_threads: int = 32
    drain_timeout_s: float = 30.0
    health_period_s: float = 0.5
    restart_workers: bool = True
    ray_address: str | None = None
    trust_key: Any = None  # what terrazzo.bundle.resolve_trust reads
    # Workers started elsewhere (``terrazzo worker``, e.g. Kubernetes pods): stage -> addresses,
    # and the internal token they were given (default: a fresh random one for local workers).
    static_workers: Mapping[int, tuple[str, ...]] | None = None
    worker_token: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


class Server:
    """A running model server (gateway + workers). Use as a context manager or call ``stop()``."""

    def __init__(
        self,
        plan: ServingPlan,
        opts: ServeOptions,
        make_launcher: Callable[[WorkerOptions], Launcher],
    ):
        self.plan = plan
        self.opts = opts
        self.metrics = RuntimeMetrics()
        self._worker_opts = WorkerOptions(
            token=opts.worker_token or secrets.token_hex(16),
            max_message_bytes=opts.max_message_bytes,
        )
        self._launcher = make_launcher(self._worker_opts)
        self.pools = [ReplicaPool(s, self.metrics) for s in plan.stages]
        self.gateway = Gateway(
            plan,
            self.pools,
            self.metrics,
            GatewayOptions(
                default_timeout_s=opts.default_timeout_s,
                max_queue=opts.max_queue,
                worker_token=self._worker_opts.token,
            ),
        )
        self._stop = threading.Event()
        self._stopped = False
        self._stop_lock = threading.Lock()
        self._grpc: grpc.Server | None = None
        self._metrics_http: WSGIServer | None = None
        self._supervisor: threading.Thread | None = None
        self.port = 0
        self.metrics_port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def _start(self) -> None:
        self._launcher.check(self.plan.stages)
        jobs = [(rep.stage, rep.index) for pool in self.pools for rep in pool.replicas]
        handles = self._launcher.start_many(jobs)
        reps = [rep for pool in self.pools for rep in pool.replicas]
        for rep, handle in zip(reps, handles, strict=True):
            rep.attach(handle, self.opts.max_message_bytes)
        for pool in self.pools:
            for rep in pool.replicas:
                if not rep.probe(timeout_s=30.0):
                    raise ServingError(
                        f"worker {rep.name} started but does not answer health checks"
                    )
                pool.set_healthy(rep, True)
        self._start_grpc()
        if self.opts.metrics_port is not None:
            from prometheus_client import start_http_server

            try:
                self._metrics_http, _ = start_http_server(
                    self.opts.metrics_port, addr=self.opts.host, registry=self.metrics.registry
                )
            except OSError as e:
                raise ServingError(
                    f"cannot serve /metrics on port {self.opts.metrics_port}: {e}"
                ) from e
            self.metrics_port = self._metrics_http.server_port
        self._supervisor = threading.Thread(
            target=self._supervise, name="tz-supervisor", daemon=True
        )
        self._supervisor.start()

    def _start_grpc(self) -> None:
        interceptors = [TokenAuthInterceptor(self.opts.token)] if self.opts.token else []
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.opts.gateway_threads, thread_name_prefix="tz-gateway"
            ),
            options=grpc_options(self.opts.max_message_bytes),
            interceptors=interceptors,
            maximum_concurrent_rpcs=self.opts.max_queue + self.opts.gateway_threads,
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.gateway, server)
        health_pb2_grpc.add_HealthServicer_to_server(HealthService(self.gateway), server)
        address = f"{self.opts.host}:{self.opts.port}"
        try:
            if self.opts.tls is not None:
                tls = self.opts.tls
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
        self._grpc = server
        self.port = port

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
        self._launcher.close()

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
                        "handle": h,
                    }
                )
        return rows

    # -- supervision ---------------------------------------------------------------------
    def _supervise(self) -> None:
        last_probe = 0.0
        while not self._stop.wait(0.05):
            probe_now = time.monotonic() - last_probe >= self.opts.health_period_s
            if probe_now:
                last_probe = time.monotonic()
            for pool in self.pools:
                for rep in pool.replicas:
                    if rep.restarting or rep.handle is None:
                        continue
                    if not rep.handle.alive():
                        pool.set_healthy(rep, False)
                        if self.opts.restart_workers:
                            rep.restarting = True
                            threading.Thread(
                                target=self._restart, args=(pool, rep), daemon=True
                            ).start()
                    elif probe_now and (not rep.healthy or rep.outstanding == 0):
                        pool.set_healthy(rep, rep.probe(timeout_s=1.0))

    def _restart(self, pool: ReplicaPool, rep: Replica) -> None:
        try:
            old = rep.handle
            rep.detach()
            if old is not None:
                old.kill()
            while not self._stop.is_set():
                try:
                    (handle,) = self._launcher.start_many([(pool.stage, rep.index)])
                except ServingError:
                    self._stop.wait(1.0)
                    continue
                if self._stop.is_set():
                    handle.stop()
                    return
                rep.attach(handle, self.opts.max_message_bytes)
                rep.restarts += 1
                self.metrics.worker_restarts.labels(
                    stage=str(pool.stage.index), device=pool.stage.device
                ).inc()
                if rep.probe(timeout_s=30.0):
                    pool.set_healthy(rep, True)
                    return
        finally:
            rep.restarting = False


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
    **options: object,
) -> Server:
    """Serve a .tzb bundle (or a ServingPlan) over KServe v2 gRPC and return the running Server.

    Args:
        model: path of a .tzb bundle (verified before any worker loads it) or a ServingPlan.
        port: gateway port (0 picks a free one; read ``Server.port``).
        metrics_port: port of the Prometheus /metrics endpoint (None: no endpoint; 0: any).
        replicas: replicas per stage, overriding the plan.
        token: require ``authorization: Bearer <token>`` on every inference RPC.
        tls: serve TLS (mTLS when ``tls.client_ca`` is set).
        ray_address: place workers as Ray actors on this cluster ("auto" or an address).
        trust_key: public key(s) the bundle's signature must verify against (default: the
            local trust, ``terrazzo.bundle.resolve_trust``).
        allow_unsigned: serve a bundle that is unsigned or not signed by a trusted key.
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
        StaticLauncher(workers).check(plan.stages)

        def make_launcher(wopts: WorkerOptions) -> Launcher:
            return StaticLauncher(workers, wopts.token)

    elif ray_address:
        from terrazzo.runtime.ray_launcher import RayLauncher

        def make_launcher(wopts: WorkerOptions) -> Launcher:
            return RayLauncher(ray_address, wopts)

    server = Server(plan, opts, make_launcher)
    try:
        server._start()
    except BaseException:
        server.stop(drain_timeout_s=0)
        raise
    return server
