"""Workers started by someone else: a fixed address per stage replica (``serve --worker I=ADDR``).

On Kubernetes every stage replica is a pod (``terrazzo worker``) that Kubernetes starts,
restarts and replaces; the gateway only needs their addresses. A replica that stops answering
health checks is ejected from its pool by the supervisor's probes and re-admitted when it
answers again; nothing here starts or kills processes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import grpc

from terrazzo.errors import ServingError
from terrazzo.runtime.launcher import WorkerHandle
from terrazzo.runtime.plan import StageSpec
from terrazzo.runtime.protos import grpc_service_pb2 as pb
from terrazzo.runtime.protos import grpc_service_pb2_grpc as pb_grpc
from terrazzo.runtime.worker import TOKEN_HEADER


def parse_worker_flags(flags: list[str]) -> dict[int, tuple[str, ...]]:
    """``["0=host:9000", "0=host2:9000", "1=h:9000"]`` → ``{0: ("host:9000", "host2:9000"), 1: ...}``.

    Raises:
        ServingError: a flag that is not ``STAGE=HOST:PORT`` (named).
    """
    out: dict[int, list[str]] = {}
    for flag in flags:
        stage, sep, address = flag.partition("=")
        host, colon, port = address.rpartition(":")
        if not (sep and stage.strip().isdigit() and colon and host and port.isdigit()):
            raise ServingError(f"--worker {flag!r}: expected STAGE=HOST:PORT, e.g. 0=10.0.0.5:9000")
        out.setdefault(int(stage), []).append(address.strip())
    return {k: tuple(v) for k, v in sorted(out.items())}


class RemoteWorker:
    """A worker this process did not start: always 'alive'; health probes decide readiness."""

    def __init__(self, name: str, address: str):
        self.name = name
        self.address = address
        self.where = "remote"
        self.cert: bytes | None = None  # the hop is plaintext (see serve's --internal-tls)

    def alive(self) -> bool:
        return True

    def exit_status(self) -> int | None:
        return None  # never exits as far as this process can tell

    def kill(self) -> None:
        """Nothing to kill: its own supervisor (e.g. Kubernetes) owns the process."""

    def stop(self) -> None:
        """Nothing to stop (see ``kill``)."""


def handshake(address: str, stage: int, token: str, timeout_s: float) -> None:
    """Wait until the worker at ``address`` answers, and check it serves ``stage`` and accepts
    the internal token (its ModelReady is token-checked).

    Raises:
        ServingError: unreachable within ``timeout_s``, another stage, or another token.
    """
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        while True:
            try:
                resp = stub.ModelReady(
                    pb.ModelReadyRequest(name=f"stage{stage}"),
                    metadata=((TOKEN_HEADER, token),),
                    timeout=max(0.1, min(2.0, deadline - time.monotonic())),
                    wait_for_ready=True,
                )
                break
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    raise ServingError(
                        f"worker {address} (stage {stage}) rejects the internal token: give "
                        "it and the gateway the same $TERRAZZO_INTERNAL_TOKEN"
                    ) from None
                if time.monotonic() >= deadline:
                    raise ServingError(
                        f"worker {address} (stage {stage}) does not answer "
                        f"({e.code().name}) after {timeout_s:.0f} s"
                    ) from None
    if not resp.ready:
        raise ServingError(f"worker {address} serves another stage, not stage {stage}")


class StaticLauncher:
    """Hands out the given addresses: replica ``r`` of stage ``i`` is ``workers[i][r]``.

    ``start_many`` admits each address only after a token-checked handshake.
    """

    def __init__(
        self, workers: Mapping[int, tuple[str, ...]], token: str = "", timeout_s: float = 30.0
    ):
        self.workers = dict(workers)
        self.token = token
        self.timeout_s = timeout_s

    def check(self, stages: tuple[StageSpec, ...]) -> None:
        known = {s.index for s in stages}
        unknown = sorted(set(self.workers) - known)
        if unknown:
            raise ServingError(
                f"--worker names stage {unknown[0]}, but the model has stages "
                f"{', '.join(map(str, sorted(known)))}"
            )
        missing = [s.index for s in stages if not self.workers.get(s.index)]
        if missing:
            raise ServingError(
                f"no --worker address for stage {', '.join(map(str, missing))} "
                f"(give one STAGE=HOST:PORT per replica of every stage)"
            )
        for s in stages:
            if s.replicas > len(self.workers[s.index]):
                raise ServingError(
                    f"stage {s.index} has {s.replicas} replicas but "
                    f"{len(self.workers[s.index])} --worker addresses"
                )

    def start_many(self, jobs: list[tuple[StageSpec, int]]) -> list[WorkerHandle]:
        for s, r in jobs:
            handshake(self.workers[s.index][r], s.index, self.token, self.timeout_s)
        return [RemoteWorker(f"stage{s.index}/r{r}", self.workers[s.index][r]) for s, r in jobs]

    def close(self) -> None:
        """The workers outlive the gateway."""
