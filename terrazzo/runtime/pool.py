"""Replica pools of the gateway: which workers serve a stage, which are healthy, which is least busy."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import grpc

from terrazzo.runtime.launcher import WorkerHandle
from terrazzo.runtime.metrics import RuntimeMetrics
from terrazzo.runtime.plan import StageSpec
from terrazzo.runtime.protos import grpc_service_pb2_grpc as pb_grpc
from terrazzo.runtime.protos import health_pb2, health_pb2_grpc
from terrazzo.runtime.worker import grpc_options


@dataclass(eq=False)
class Replica:
    """One stage replica as the gateway sees it (mutable: health and load change)."""

    stage: StageSpec
    index: int
    handle: WorkerHandle | None = None
    channel: grpc.Channel | None = None
    stub: pb_grpc.GRPCInferenceServiceStub | None = None
    healthy: bool = False
    outstanding: int = 0
    restarting: bool = False
    restarts: int = 0
    served: int = 0
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"stage{self.stage.index}/r{self.index}"

    def attach(self, handle: WorkerHandle, max_message_bytes: int) -> None:
        """Point this replica at a (new) worker; it stays unhealthy until probed."""
        self.detach()
        self.handle = handle
        self.channel = grpc.insecure_channel(
            handle.address, options=grpc_options(max_message_bytes)
        )
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def detach(self) -> None:
        self.healthy = False
        if self.channel is not None:
            self.channel.close()
        self.channel = None
        self.stub = None

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


class ReplicaPool:
    """The replicas of one stage, with least-outstanding-requests selection."""

    def __init__(self, stage: StageSpec, metrics: RuntimeMetrics):
        self.stage = stage
        self.replicas = [Replica(stage, r) for r in range(stage.replicas)]
        self._lock = threading.Lock()
        self._metrics = metrics
        self._rr = 0

    def _labels(self, rep: Replica) -> dict[str, str]:
        return {
            "stage": str(self.stage.index),
            "replica": str(rep.index),
            "device": self.stage.device,
        }

    def healthy_count(self) -> int:
        with self._lock:
            return sum(r.healthy for r in self.replicas)

    def acquire(self) -> Replica | None:
        """Pick the healthy replica with the fewest outstanding requests and count one more on it."""
        with self._lock:
            n = len(self.replicas)
            self._rr = (self._rr + 1) % n
            order = self.replicas[self._rr :] + self.replicas[: self._rr]  # round-robin among ties
            candidates = [r for r in order if r.healthy and r.stub is not None]
            if not candidates:
                return None
            best = min(candidates, key=lambda r: r.outstanding)
            best.outstanding += 1
            self._metrics.worker_outstanding.labels(**self._labels(best)).set(best.outstanding)
            return best

    def release(self, rep: Replica, ok: bool) -> None:
        with self._lock:
            rep.outstanding -= 1
            rep.served += int(ok)
            self._metrics.worker_outstanding.labels(**self._labels(rep)).set(rep.outstanding)

    def set_healthy(self, rep: Replica, healthy: bool) -> None:
        with self._lock:
            rep.healthy = healthy
        self._metrics.worker_up.labels(**self._labels(rep)).set(1 if healthy else 0)
