"""The run directory of one ``serve``: every temp file of the gateway's workers lives under it.

``<tmp>/terrazzo-serve-<pid>-<random>/`` holds ``owner.json`` (the gateway's pid and process
start time) and one sub-directory per started worker (its ``tempfile.tempdir``: the worker's
extracted bundle goes there). Whoever ends a worker removes its sub-directory (workers leave
with ``os._exit``, which runs no cleanup); ``Server.stop`` removes the whole run directory; and
every new run directory is created after a sweep that removes the run directories whose owner
process is gone (a gateway killed with SIGKILL). A directory whose owner file cannot be read is
left alone unless it is older than a minute (it may be one being created right now).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger("terrazzo.runtime")
PREFIX = "terrazzo-serve-"
_OWNER = "owner.json"
_UNOWNED_GRACE_S = 60.0


def _start_time(pid: int) -> str | None:
    """The process's start time as the kernel records it (guards against pid reuse), or None."""
    try:
        import psutil

        return f"{psutil.Process(pid).create_time():.3f}"
    except Exception:  # gone, or no permission to look: treated as not ours
        return None


def _owner_alive(owner: dict[str, object]) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    started = _start_time(pid)
    return started is not None and started == owner.get("start")


def sweep_stale(base: str | os.PathLike[str] | None = None) -> list[str]:
    """Remove run directories under ``base`` (default: the temp dir) whose gateway is gone."""
    root = Path(base or tempfile.gettempdir())
    removed: list[str] = []
    try:
        candidates = [p for p in root.iterdir() if p.name.startswith(PREFIX) and p.is_dir()]
    except OSError:
        return removed
    for d in candidates:
        try:
            owner = json.loads((d / _OWNER).read_text())
        except (OSError, ValueError):
            try:
                if time.time() - d.stat().st_mtime < _UNOWNED_GRACE_S:
                    continue
            except OSError:
                continue
            owner = {}
        if isinstance(owner, dict) and _owner_alive(owner):
            continue
        shutil.rmtree(d, ignore_errors=True)
        if not d.exists():
            removed.append(str(d))
    if removed:
        log.warning(
            "removed %d run director%s left by gateways that were killed: %s",
            len(removed),
            "y" if len(removed) == 1 else "ies",
            ", ".join(removed),
        )
    return removed


class RunDir:
    """A fresh run directory (stale ones are swept first); ``remove()`` deletes it."""

    def __init__(self, base: str | os.PathLike[str] | None = None):
        self.base = str(base or tempfile.gettempdir())
        self.swept = sweep_stale(self.base)
        pid = os.getpid()
        self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{pid}-", dir=self.base))
        os.chmod(self.path, 0o700)
        owner = {"pid": pid, "start": _start_time(pid)}
        tmp = self.path / (_OWNER + ".tmp")
        tmp.write_text(json.dumps(owner))
        tmp.replace(self.path / _OWNER)

    def worker_dir(self, name: str) -> str:
        """A new private directory for one worker process (``name`` like ``stage0/r1``)."""
        safe = name.replace("/", "-")
        return tempfile.mkdtemp(prefix=f"{safe}-", dir=self.path)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
