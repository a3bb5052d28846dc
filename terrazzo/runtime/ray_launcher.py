"""Ray launcher: stage workers as Ray actors, each requesting its device class as ``devclass_<name>``.

The gateway is unchanged: every actor runs the same worker gRPC server and the gateway talks
to it directly. Ray leaves an infeasible actor pending forever, so ``check`` compares the plan
with ``ray.cluster_resources()`` first and fails naming the missing class.

Workers on other hosts always get the mTLS hop (``internal_tls``): each actor makes its own key
and certificate, only certificates cross Ray's channels, and the worker token is not sent. Each
actor keeps its temp files in a private directory that ``stop`` removes before the actor ends.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
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


_PROBE_TIMEOUT_S = 3.0
_INIT_TIMEOUT_S = 8.0  # with the probe: a bad address fails well within 10 s
_local_lock = threading.Lock()
_local_owners = 0  # RayLaunchers using the local cluster this process started (--ray local)


def _probe(address: str) -> None:
    """Fail in one line, within ``_PROBE_TIMEOUT_S``, unless something listens at ``address``
    (``host:port`` or ``ray://host:port``): Ray itself retries a dead GCS for a minute."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ServingError(
            f"--ray {address!r}: expected HOST:PORT of a Ray head (its GCS, `ray start --head` "
            "prints it), ray://HOST:PORT, or 'local' to start a cluster here"
        )
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), _PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise ServingError(
            f"cannot connect to Ray cluster at {address!r}: {e.strerror or e} "
            f"(within {_PROBE_TIMEOUT_S:g} s)"
        ) from None


def _init_with_deadline(**kwargs: Any) -> None:
    """``ray.init`` that gives up after ``_INIT_TIMEOUT_S`` with one line (it may otherwise
    retry for a minute, printing raw GCS warnings)."""
    import ray

    failure: list[BaseException] = []

    def run() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as e:  # handed to the caller's thread
            failure.append(e)

    t = threading.Thread(target=run, name="tz-ray-init", daemon=True)
    t.start()
    t.join(_INIT_TIMEOUT_S)
    where = kwargs.get("address")
    if t.is_alive():
        raise ServingError(
            f"cannot connect to Ray cluster at {where!r}: no answer within {_INIT_TIMEOUT_S:g} s"
        )
    if failure:
        first = str(failure[0]).strip().splitlines()
        raise ServingError(
            f"cannot connect to Ray cluster at {where!r}: {first[0] if first else failure[0]!r}"
        )


def actor_resources(stage: StageSpec) -> dict[str, Any]:
    """What one worker actor of ``stage`` declares to Ray: a real CPU, a GPU when its build
    targets one, memory for its bundle, and one ``devclass_<name>`` unit for placement."""
    target = stage.target.lower()
    gpu = stage.fallback_reason is None and target.startswith(("cuda", "rocm"))
    path = stage.runner.kwargs.get("path") if stage.runner.kwargs else None
    size = 0
    if isinstance(path, str):
        try:
            size = os.path.getsize(path)
        except OSError:
            size = 0
    return {
        "num_cpus": 1,
        "num_gpus": 1 if gpu else 0,
        # the stage's share of the bundle (weights, libraries) mapped twice at most, plus the
        # interpreter and gRPC server (measured ~150 MiB RSS for a worker)
        "memory": (256 << 20) + 2 * size,
        "resources": {stage.resource_name: 1},
    }


class RayLauncher:
    """Places stage replicas on a Ray cluster.

    ``address``: ``HOST:PORT`` / ``ray://HOST:PORT`` of a running cluster (probed first: a bad
    address fails within 10 s in one line), or ``local``: start a private cluster in this
    process declaring this host's CPUs and one ``devclass_<name>`` unit per replica of the plan,
    and stop it on ``close``. ``auto`` is refused (it attaches to whatever cluster happens to run
    on the host) unless this process already called ``ray.init`` itself, in which case that
    connection is used.
    """

    def __init__(self, address: str, opts: WorkerOptions):
        if opts.tls is None:  # workers on other hosts: never a plaintext hop
            raise ServingError("the Ray launcher needs the mTLS worker hop (WorkerOptions.tls)")
        self.opts = opts
        self.address = address
        self._owns_local = False
        self._actor_cls: Any = None

    def _connect(self, stages: tuple[StageSpec, ...]) -> None:
        global _local_owners
        import ray

        if self._actor_cls is not None:
            return
        if self.address == "local":
            with _local_lock:
                if _local_owners == 0:
                    if ray.is_initialized():
                        raise ServingError(
                            "--ray local: this process is already connected to a Ray cluster"
                        )
                    need: Counter[str] = Counter()
                    for s in stages:
                        need[s.resource_name] += s.replicas
                    ray.init(
                        address="local",
                        num_cpus=max(os.cpu_count() or 1, sum(need.values())),
                        resources=dict(need),
                        include_dashboard=False,
                        log_to_driver=False,
                        logging_level=logging.ERROR,
                    )
                _local_owners += 1
                self._owns_local = True
        elif ray.is_initialized():
            current = ray.get_runtime_context().gcs_address
            if self.address != "auto" and self.address.split("://", 1)[-1] != current:
                raise ServingError(
                    f"--ray {self.address!r}: this process is already connected to the Ray "
                    f"cluster at {current!r}"
                )
        else:
            if self.address == "auto":
                raise ServingError(
                    "--ray auto would attach to whatever Ray cluster runs on this host; name it: "
                    "--ray HOST:PORT (or ray://HOST:PORT), or --ray local to start one here"
                )
            _probe(self.address)
            _init_with_deadline(
                address=self.address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
        self._actor_cls = ray.remote(_ActorBody)

    def check(self, stages: tuple[StageSpec, ...]) -> None:
        """Connect, then fail fast when the cluster lacks a device class the plan needs (Ray
        would wait forever)."""
        import ray

        self._connect(stages)
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
                f"it offers {', '.join(offered)} (declare them: ray start --resources "
                "'{\"devclass_<name>\": N}')"
            )

    def start_many(self, jobs: list[tuple[StageSpec, int]]) -> list[WorkerHandle]:
        """Create one actor per replica and wait until each serves."""
        import ray

        self._connect(tuple(stage for stage, _ in jobs))
        actors: list[tuple[StageSpec, int, Any]] = []  # remote methods are dynamic
        for stage, r in jobs:
            actor = self._actor_cls.options(
                **actor_resources(stage), max_restarts=0, name=None
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
        """Stop the local cluster when this was its last user; leave any other connection to
        whoever opened it."""
        global _local_owners
        if not self._owns_local:
            return
        self._owns_local = False
        with _local_lock:
            _local_owners -= 1
            if _local_owners == 0:
                import ray

                ray.shutdown()
