"""The builds a re-placed bundle stage needs: the bundle's own, or one compiled from its IR at swap time.

A class of the policy's fleet may name a TVM target (``DeviceClassPolicy.target``). When a plan
puts a bundle stage on such a class, the stage's workers must run a build for that target: the
bundle's host build where the target is the host's, its device build where it is the stage's
planned target, and otherwise the stage's Relax module stored in the bundle
(``stages/<i>/ir.json``) compiled for it, with the tuning database (the policy's re-tune
database when there is one, else the bundle's own records), in a child process at ``nice 10``
the first time a plan needs it, and kept for later swaps. A bundle without the stored IR
(compiled before it was stored) cannot be moved onto such a class: the swap is refused in one
line and the server keeps the plan it has. Re-tuned builds (``retune.py``) are recorded here too,
per (stage, target), so a later re-plan onto the same class reuses them.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from terrazzo.errors import ServingError
from terrazzo.runtime.plan import RunnerSpec

_TARGET_KEYS = ("kind", "mcpu", "mtriple", "mattr", "num-cores")


def target_key(target: Mapping[str, Any]) -> str:
    """A stable text for a CPU target dict (what makes two builds distinct)."""
    return json.dumps(
        {k: target[k] for k in sorted(target) if target[k] not in (None, "", [])}, sort_keys=True
    )


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in _TARGET_KEYS)


def _build_child(
    ir_json: str, target: dict[str, Any], records: str, db_path: str | None, out_path: str
) -> float:
    os.nice(10)  # below the serving workers, above a re-tune
    import tvm

    from terrazzo.codegen import compile_module
    from terrazzo.codegen.tuning import TuningDatabase

    t0 = time.perf_counter()
    db: Any = None
    if db_path and Path(db_path).is_file():
        db = TuningDatabase(db_path)
    elif records.strip():
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            f.write(records)
        db = TuningDatabase(f.name)
    ex = compile_module(tvm.ir.load_json(ir_json), target, db, lift_weights=True)
    ex.export_library(out_path)
    return time.perf_counter() - t0


class StageBuilds:
    """Which build each (bundle stage, device class) runs; compiles missing ones from the IR.

    Args:
        manifest: the served bundle's manifest (``terrazzo.bundle.read_manifest``).
        bundle_path / trust_key: the bundle and the trust its workers open it with.
        targets: device class -> its target (None: the bundle's host build).
        work_dir: where builds go.
        tuning_db: the tuning database (JSONL) builds use, when it exists.
    """

    def __init__(
        self,
        manifest: Mapping[str, Any],
        bundle_path: str,
        trust_key: Any,
        targets: Mapping[str, Mapping[str, Any] | None],
        work_dir: str | Path,
        tuning_db: str | None = None,
        timeout_s: float = 600.0,
    ):
        self.manifest = manifest
        self.bundle_path = bundle_path
        self.trust_key = trust_key
        self.targets = dict(targets)
        self.work_dir = Path(work_dir)
        self.tuning_db = tuning_db
        self.timeout_s = timeout_s
        self.host_target: dict[str, Any] = dict(manifest.get("host_target") or {"kind": "llvm"})
        self.events: list[dict[str, Any]] = []  # builds made from the IR (and re-tunes), in order
        self._libs: dict[tuple[int, str], str] = {}
        self._ir: dict[int, str] = {}
        self._lock = threading.Lock()

    def target_of(self, device: str) -> dict[str, Any]:
        """The target a stage on ``device`` runs (the host's where the class names none)."""
        t = self.targets.get(device)
        return dict(t) if t else dict(self.host_target)

    def ir_json(self, index: int) -> str:
        """Stage ``index``'s Relax module as TVM JSON, read from the bundle (hash-checked)."""
        from terrazzo.bundle import read_member_text

        got = self._ir.get(index)
        if got is None:
            files = self.manifest["stages"][index].get("files", {})
            if "ir" not in files:
                raise ServingError(
                    f"adapt: stage {index} of {self.bundle_path} carries no IR (stages/{index}/"
                    "ir.json): it can only run the builds it has; recompile the bundle with "
                    "this terrazzo to let the controller build it for other targets"
                )
            got = self._ir[index] = read_member_text(
                self.bundle_path, files["ir"], trust_key=self.trust_key
            )
        return got

    def record(self, index: int, target: Mapping[str, Any], library: str, why: str) -> None:
        """Use ``library`` for stage ``index`` on ``target`` from now on (e.g. a re-tuned build)."""
        with self._lock:
            self._libs[(index, target_key(target))] = library
            self.events.append(
                {"stage": index, "target": dict(target), "library": library, "from": why}
            )

    def library(self, index: int, device: str) -> str | None:
        """The build stage ``index`` runs on ``device``: None for the bundle's host build,
        ``member:...`` for another build in the bundle, else a file built from the IR."""
        target = self.target_of(device)
        key = (index, target_key(target))
        with self._lock:
            if key in self._libs:
                return self._libs[key]
        if not self.targets.get(device) or _same(target, self.host_target):
            return None
        st = self.manifest["stages"][index]
        files = st.get("files", {})
        if "device" in files and _same(target, st.get("target", {})):
            return f"member:{files['device']}"
        ir = self.ir_json(index)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        tag = hashlib.sha256(key[1].encode()).hexdigest()[:10]
        out = self.work_dir / f"stage{index}_{device}_{tag}.so"
        records = ""
        if (self.manifest.get("tuning") or {}).get("count"):
            from terrazzo.bundle import read_member_text

            records = read_member_text(
                self.bundle_path, "tuning/records.jsonl", trust_key=self.trust_key
            )
        ctx = mp.get_context("spawn")  # a fresh interpreter: the server's threads stay out
        with ctx.Pool(1) as pool:
            build_s = pool.apply_async(
                _build_child, (ir, target, records, self.tuning_db, str(out))
            ).get(self.timeout_s)
        self.record(index, target, str(out), "ir")
        self.events[-1]["build_s"] = round(build_s, 3)
        return str(out)

    def runner(self, base: RunnerSpec, index: int, device: str) -> RunnerSpec:
        """``base`` (the bundle stage's runner) running the build for ``device``."""
        lib = self.library(index, device)
        if lib is None:
            return base
        return RunnerSpec(base.factory, {**base.kwargs, "library": lib}, base.execute_delay_s)
