"""Shared helpers for benchmark scripts: write result JSON with provenance, print a table.

Stable interface (other benchmarks import it): ``write_result(name, rows, extra=None) -> Path``
writes ``benchmarks/results/<name>.json`` with the machine, package versions and git commit;
``print_table(rows, columns, title=None)`` prints rows with rich.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_PACKAGES = (
    "terrazzo",
    "apache-tvm",
    "apache-tvm-ffi",
    "torch",
    "onnx",
    "onnxruntime",
    "numpy",
    "transformers",
    "highspy",
    "scipy",
)


# The instruction-set features that decide kernel speed (recorded, never assumed).
_CPU_FEATURES = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                 "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")  # fmt: skip


def machine_info() -> dict[str, Any]:
    """Platform, CPU model and features, load average, Python and the thread settings."""
    cpu = platform.processor()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == platform.processor():
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "cpu_features": [f for f in _CPU_FEATURES if f in flags],
        "load_avg": list(os.getloadavg()),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "tvm_num_threads": os.environ.get("TVM_NUM_THREADS"),
    }


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages benchmarks depend on (None if absent)."""
    out: dict[str, str | None] = {}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def git_commit() -> str | None:
    """HEAD commit of the repository, with ``-dirty`` if the work tree has changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def write_result(
    name: str, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None
) -> Path:
    """Write ``benchmarks/results/<name>.json`` and return its path.

    Args:
        name: benchmark name (file stem).
        rows: the result rows (JSON-serialisable dicts).
        extra: additional top-level fields (summary figures, options).

    Returns:
        Path of the written file.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "created_unix_s": time.time(),
        "machine": machine_info(),
        "versions": package_versions(),
        "commit": git_commit(),
        **(extra or {}),
        "rows": rows,
    }
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def print_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], title: str | None = None
) -> None:
    """Print ``rows`` as a rich table with the given columns (floats to 4 significant digits)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(
            *(
                f"{v:.4g}" if isinstance(v, float) else str(v)
                for v in (r.get(c, "") for c in columns)
            )
        )
    Console().print(table)


def earlier_rows(
    name: str, key: str, rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of the previous ``results/<name>.json`` whose ``key`` is not among ``rows``.

    For benchmarks run on a subset (``--keep``): the rows not re-run are carried over.

    Returns:
        (those rows, the previous file's whole JSON; both empty when there is none).
    """
    old = RESULTS_DIR / f"{name}.json"
    if not old.exists():
        return [], {}
    prev = json.loads(old.read_text())
    done = {r[key] for r in rows}
    return [r for r in prev.get("rows", []) if r[key] not in done], prev
