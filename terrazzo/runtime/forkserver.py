"""Fork server of the local launcher: imports TVM and the worker code once, then forks stage workers.

Importing TVM costs each worker process seconds of CPU; on a small machine starting N workers
that each import it is what makes ``terrazzo serve`` slow to become ready. The local launcher
therefore starts one fork server per ``serve`` (``python -m terrazzo.runtime.forkserver FD``),
which preloads TVM, the bundle reader and the runners with torch/onnx made unimportable (only
built-in runner factories go through it), and then forks one child per requested replica. The
launcher sends each request over a Unix ``SOCK_SEQPACKET`` socket together with the two pipe
ends that become the child's stdin and stdout (``socket.send_fds``); the fork server answers
the child's pid. The child then behaves exactly like a spawned worker: it reads its JSON
config from stdin, prints ``TERRAZZO_WORKER_READY <port>`` and exits when stdin closes. The fork
server reaps children as they exit (so a killed worker is seen dead at once), remembers their
exit status (``status <pid>`` asks for it: the supervisor names it when it gives up on a
crash-looping worker) and exits when the launcher closes the socket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import traceback

READY_MESSAGE = b"TERRAZZO_FORKSERVER_READY"
_MAX_MESSAGE = 1 << 16
_MAX_STATUSES = 4096
_statuses: dict[int, int] = {}  # pid -> exit code (negative: killed by that signal)


def _reap(*_: object) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if len(_statuses) >= _MAX_STATUSES:
            _statuses.pop(next(iter(_statuses)))
        _statuses[pid] = os.waitstatus_to_exitcode(status)


def preload() -> None:
    """Import what every built-in stage worker needs, with the heavy frameworks blocked."""
    from terrazzo.runtime.runners import block_heavy_imports

    block_heavy_imports("terrazzo.runtime.runners:bundle_stage")
    # gRPC is imported by each child, after the fork: its core must not be initialised before one
    import tvm  # noqa: F401  the expensive import this process exists to share
    import tvm.runtime.vm  # noqa: F401  the Relax VM lives in the runtime (no compiler needed)

    import terrazzo.bundle  # noqa: F401  (its __init__ loads the stage runner)
    import terrazzo.runtime.runners  # noqa: F401


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this worker when the fork server ends (it ends when the gateway does, even
    by SIGKILL), so no worker outlives its gateway, not even a SIGSTOPped one."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker still exits when stdin closes
        return
    if os.getppid() != parent:  # the fork server ended before prctl took effect
        os._exit(1)


def _child(fds: list[int], parent: int) -> int:
    """In the forked child: adopt the two pipe ends as stdin/stdout and run the worker."""
    _die_with_parent(parent)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.dup2(fds[0], 0)
    os.dup2(fds[1], 1)
    for fd in fds:
        os.close(fd)
    sys.stdin = os.fdopen(0, "r", encoding="utf-8")
    sys.stdout = os.fdopen(1, "w", encoding="utf-8", buffering=1)
    from terrazzo.runtime.worker import main as worker_main

    return worker_main()


def main() -> None:
    """Entry point: ``python -m terrazzo.runtime.forkserver FD`` (FD: the launcher's socket end); never returns."""
    signal.signal(
        signal.SIGINT, signal.SIG_IGN
    )  # Ctrl-C is the launcher's to handle; it closes our socket
    sock = socket.socket(fileno=int(sys.argv[1]))
    preload()
    signal.signal(signal.SIGCHLD, _reap)
    sock.send(READY_MESSAGE)
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MESSAGE, 2)
        except OSError:
            break
        if not msg:
            break  # the launcher closed its end
        if msg.startswith(b"status ") and not fds:
            _reap()  # a SIGCHLD may still be pending
            sock.send(json.dumps({"status": _statuses.get(int(msg.split()[1]))}).encode())
            continue
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            sock.send(
                json.dumps({"error": f"expected 2 file descriptors, got {len(fds)}"}).encode()
            )
            continue
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                sock.close()
                code = _child(fds, me)
            except BaseException:  # the worker's error goes to stderr, as a spawned worker's would
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps({"pid": pid}).encode())
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown (TVM's takes seconds); nothing is left to flush


if __name__ == "__main__":
    main()
