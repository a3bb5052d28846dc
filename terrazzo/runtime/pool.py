"""Replica pools of the gateway: which workers serve a stage, which are healthy, which is least busy.

A replica is taken out of rotation (``condemn``) when its worker died, missed heartbeats or
missed ``deadline_misses`` stage deadlines in a row; condemning cancels the calls still in
flight on it (the gateway retries them on another replica) and the supervisor kills and
restarts the worker.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import grpc

from terrazzo.runtime.internal_tls import Identity, gateway_channel
from terrazzo.runtime.launcher import WorkerHandle
from terrazzo.runtime.metrics import RuntimeMetrics
from terrazzo.runtime.plan import StageSpec
from terrazzo.runtime.protos import grpc_service_pb2_grpc as pb_grpc
from terrazzo.runtime.protos import health_pb2, health_pb2_grpc
from terrazzo.runtime.wire import STAGE_METHOD
from terrazzo.runtime.worker import grpc_options


@dataclass(eq=False)
class Replica:
    """One stage replica as the gateway sees it (mutable: health and load change)."""

    stage: StageSpec
    index: int
    handle: WorkerHandle | None = None
    channel: grpc.Channel | None = None
    stub: pb_grpc.GRPCInferenceServiceStub | None = None
    stage_call: grpc.UnaryUnaryMultiCallable | None = None  # raw stage calls (runtime.wire)
    healthy: bool = False
    outstanding: int = 0
    restarting: bool = False
    restarts: int = 0
    served: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    deadline_misses: int = 0  # consecutive stage calls that missed the stage deadline
    heartbeat_misses: int = 0  # consecutive health probes unanswered in time
    condemned: str | None = None  # why the supervisor must kill and restart it
    gave_up: bool = False  # the supervisor stopped restarting it (crash loop)
    crash_streak: int = 0  # restarts in a row that did not stay up for ``stable_s``
    healthy_since: float = 0.0
    calls: set[grpc.Future] = field(default_factory=set)  # stage calls in flight
    pending_probe: grpc.Future | None = None  # the heartbeat in flight
    probe_sent: float = 0.0

    @property
    def name(self) -> str:
        return f"stage{self.stage.index}/r{self.index}"

    def attach(
        self, handle: WorkerHandle, max_message_bytes: int, tls: Identity | None = None
    ) -> None:
        """Point this replica at a (new) worker; it stays unhealthy until probed."""
        self.detach()
        self.handle = handle
        options: list[tuple[str, object]] = list(grpc_options(max_message_bytes))
        if tls is not None:
            if handle.cert is None:
                raise ValueError(f"worker {handle.name} did not present a TLS certificate")
            self.channel = gateway_channel(handle.address, tls, handle.cert, options)
        else:
            self.channel = grpc.insecure_channel(handle.address, options=options)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.stage_call = self.channel.unary_unary(  # bytes in, bytes out
            STAGE_METHOD, _registered_method=True
        )
        self.deadline_misses = self.heartbeat_misses = 0
        self.condemned = None
        self.pending_probe = None

    def detach(self) -> None:
        self.healthy = False
        if self.channel is not None:
            self.channel.close()
        self.channel = None
        self.stub = None
        self.stage_call = None
        self.pending_probe = None

    def probe(self, timeout_s: float = 2.0) -> bool:
        """gRPC health check of the worker; True when it answers SERVING."""
        if self.channel is None:
            return False
        try:
            resp = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(),
                timeout=timeout_s,
                wait_for_ready=True,  # type: ignore[attr-defined]
            )
        except grpc.RpcError:
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING  # type: ignore[attr-defined]

    def heartbeat(self, timeout_s: float) -> bool | None:
        """Non-blocking heartbeat: start a probe, or collect the one in flight.

        Returns True/False when a probe finished (answered SERVING / failed or timed out), None
        while one is pending or no channel exists.
        """
        if self.channel is None:
            return None
        fut = self.pending_probe
        if fut is None:
            self.pending_probe = health_pb2_grpc.HealthStub(self.channel).Check.future(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
            self.probe_sent = time.monotonic()
            return None
        if not fut.done():
            return None
        self.pending_probe = None
        try:
            resp = fut.result(timeout=0)
        except (grpc.RpcError, grpc.FutureCancelledError):
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING  # type: ignore[attr-defined]


class ReplicaPool:
    """The replicas of one stage, with least-outstanding-requests selection.

    Args:
        stage_timeout_s: server-side deadline of one stage call (see ``ServeOptions``).
        deadline_misses: consecutive missed stage deadlines that condemn a replica.
    """

    def __init__(
        self,
        stage: StageSpec,
        metrics: RuntimeMetrics,
        stage_timeout_s: float = 10.0,
        deadline_misses: int = 3,
    ):
        self.stage = stage
        self.replicas = [Replica(stage, r) for r in range(stage.replicas)]
        self._lock = threading.Lock()
        self._metrics = metrics
        self._rr = 0
        self.stage_timeout_s = stage_timeout_s
        self.max_deadline_misses = deadline_misses

    def _labels(self, rep: Replica) -> dict[str, str]:
        return {
            "stage": str(self.stage.index),
            "replica": str(rep.index),
            "device": self.stage.device,
        }

    def healthy_count(self) -> int:
        with self._lock:
            return sum(r.healthy for r in self.replicas)

    def acquire(self, exclude: Replica | None = None) -> Replica | None:
        """Pick the healthy replica with the fewest outstanding requests and count one more on it."""
        with self._lock:
            n = len(self.replicas)
            self._rr = (self._rr + 1) % n
            order = self.replicas[self._rr :] + self.replicas[: self._rr]  # round-robin among ties
            candidates = [r for r in order if r.healthy and r.stub is not None and r is not exclude]
            if not candidates:
                return None
            best = min(candidates, key=lambda r: r.outstanding)
            best.outstanding += 1
            self._metrics.worker_outstanding.labels(**self._labels(best)).set(best.outstanding)
            return best

    def release(self, rep: Replica, ok: bool, call: grpc.Future | None = None) -> None:
        with self._lock:
            rep.outstanding -= 1
            rep.served += int(ok)
            if ok:
                rep.deadline_misses = 0
            if call is not None:
                rep.calls.discard(call)
            self._metrics.worker_outstanding.labels(**self._labels(rep)).set(rep.outstanding)

    def track(self, rep: Replica, call: grpc.Future) -> bool:
        """Remember a call in flight on ``rep``; False (and nothing kept) when it is condemned."""
        with self._lock:
            if rep.condemned is not None:
                return False
            rep.calls.add(call)
            return True

    def missed_deadline(self, rep: Replica) -> None:
        """Count a missed stage deadline; enough of them in a row condemn the replica."""
        with self._lock:
            rep.deadline_misses += 1
            misses = rep.deadline_misses
        if misses >= self.max_deadline_misses:
            self.condemn(rep, f"missed {misses} stage deadlines of {self.stage_timeout_s:g} s")

    def condemn(self, rep: Replica, reason: str) -> None:
        """Out of rotation now; cancel its calls in flight; the supervisor restarts it."""
        with self._lock:
            if rep.condemned is None:
                rep.condemned = reason
            rep.healthy = False
            calls = list(rep.calls)
            rep.calls.clear()
        self._metrics.worker_up.labels(**self._labels(rep)).set(0)
        for call in calls:
            call.cancel()

    def set_healthy(self, rep: Replica, healthy: bool) -> None:
        with self._lock:
            rep.healthy = healthy
        self._metrics.worker_up.labels(**self._labels(rep)).set(1 if healthy else 0)
