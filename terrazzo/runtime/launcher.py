"""Starting stage workers: as local processes on loopback (default) or as Ray actors.

A launcher turns a ``StageSpec`` replica into a ``WorkerHandle`` (address + liveness + kill);
the gateway talks gRPC to every worker the same way, wherever it runs. Locally, replicas of
built-in runners (bundle stages, Relax libraries) are forked from one fork server that imported
TVM once (``terrazzo.runtime.forkserver``); other runners (tools, LLM phases) are spawned as
fresh interpreters.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from terrazzo.errors import ServingError
from terrazzo.runtime.internal_tls import Identity
from terrazzo.runtime.plan import StageSpec
from terrazzo.runtime.rundir import RunDir
from terrazzo.runtime.worker import READY_PREFIX


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """What every worker gets: the internal token, message limit, queue bound, start timeout.

    ``tls`` (the gateway's identity) turns on mTLS for the gateway -> worker hop: only its
    certificate is sent to workers, and the token is then not sent at all. ``run_dir`` holds
    one private temp directory per local worker (removed whatever way the worker ends).
    """

    token: str
    max_message_bytes: int
    max_queue: int = 64
    start_timeout_s: float = 120.0
    fork_server: bool = True
    tls: Identity | None = None
    run_dir: RunDir | None = None
    # dynamic batching (terrazzo.runtime.batcher): {"*" or "<stage index>": options JSON}
    batching: dict[str, Any] | None = None


def worker_config(
    stage: StageSpec, opts: WorkerOptions, host: str = "127.0.0.1", tmpdir: str | None = None
) -> dict[str, Any]:
    """The JSON config a worker reads (it carries the internal token, so it never goes in argv)."""
    config: dict[str, Any] = {
        "stage": {
            "index": stage.index,
            "inputs": list(stage.inputs),
            "outputs": list(stage.outputs),
            "runner": stage.runner.to_json(),
        },
        "token": "" if opts.tls else opts.token,  # with mTLS the client certificate authenticates
        "max_message_bytes": opts.max_message_bytes,
        "max_queue": opts.max_queue,
        "host": host,
    }
    if opts.tls is not None:
        config["tls"] = {"gateway_cert": opts.tls.cert_pem.decode()}
    if tmpdir:
        config["tmpdir"] = tmpdir
    if opts.batching:
        config["batching"] = opts.batching
    return config


class WorkerExitedError(ServingError):
    """A worker process ended before it was ready; ``exit_status`` is its exit code."""

    def __init__(self, message: str, exit_status: int | None):
        super().__init__(message)
        self.exit_status = exit_status


class WorkerHandle(Protocol):
    """A started worker: where it listens, whether it still lives, how to end it.

    ``cert`` is the worker's own TLS certificate when the hop is mTLS (None: plaintext).
    """

    name: str
    address: str
    where: str
    cert: bytes | None

    def alive(self) -> bool: ...
    def kill(self) -> None: ...
    def stop(self) -> None: ...
    def exit_status(self) -> int | None: ...


class Launcher(Protocol):
    """Starts stage replicas; ``start_many`` starts several concurrently."""

    def check(self, stages: tuple[StageSpec, ...]) -> None: ...
    def start_many(self, jobs: list[tuple[StageSpec, int]]) -> list[WorkerHandle]: ...
    def close(self) -> None: ...


# Workers leave with os._exit once drained: interpreter teardown with TVM loaded takes seconds.
_WORKER_MAIN = (
    "import os, sys; from terrazzo.runtime.worker import main; rc = main(); "
    "sys.stdout.flush(); sys.stderr.flush(); os._exit(rc)"
)
_FORKSERVER_MAIN = "from terrazzo.runtime.forkserver import main; main()"
_LEAN_FACTORY_PREFIX = "terrazzo.runtime.runners:"


class ForkedProcess:
    """A worker forked by the fork server: the parts of ``subprocess.Popen`` that ``LocalWorker`` uses.

    It is not this process's child (the fork server reaps it), so liveness is ``kill(pid, 0)``
    and the exit code is asked of the fork server (-1 when it cannot tell).
    """

    def __init__(self, pid: int, stdin_fd: int, stdout_fd: int, server: ForkServer | None = None):
        self.pid = pid
        self._server = server
        self.stdin = os.fdopen(stdin_fd, "w", encoding="utf-8")
        self.stdout = os.fdopen(stdout_fd, "r", encoding="utf-8")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                self.returncode = -1
            except PermissionError:  # the pid was reused by someone else's process
                self.returncode = -1
            if self.returncode is not None and self._server is not None:
                code = self._server.status(self.pid)
                self.returncode = -1 if code is None else code
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() >= end:
                raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout or 0.0)
            time.sleep(0.01)
        return self.returncode if self.returncode is not None else -1


class ForkServer:
    """One ``terrazzo.runtime.forkserver`` process: TVM imported once, workers forked from it."""

    def __init__(self, start_timeout_s: float):
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _FORKSERVER_MAIN, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        theirs.close()
        self._lock = threading.Lock()
        self._sock.settimeout(start_timeout_s)
        try:
            msg = self._sock.recv(1 << 16)
        except OSError as e:
            self.close()
            raise ServingError(
                f"the worker fork server did not start within {start_timeout_s:.0f} s: {e}"
            ) from e
        if not msg:
            code = self.proc.wait()
            raise ServingError(
                f"the worker fork server exited with code {code} (its error is on stderr above)"
            )
        self._sock.settimeout(30.0)

    def fork(self) -> ForkedProcess:
        """Fork one worker; it gets fresh pipes as stdin and stdout."""
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            with self._lock:
                socket.send_fds(self._sock, [b"fork"], [in_r, out_w])
                reply = json.loads(self._sock.recv(1 << 16) or b"{}")
        except (OSError, ValueError) as e:
            for fd in (in_w, out_r):
                os.close(fd)
            raise ServingError(f"the worker fork server failed: {e}") from e
        finally:
            os.close(in_r)
            os.close(out_w)
        if "pid" not in reply:
            os.close(in_w)
            os.close(out_r)
            raise ServingError(f"the worker fork server refused: {reply.get('error', 'no answer')}")
        return ForkedProcess(int(reply["pid"]), in_w, out_r, self)

    def status(self, pid: int) -> int | None:
        """Exit code of a forked worker that has ended (negative: its signal), None if unknown."""
        try:
            with self._lock:
                self._sock.send(f"status {pid}".encode())
                reply = json.loads(self._sock.recv(1 << 16) or b"{}")
        except (OSError, ValueError):
            return None
        code = reply.get("status")
        return int(code) if isinstance(code, int) else None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """Close the socket (the fork server exits); the forked workers are stopped by their handles."""
        self._sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class LocalWorker:
    """A worker running as a child process on this machine; its temp dir goes when it does."""

    def __init__(
        self, name: str, proc: subprocess.Popen[str] | ForkedProcess, tmpdir: str | None = None
    ):
        self.name = name
        self.proc = proc
        self.address = ""
        self.where = f"pid {proc.pid}"
        self.cert: bytes | None = None
        self.tmpdir = tmpdir

    def exit_status(self) -> int | None:
        """Exit code once ended (negative: killed by that signal), None while it runs."""
        return self.proc.poll()

    def _cleanup(self) -> None:
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (it also ends a SIGSTOPped process), wait for it, remove its temp dir."""
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        self._cleanup()

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
        self._cleanup()


class LocalLauncher:
    """Starts each replica as a ``terrazzo.runtime.worker`` child process listening on 127.0.0.1."""

    def __init__(self, opts: WorkerOptions):
        self.opts = opts
        self._fork_server: ForkServer | None = None
        self._fork_lock = threading.Lock()

    def check(self, stages: tuple[StageSpec, ...]) -> None:
        """Local processes can always start (absent devices run their CPU fallback build)."""

    def _forker(self) -> ForkServer:
        with self._fork_lock:
            if self._fork_server is None or not self._fork_server.alive():
                self._fork_server = ForkServer(self.opts.start_timeout_s)
            return self._fork_server

    def _spawn(self, stage: StageSpec, replica: int) -> LocalWorker:
        proc: subprocess.Popen[str] | ForkedProcess
        if self.opts.fork_server and stage.runner.factory.startswith(_LEAN_FACTORY_PREFIX):
            proc = (
                self._forker().fork()
            )  # built-in runners: fork from the process that imported TVM
        else:
            env = dict(os.environ)
            env.setdefault("PYTHONUNBUFFERED", "1")
            proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_MAIN],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
        name = f"stage{stage.index}/r{replica}"
        tmpdir = self.opts.run_dir.worker_dir(name) if self.opts.run_dir else None
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(worker_config(stage, self.opts, tmpdir=tmpdir)) + "\n")
        proc.stdin.flush()
        return LocalWorker(name, proc, tmpdir)

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
                    raise ServingError(
                        f"workers {names} not ready after {self.opts.start_timeout_s:.0f} s"
                    )
                for key, _ in sel.select(timeout=min(remaining, 0.5)):
                    w = key.data
                    line = w.proc.stdout.readline()
                    if line.startswith(READY_PREFIX):
                        parts = line.split()
                        w.address = f"127.0.0.1:{int(parts[1])}"
                        if len(parts) > 2:
                            w.cert = base64.b64decode(parts[2])
                        sel.unregister(w.proc.stdout)
                        waiting.discard(w)
                    elif line == "":
                        sel.unregister(w.proc.stdout)
                        waiting.discard(w)
                        code = w.proc.wait()
                        raise WorkerExitedError(
                            f"worker {w.name} exited with code {code} before it was ready "
                            "(its error is on stderr above)",
                            code,
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
        """Stop the fork server (each worker is stopped through its handle)."""
        with self._fork_lock:
            if self._fork_server is not None:
                self._fork_server.close()
                self._fork_server = None
