"""Starting stage workers: as local processes on loopback (default) or as Ray actors.

A launcher turns a ``StageSpec`` replica into a ``WorkerHandle`` (address + liveness + kill);
the gateway talks gRPC to every worker the same way, wherever it runs.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol

from terrazzo.errors import ServingError
from terrazzo.runtime.plan import StageSpec
from terrazzo.runtime.worker import READY_PREFIX


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """What every worker gets: the internal token, message limit, queue bound, start timeout."""

    token: str
    max_message_bytes: int
    max_queue: int = 64
    start_timeout_s: float = 120.0


def worker_config(stage: StageSpec, opts: WorkerOptions, host: str = "127.0.0.1") -> dict[str, Any]:
    """The JSON config a worker reads (it carries the internal token, so it never goes in argv)."""
    return {
        "stage": {
            "index": stage.index,
            "inputs": list(stage.inputs),
            "outputs": list(stage.outputs),
            "runner": stage.runner.to_json(),
        },
        "token": opts.token,
        "max_message_bytes": opts.max_message_bytes,
        "max_queue": opts.max_queue,
        "host": host,
    }


class WorkerHandle(Protocol):
    """A started worker: where it listens, whether it still lives, how to end it."""

    name: str
    address: str
    where: str

    def alive(self) -> bool: ...
    def kill(self) -> None: ...
    def stop(self) -> None: ...


class Launcher(Protocol):
    """Starts stage replicas; ``start_many`` starts several concurrently."""

    def check(self, stages: tuple[StageSpec, ...]) -> None: ...
    def start_many(self, jobs: list[tuple[StageSpec, int]]) -> list[WorkerHandle]: ...
    def close(self) -> None: ...


_WORKER_MAIN = "import sys; from terrazzo.runtime.worker import main; sys.exit(main())"


class LocalWorker:
    """A worker running as a child process on this machine."""

    def __init__(self, name: str, proc: subprocess.Popen[str]):
        self.name = name
        self.proc = proc
        self.address = ""
        self.where = f"pid {proc.pid}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """Close stdin (the worker drains and exits); kill it if it lingers."""
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        if self.proc.stdout:
            self.proc.stdout.close()


class LocalLauncher:
    """Starts each replica as a ``terrazzo.runtime.worker`` child process listening on 127.0.0.1."""

    def __init__(self, opts: WorkerOptions):
        self.opts = opts

    def check(self, stages: tuple[StageSpec, ...]) -> None:
        """Local processes can always start (absent devices run their CPU fallback build)."""

    def _spawn(self, stage: StageSpec, replica: int) -> LocalWorker:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_MAIN],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(worker_config(stage, self.opts)) + "\n")
        proc.stdin.flush()
        return LocalWorker(f"stage{stage.index}/r{replica}", proc)

    def _await_ready(self, workers: list[LocalWorker]) -> None:
        deadline = time.monotonic() + self.opts.start_timeout_s
        sel = selectors.DefaultSelector()
        for w in workers:
            assert w.proc.stdout is not None
            sel.register(w.proc.stdout, selectors.EVENT_READ, w)
        waiting = set(workers)
        try:
            while waiting:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    names = ", ".join(sorted(w.name for w in waiting))
                    raise ServingError(f"workers {names} not ready after {self.opts.start_timeout_s:.0f} s")
                for key, _ in sel.select(timeout=min(remaining, 0.5)):
                    w = key.data
                    line = w.proc.stdout.readline()
                    if line.startswith(READY_PREFIX):
                        w.address = f"127.0.0.1:{int(line.split()[1])}"
                        sel.unregister(w.proc.stdout)
                        waiting.discard(w)
                    elif line == "":
                        sel.unregister(w.proc.stdout)
                        waiting.discard(w)
                        raise ServingError(
                            f"worker {w.name} exited with code {w.proc.wait()} before it was ready "
                            "(its error is on stderr above)"
                        )
        finally:
            sel.close()

    def start_many(self, jobs: list[tuple[StageSpec, int]]) -> list[WorkerHandle]:
        """Spawn all replicas at once and wait until each prints its port."""
        workers = [self._spawn(stage, r) for stage, r in jobs]
        try:
            self._await_ready(workers)
        except BaseException:
            for w in workers:
                w.kill()
            raise
        return list(workers)

    def close(self) -> None:
        """Nothing to release: each worker is stopped through its handle."""
