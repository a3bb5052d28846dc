"""Bundle step 2: open a ``.tzb`` safely — validate, check hashes and signature, then extract.

Order of checks (nothing is written outside a fresh private temp dir, and no library is
loaded, until all of them pass): member count cap; per member a safe relative name, a
regular file (no symlinks, hard links, devices, directories), size caps, no duplicates;
``manifest.json`` parsed and its format checked; the signature checked against a trusted key
when one is given; the member set equal to the manifest's list; sizes, then sha256 of every
member (streamed while copying into the temp dir).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from terrazzo.bundle._write import (
    FORMAT_NAME,
    MANIFEST,
    READABLE_FORMAT_VERSIONS,
    SIGNATURE,
)
from terrazzo.errors import BundleError
from terrazzo.ir import TensorSpec

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")


@dataclass(frozen=True, slots=True)
class BundleLimits:
    """Caps applied while reading a bundle (defaults fit multi-GB models)."""

    max_members: int = 4096
    max_member_bytes: int = 16 << 30
    max_total_bytes: int = 64 << 30
    max_manifest_bytes: int = 16 << 20


@dataclass(frozen=True, slots=True)
class StageInfo:
    """One stage as the manifest describes it (no code is loaded to build this).

    Attributes:
        index: stage index (a topological order).
        device: planned device class.
        target: dict form of the device artifact's TVM target.
        fallback_reason: why the class's own target was not built (None when it was).
        inputs / outputs: activation signatures in call order.
        replicas: planned replica count.
        ops: op names of the stage.
        weights: weight names passed after the inputs.
        files: role (``host``, ``device``, ``kernels``, ``fatbin``, ``weights``) → member.
        notes: what could not be built.
        predicted_latency_s: the planner's stage latency.
    """

    index: int
    device: str
    target: Mapping[str, Any]
    fallback_reason: str | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    replicas: int = 1
    ops: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    predicted_latency_s: float | None = None

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> StageInfo:
        return StageInfo(
            index=int(d["index"]),
            device=str(d["device"]),
            target=dict(d["target"]),
            fallback_reason=d.get("fallback_reason"),
            inputs=tuple(TensorSpec.from_json(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in d["outputs"]),
            replicas=int(d.get("replicas", 1)),
            ops=tuple(d.get("ops", ())),
            weights=tuple(d.get("weights", ())),
            files=dict(d.get("files", {})),
            notes=tuple(d.get("notes", ())),
            predicted_latency_s=d.get("predicted_latency_s"),
        )


def _check_name(name: str) -> None:
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise BundleError(f"member {name!r}: absolute names are not allowed")
    parts = name.split("/")
    if ".." in parts or "." in parts or "" in parts or "\\" in name:
        raise BundleError(f"member {name!r}: path traversal or empty components are not allowed")
    if len(name) > 255 or not _NAME_RE.fullmatch(name):
        raise BundleError(f"member {name!r}: name has characters outside [A-Za-z0-9._-/]")


def _scan(tar: tarfile.TarFile, limits: BundleLimits) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    total = 0
    while True:
        try:
            info = tar.next()
        except tarfile.TarError as e:
            raise BundleError(f"corrupt tar structure after {len(members)} members: {e}") from e
        if info is None:
            break
        if len(members) >= limits.max_members:
            raise BundleError(f"more than {limits.max_members} members (member {info.name!r})")
        _check_name(info.name)
        if info.issym() or info.islnk():
            raise BundleError(f"member {info.name!r}: links are not allowed (to {info.linkname!r})")
        if not info.isreg():
            raise BundleError(f"member {info.name!r}: only regular files are allowed")
        if info.size > limits.max_member_bytes:
            raise BundleError(
                f"member {info.name!r}: {info.size} bytes exceeds the cap of {limits.max_member_bytes}"
            )
        total += info.size
        if total > limits.max_total_bytes:
            raise BundleError(
                f"member {info.name!r}: bundle exceeds {limits.max_total_bytes} bytes"
            )
        if info.name in members:
            raise BundleError(f"member {info.name!r} appears twice")
        members[info.name] = info
    return members


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(info)
    if f is None:
        raise BundleError(f"member {info.name!r} cannot be read")
    return f.read()


def _validate(
    path: Path,
    trust_key: str | os.PathLike[str] | bytes | None,
    limits: BundleLimits,
    dest: Path | None,
) -> tuple[dict[str, Any], bool]:
    """Validate the bundle; copy members into ``dest`` when given. Returns (manifest, signed)."""
    if not path.is_file():
        raise BundleError(f"bundle {str(path)!r} does not exist or is not a regular file")
    try:
        tar = tarfile.open(path, mode="r:")
    except tarfile.TarError as e:
        raise BundleError(f"{str(path)!r} is not a .tzb bundle (uncompressed tar): {e}") from e
    with tar:
        members = _scan(tar, limits)
        if MANIFEST not in members:
            raise BundleError(f"member {MANIFEST!r} is missing")
        if members[MANIFEST].size > limits.max_manifest_bytes:
            raise BundleError(f"member {MANIFEST!r} exceeds {limits.max_manifest_bytes} bytes")
        manifest_bytes = _read_member(tar, members[MANIFEST])
        try:
            manifest = json.loads(manifest_bytes)
        except ValueError as e:
            raise BundleError(f"member {MANIFEST!r} is not valid JSON: {e}") from e
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise BundleError(f"member {MANIFEST!r} is not a {FORMAT_NAME} manifest")
        if manifest.get("format_version") not in READABLE_FORMAT_VERSIONS:
            raise BundleError(
                f"member {MANIFEST!r}: format version {manifest.get('format_version')!r}, "
                f"this terrazzo reads {', '.join(map(str, READABLE_FORMAT_VERSIONS))}"
            )
        signed = SIGNATURE in members
        if trust_key is not None:
            if not signed:
                raise BundleError(f"member {SIGNATURE!r} is missing but a trusted key was given")
            if members[SIGNATURE].size > 1024:
                raise BundleError(f"member {SIGNATURE!r} is too large for a signature")
            from terrazzo.bundle._sign import verify_bytes

            verify_bytes(manifest_bytes, _read_member(tar, members[SIGNATURE]), trust_key)
        listed = manifest.get("members")
        if not isinstance(listed, dict):
            raise BundleError(f"member {MANIFEST!r} has no member list")
        for name in listed:
            _check_name(str(name))
            if name not in members:
                raise BundleError(f"member {name!r} is listed in the manifest but missing")
        for name in members:
            if name not in listed and name not in (MANIFEST, SIGNATURE):
                raise BundleError(f"member {name!r} is not listed in the manifest (extra member)")
        for name, entry in listed.items():
            if members[name].size != int(entry.get("size_bytes", -1)):
                raise BundleError(
                    f"member {name!r}: size {members[name].size} differs from the manifest's "
                    f"{entry.get('size_bytes')}"
                )
        for name, entry in sorted(listed.items()):
            src = tar.extractfile(members[name])
            if src is None:
                raise BundleError(f"member {name!r} cannot be read")
            h = hashlib.sha256()
            out = None
            if dest is not None:
                target = dest / name
                try:
                    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    out = open(target, "xb")  # noqa: SIM115 - closed below; x: never follow a stale file
                except OSError as e:
                    raise BundleError(f"member {name!r} cannot be extracted: {e.strerror}") from e
            try:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    if out is not None:
                        out.write(chunk)
            finally:
                if out is not None:
                    out.close()
            if h.hexdigest() != entry.get("sha256"):
                raise BundleError(
                    f"member {name!r}: sha256 does not match the manifest (tampered?)"
                )
    return manifest, signed


def read_manifest(
    path: str | os.PathLike[str],
    trust_key: str | os.PathLike[str] | bytes | None = None,
    limits: BundleLimits | None = None,
) -> dict[str, Any]:
    """Validate a bundle fully (names, types, caps, hashes, signature) without extracting it.

    Returns:
        The manifest as a dict.
    """
    manifest, _ = _validate(Path(path), trust_key, limits or BundleLimits(), None)
    return manifest


def read_member_text(
    path: str | os.PathLike[str],
    member: str,
    trust_key: str | os.PathLike[str] | bytes | None = None,
    limits: BundleLimits | None = None,
) -> str:
    """Validate a bundle fully, then return one text member (e.g. ``plan.mlir``) unextracted.

    Raises:
        BundleError: the bundle is invalid, or has no such member, or it is not UTF-8.
    """
    lim = limits or BundleLimits()
    manifest, _ = _validate(Path(path), trust_key, lim, None)
    entry = manifest["members"].get(member)
    if entry is None:
        raise BundleError(f"member {member!r} is not in the bundle")
    with tarfile.open(Path(path), mode="r:") as tar:
        data = _read_member(tar, _scan(tar, lim)[member])
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise BundleError(f"member {member!r}: sha256 does not match the manifest (tampered?)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BundleError(f"member {member!r} is not UTF-8 text: {e}") from e


class Bundle:
    """A validated, extracted ``.tzb`` bundle. Use ``open_bundle`` to get one.

    Attributes:
        path: the bundle file.
        root: private temp dir holding the extracted members (removed by ``close``).
        manifest: the manifest dict.
        signed: whether the bundle carries a signature; ``signature_verified`` whether it was
            checked against a trusted key.
    """

    def __init__(
        self, path: Path, root: Path, manifest: dict[str, Any], signed: bool, verified: bool
    ):
        self.path = path
        self.root = root
        self.manifest = manifest
        self.signed = signed
        self.signature_verified = verified
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(root), True)
        self._runners: dict[str, list[Any]] = {}  # loaded once per device choice, then reused
        self._load_lock = threading.Lock()

    # -- description (no code loaded) ------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.manifest["model"]["name"])

    @cached_property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec.from_json(t) for t in self.manifest["inputs"])

    @cached_property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec.from_json(t) for t in self.manifest["outputs"])

    @cached_property
    def stages(self) -> tuple[StageInfo, ...]:
        return tuple(StageInfo.from_json(s) for s in self.manifest["stages"])

    @property
    def plan_mlir(self) -> str:
        return (self.root / "plan.mlir").read_text()

    @property
    def plan_json(self) -> dict[str, Any] | None:
        p = self.root / "plan.json"
        return json.loads(p.read_text()) if p.exists() else None

    @property
    def agent(self) -> Any:
        """The typed ``plan.json["agent"]`` section of an agent bundle (``AgentPlanSection``), else None.

        Raises:
            BundleError: the section breaks the schema (one line naming the node and field).
        """
        pj = self.plan_json
        if not pj or "agent" not in pj:
            return None
        return _agent_section(pj["agent"], self.path)

    @property
    def tuning_records(self) -> str:
        return (self.root / "tuning/records.jsonl").read_text()

    def member_path(self, member: str) -> Path:
        """Path of an extracted member (validated name)."""
        _check_name(member)
        if member not in self.manifest["members"]:
            raise BundleError(f"member {member!r} is not in this bundle")
        return self.root / member

    # -- execution ---------------------------------------------------------------------------
    def load_stage(self, index: int, device: str = "auto") -> Any:
        """Load stage ``index`` as a StageRunner.

        Args:
            index: stage index.
            device: ``"auto"`` (the planned device when present here, else the host CPU build),
                ``"cpu"`` (always the host build) or ``"device"`` (the device build; raises
                if it cannot run here).
        """
        from terrazzo.bundle._runner import StageRunner

        stages = self.manifest["stages"]
        if not 0 <= index < len(stages):
            raise BundleError(f"stage {index} does not exist (bundle has {len(stages)})")
        return StageRunner.from_bundle(self, StageInfo.from_json(stages[index]), device)

    def load_stages(self, device: str = "auto") -> list[Any]:
        """Every stage as a StageRunner, in index order (see ``load_stage``)."""
        return [self.load_stage(i, device) for i in range(len(self.manifest["stages"]))]

    def runners(self, device: str = "auto") -> list[Any]:
        """The stages as StageRunners, loaded on first use and kept (``run`` uses these)."""
        got = self._runners.get(device)
        if got is None:
            with self._load_lock:
                got = self._runners.get(device)
                if got is None:
                    got = self._runners[device] = self.load_stages(device)
        return got

    @cached_property
    def _io_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return tuple(s.name for s in self.inputs), tuple(s.name for s in self.outputs)

    def run(self, inputs: Mapping[str, Any], runners: list[Any] | None = None) -> dict[str, Any]:
        """Run all stages one after another in this process; returns the graph outputs by name.

        The stages are loaded once, on the first call (``runners(device="auto")``), and reused;
        on the CPU inputs and outputs cross by DLPack without copies (see ``StageRunner``).
        """
        from terrazzo.bundle._runner import run_pipeline

        in_names, out_names = self._io_names
        for name in in_names:
            if name not in inputs:
                missing = [n for n in in_names if n not in inputs]
                raise BundleError(f"inputs not given: {', '.join(missing)}")
        stages = runners or self.runners()
        if len(stages) == 1:  # one stage: its signature is the model's
            out: dict[str, Any] = stages[0](inputs)
            return out if len(out) == len(out_names) else {n: out[n] for n in out_names}
        return run_pipeline(stages, inputs, out_names)

    def load_reference(self) -> Any:
        """The whole-model reference (host CPU) as a StageRunner, or None if not bundled."""
        from terrazzo.bundle._runner import StageRunner

        ref = self.manifest.get("reference")
        if not ref or "library" not in ref:
            return None
        outputs = self.outputs
        if ref.get("outputs"):  # graph outputs and the values passed between stages
            outputs = tuple(TensorSpec.from_json(t) for t in ref["outputs"])
        info = StageInfo(
            index=-1,
            device="host",
            target=self.manifest.get("host_target", {"kind": "llvm"}),
            fallback_reason=None,
            inputs=self.inputs,
            outputs=outputs,
            weights=tuple(ref["weights"]),
            files={"host": ref["library"]},
        )
        return StageRunner.from_bundle(self, info, "cpu")

    def reference_io(self) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
        """``(source, inputs, outputs)`` stored by ``compile`` from an independent implementation
        (onnxruntime, torch), or None when the bundle has none."""
        from safetensors.numpy import load_file

        io = (self.manifest.get("reference") or {}).get("io")
        if not io:
            return None
        arrays = load_file(str(self.member_path(str(io["member"]))))
        ins = {k.removeprefix("input/"): v for k, v in arrays.items() if k.startswith("input/")}
        outs = {k.removeprefix("output/"): v for k, v in arrays.items() if k.startswith("output/")}
        return str(io.get("source", "unknown")), ins, outs

    def close(self) -> None:
        """Remove the extracted files."""
        self._finalizer()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _agent_section(data: Any, path: Path) -> Any:
    # pydantic comes with the compiler side, so only agent bundles import the schema.
    from terrazzo.frontend.agent_schema import parse_agent_section

    try:
        return parse_agent_section(data)
    except ValueError as e:
        raise BundleError(f"{path}: plan.json 'agent' section is malformed: {e}") from None


def open_bundle(
    path: str | os.PathLike[str],
    trust_key: str | os.PathLike[str] | bytes | None = None,
    limits: BundleLimits | None = None,
) -> Bundle:
    """Validate a ``.tzb`` and extract it into a fresh private temp dir.

    Args:
        path: the bundle file.
        trust_key: PEM Ed25519 public key; when given the bundle must be signed by it.
        limits: size and count caps (defaults: BundleLimits()).

    Returns:
        The Bundle; every member's hash has been checked, no library has been loaded.

    Raises:
        BundleError: naming the offending member, for any failed check.
    """
    p = Path(path)
    root = Path(tempfile.mkdtemp(prefix="tzb-"))
    os.chmod(root, 0o700)
    try:
        manifest, signed = _validate(p, trust_key, limits or BundleLimits(), root)
        bundle = Bundle(p, root, manifest, signed, trust_key is not None)
        bundle.agent  # noqa: B018  (an agent bundle's contract is validated before use)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return bundle
