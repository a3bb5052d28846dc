"""Ray launcher: stage workers as Ray actors, each requesting its device class as ``devclass_<name>``.

The gateway is unchanged: every actor runs the same worker gRPC server and the gateway talks
to it directly. Ray leaves an infeasible actor pending forever, so ``check`` compares the plan
with ``ray.cluster_resources()`` first and fails naming the missing class.

Workers on other hosts always get the mTLS hop (``internal_tls``): each actor makes its own key
and certificate, only certificates cross Ray's channels, and the worker token is not sent. Each
actor keeps its temp files in a private directory that ``stop`` removes before the actor ends.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from typing import Any

from terrazzo.errors import ServingError
from terrazzo.runtime.launcher import WorkerHandle, WorkerOptions, worker_config
from terrazzo.runtime.plan import StageSpec


class _ActorBody:
    """Runs inside the Ray actor process: a WorkerServer bound to the node's address."""

    def __init__(self, config: dict[str, Any]):
        import ray

        from terrazzo.runtime.worker import WorkerServer, block_heavy_imports

        block_heavy_imports(
            str(config["stage"]["runner"]["factory"])
        )  # the actor process is ours alone
        self._tmpdir = tempfile.mkdtemp(prefix="terrazzo-worker-")
        config = dict(config, host=ray.util.get_node_ip_address(), tmpdir=self._tmpdir)
        self._server = WorkerServer(config)
        self._address = f"{config['host']}:{self._server.start()}"

    def address(self) -> tuple[str, bytes | None]:
        return self._address, self._server.cert_pem

    def ping(self) -> bool:
        return True

    def close(self) -> bool:
        """Stop serving and remove this actor's temp files (the actor is killed next)."""
        self._server.stop(1.0)
        shutil.rmtree(self._tmpdir, ignore_errors=True)
        return True


class RayWorker:
    """Handle of a worker actor; liveness is a non-blocking ping polled at most once a second."""

    def __init__(
        self, name: str, actor: Any, address: str, resource: str, cert: bytes | None = None
    ):
        self.name = name
        self.actor = actor
        self.address = address
        self.cert = cert
        self.where = f"ray actor ({resource})"
        self._dead = False
        self._ping: Any = None
        self._ping_sent = 0.0

    def alive(self) -> bool:
        import ray

        if self._dead:
            return False
        now = time.monotonic()
        if self._ping is not None:
            ready, _ = ray.wait([self._ping], timeout=0)
            if ready:
                try:
                    ray.get(ready[0])
                except Exception:
                    self._dead = True
                    return False
                self._ping = None
            elif now - self._ping_sent > 5.0:
                self._dead = True
                return False
        if self._ping is None and now - self._ping_sent > 1.0:
            self._ping, self._ping_sent = self.actor.ping.remote(), now
        return True

    def kill(self) -> None:
        import ray

        self._dead = True
        ray.kill(self.actor, no_restart=True)

    def stop(self) -> None:
        import ray

        if not self._dead:
            try:
                ray.get(self.actor.close.remote(), timeout=10)
            except Exception:  # already gone or hung: the kill below ends it
                pass
        self.kill()

    def exit_status(self) -> int | None:
        return None


class RayLauncher:
    """Places stage replicas on a Ray cluster (``address``: "auto", "ray://..." or "host:port")."""

    def __init__(self, address: str, opts: WorkerOptions):
        import ray

        if opts.tls is None:  # workers on other hosts: never a plaintext hop
            raise ServingError("the Ray launcher needs the mTLS worker hop (WorkerOptions.tls)")
        self.opts = opts
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except Exception as e:  # ConnectionError and friends, with Ray's own message
                raise ServingError(f"cannot connect to Ray cluster at {address!r}: {e}") from e
        self._actor_cls = ray.remote(_ActorBody)

    def check(self, stages: tuple[StageSpec, ...]) -> None:
        """Fail fast when the cluster lacks a device class the plan needs (Ray would wait forever)."""
        import ray

        have = ray.cluster_resources()
        need: Counter[str] = Counter()
        for s in stages:
            need[s.resource_name] += s.replicas
        short = [
            f"{res} (need {n}, cluster has {have.get(res, 0):g})"
            for res, n in sorted(need.items())
            if have.get(res, 0) < n
        ]
        if short:
            offered = sorted(k for k in have if k.startswith("devclass_")) or ["none"]
            raise ServingError(
                f"the Ray cluster lacks device class resources: {', '.join(short)}; "
                f"it offers {', '.join(offered)}"
            )

    def start_many(self, jobs: list[tuple[StageSpec, int]]) -> list[WorkerHandle]:
        """Create one actor per replica and wait until each serves."""
        import ray

        actors: list[
            tuple[StageSpec, int, Any]
        ] = []  # Ray actor handles: remote methods are dynamic
        for stage, r in jobs:
            actor = self._actor_cls.options(
                num_cpus=0,
                resources={stage.resource_name: 1},
                max_restarts=0,
                name=None,
            ).remote(worker_config(stage, self.opts))
            actors.append((stage, r, actor))
        try:
            addresses = ray.get(
                [a.address.remote() for _, _, a in actors], timeout=self.opts.start_timeout_s
            )
        except Exception as e:
            for _, _, a in actors:
                ray.kill(a, no_restart=True)
            raise ServingError(f"Ray worker actors did not start: {e}") from e
        return [
            RayWorker(f"stage{s.index}/r{r}", a, addr, s.resource_name, cert)
            for (s, r, a), (addr, cert) in zip(actors, addresses, strict=True)
        ]

    def close(self) -> None:
        """Leave the cluster connection to whoever opened it."""
