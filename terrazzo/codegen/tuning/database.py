"""The tuning database: best schedule program per (workload hash, target), as JSON lines.

Sits between the schedule search (which writes records) and codegen (which calls
:func:`apply_tuning` before ``tvm.compile``); the same JSONL text is carried in bundles as
``records.jsonl``. Records are data (schedule programs), so a database from an untrusted
bundle can be applied without executing anything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from terrazzo.errors import TuningError

FORMAT_VERSION = 1
#: Target attributes that change code generation enough to separate records.
_TARGET_KEY_ATTRS = ("mcpu", "mtriple", "mattr", "arch", "mabi")


#: ``/proc/cpuinfo`` flags that change what a CPU kernel compiles to or how fast it runs.
_ISA_FLAG_PREFIXES = ("avx", "sse", "ssse", "fma", "f16c", "amx", "bmi", "popcnt", "vnni")


@functools.cache
def cpu_fingerprint() -> str:
    """This machine's CPU identity for tuning records: ``"<model name>|<isa hash>"``.

    The model name and a hash of the ISA flags (AVX*, SSE*, FMA, AMX, ...) in
    ``/proc/cpuinfo``. Part of every CPU record's key (:func:`target_key`), because a record
    is a measurement on the CPU it ran on: the build target's ``-mcpu`` alone does not name
    the machine (two hosts differing in AVX-512 or cache sizes can share a target string,
    and one machine's ``-mcpu`` is another's illegal instruction), so a different CPU finds
    no records and retunes. ``"unknown"`` where ``/proc/cpuinfo`` cannot be read.
    """
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = value
                if model and flags:
                    break
    except OSError:
        return "unknown"
    isa = sorted(f for f in flags.split() if f.startswith(_ISA_FLAG_PREFIXES))
    digest = hashlib.sha256(" ".join(isa).encode()).hexdigest()[:12]
    return f"{model or 'unknown'}|{digest}"


def cpu_threads() -> int:
    """The number of threads TVM's CPU thread pool uses in this process.

    ``TVM_NUM_THREADS`` (then ``OMP_NUM_THREADS``) when set, as TVM reads them; otherwise TVM's
    own default, which on x86 is *half* the logical CPUs (it assumes hyper-threading: on a
    2-vCPU machine without SMT that is 1 thread). Set ``TVM_NUM_THREADS`` to the serving thread
    count before ``terrazzo tune`` and keep it for ``compile`` and ``run``.
    """
    for var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    import tvm

    num_threads = tvm.get_global_func("runtime.NumThreads", True)
    return max(1, int(num_threads())) if num_threads is not None else 1


def target_key(target: Any) -> str:
    """Canonical text naming a target for the database (kind + CPU/GPU identity).

    CPU (``llvm``) keys also carry :func:`cpu_fingerprint` of the machine that measured and
    :func:`cpu_threads`, the thread count it measured with: a schedule tuned single-threaded
    is serial (a parallel loop only costs there) and cannot use a second core, so a build for
    another thread count finds no records and retunes.
    """
    import tvm

    if isinstance(target, Mapping):
        target = tvm.target.Target(dict(target))
    elif isinstance(target, str):
        target = tvm.target.Target({"kind": target})
    parts = {"kind": str(target.kind.name)}
    attrs = target.attrs
    for k in _TARGET_KEY_ATTRS:
        if k in attrs:
            v = attrs[k]
            parts[k] = (
                ",".join(str(x) for x in v)
                if not isinstance(v, str) and hasattr(v, "__iter__")
                else str(v)
            )
    if parts["kind"] in ("llvm", "c"):
        parts["host_cpu"] = cpu_fingerprint()
        parts["threads"] = str(cpu_threads())
    return json.dumps(parts, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class TuningRecord:
    """One measured schedule: the program (JSON text) and how fast it ran."""

    workload_hash: str
    target_key: str
    program_json: str
    latency_s: float
    kernel_name: str = ""
    kernel_class: str = ""
    baseline_latency_s: float | None = None
    proposer: str = ""
    trials: int = 0
    created_unix_s: float = field(default_factory=time.time)
    version: int = FORMAT_VERSION
    #: 1-minute load average when the record was measured (None: not recorded)
    load_avg_1m: float | None = None
    #: the median latencies of the finalists re-timed interleaved, fastest first (seconds)
    finalists_s: tuple[float, ...] = ()

    def to_json(self) -> str:
        """One JSON line (stable key order)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @staticmethod
    def from_json(line: str) -> TuningRecord:
        """Parse one JSON line, checking fields and types.

        Raises:
            TuningError: the line is not a valid record.
        """
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise TuningError(f"tuning record is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise TuningError("tuning record must be a JSON object")
        try:
            if isinstance(data.get("finalists_s"), list):
                data["finalists_s"] = tuple(data["finalists_s"])
            rec = TuningRecord(**data)
        except TypeError as e:
            raise TuningError(f"tuning record has wrong fields: {e}") from None
        if not isinstance(rec.latency_s, int | float) or rec.latency_s <= 0:
            raise TuningError(f"tuning record latency_s must be positive, found {rec.latency_s!r}")
        if rec.version != FORMAT_VERSION:
            raise TuningError(f"tuning record version {rec.version}, expected {FORMAT_VERSION}")
        return rec


class TuningDatabase:
    """In-memory best record per (workload hash, target key), optionally backed by a JSONL file.

    ``add`` keeps the faster of two records for the same key; ``save`` rewrites the file
    atomically with one line per key.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._best: dict[tuple[str, str], TuningRecord] = {}
        if self.path is not None and self.path.exists():
            self.extend(_read_lines(self.path.read_text(encoding="utf-8"), str(self.path)))

    def __len__(self) -> int:
        return len(self._best)

    def __iter__(self) -> Iterator[TuningRecord]:
        return iter(sorted(self._best.values(), key=lambda r: (r.target_key, r.workload_hash)))

    def add(self, record: TuningRecord) -> bool:
        """Insert ``record``; returns True when it became the best for its key."""
        key = (record.workload_hash, record.target_key)
        cur = self._best.get(key)
        if cur is None or record.latency_s < cur.latency_s:
            self._best[key] = record
            return True
        return False

    def extend(self, records: Iterable[TuningRecord]) -> None:
        for r in records:
            self.add(r)

    def lookup(self, workload_hash: str, target: Any) -> TuningRecord | None:
        """Best record for a workload on a target (a Target, dict, or a target_key string)."""
        key = target if isinstance(target, str) and target.startswith("{") else target_key(target)
        return self._best.get((workload_hash, key))

    def to_jsonl(self) -> str:
        """The database as JSON lines (the bundle member ``records.jsonl``)."""
        return "".join(r.to_json() + "\n" for r in self)

    @staticmethod
    def from_jsonl(text: str, where: str = "records.jsonl") -> TuningDatabase:
        """Parse JSON lines (e.g. a bundle's ``records.jsonl``) into a database."""
        db = TuningDatabase()
        db.extend(_read_lines(text, where))
        return db

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write atomically to ``path`` (default: the database's own path)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise TuningError("tuning database has no path to save to")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".records.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(self.to_jsonl())
        os.replace(tmp, target)
        return target


def _read_lines(text: str, where: str) -> list[TuningRecord]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(TuningRecord.from_json(line))
        except TuningError as e:
            raise TuningError(f"{where}:{n}: {e}") from None
    return out


def default_database_path() -> Path:
    """Per-user cache location of the tuning database."""
    from terrazzo.codegen.tuning.config import cache_dir

    return cache_dir() / "tuning" / "records.jsonl"


def apply_tuning(mod: Any, target: Any, db: TuningDatabase | None) -> Any:
    """Schedule every PrimFunc of ``mod`` that has a record for ``target`` in ``db``.

    Codegen calls this after LegalizeOps/FuseOps/FuseTIR and before ``tvm.compile``. A record
    whose program no longer applies (the kernel changed) is skipped with a warning.

    Args:
        mod: an IRModule holding Relax functions and PrimFuncs.
        target: a ``tvm.target.Target`` (or its dict form).
        db: the tuning database; None returns ``mod`` unchanged.

    Returns:
        A new IRModule with tuned PrimFuncs replaced (``tirx.is_scheduled`` set on them).
    """
    from tvm import tirx

    from terrazzo.codegen.tuning.kernel import workload_hash
    from terrazzo.codegen.tuning.program import (
        ScheduleProgramError,
        apply_program,
        parse_program,
    )

    if db is None or len(db) == 0:
        return mod
    key = target_key(target)
    out = mod.clone() if hasattr(mod, "clone") else mod
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc):
            continue
        rec = db.lookup(workload_hash(func), key)
        if rec is None:
            continue
        try:
            scheduled = apply_program(func, parse_program(rec.program_json))
        except ScheduleProgramError as e:
            warnings.warn(
                f"tuning record for {gv.name_hint} ({rec.workload_hash}) no longer applies: {e}",
                stacklevel=2,
            )
            continue
        out.update_func(gv, scheduled.with_attr("tirx.is_scheduled", True))
    return out


__all__ = [
    "TuningDatabase",
    "TuningRecord",
    "apply_tuning",
    "cpu_fingerprint",
    "default_database_path",
    "target_key",
]
