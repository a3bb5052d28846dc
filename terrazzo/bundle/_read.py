"""Bundle step 2: open a ``.tzb`` safely — validate, check signature and hashes, then extract.

Order of checks (nothing is written outside a fresh private temp dir, and no library is
loaded, until all of them pass): member count cap; per member a safe relative name, a plain
regular file (no symlinks, hard links, devices, directories, GNU or PAX sparse members, PAX
headers beyond long names and > 8 GiB sizes, no global PAX headers), size caps, data inside
the file, no duplicates; ``manifest.json`` refused by size and JSON nesting depth before it is
parsed, then its format checked; the signature checked against the trusted keys (refused
unless it verifies, or ``allow_unsigned``); the member set equal to the manifest's list;
sizes, then sha256 of every member, streamed while copying into the temp dir with the bytes
actually read counted against the per-member and total caps and the bundle's own size.
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
from typing import TYPE_CHECKING, Any

import numpy as np

from terrazzo.bundle._trust import (
    TRUST_ENV,
    TrustedKey,
    TrustPolicy,
    TrustSpec,
    resolve_trust,
    trust_dir,
)
from terrazzo.bundle._write import (
    FORMAT_NAME,
    MANIFEST,
    READABLE_FORMAT_VERSIONS,
    SIGNATURE,
)
from terrazzo.errors import BundleError
from terrazzo.ir import TensorSpec

if TYPE_CHECKING:
    from terrazzo.bundle._runner import StageRunner

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")


@dataclass(frozen=True, slots=True)
class BundleLimits:
    """Caps applied while reading a bundle (defaults fit multi-GB models).

    The byte caps count the bytes actually read and written while extracting, not what tar
    headers claim; extraction also never writes more than the bundle file's own size.
    ``max_manifest_bytes`` and ``max_json_depth`` apply to ``manifest.json`` and ``plan.json``
    before they are parsed.
    """

    max_members: int = 4096
    max_member_bytes: int = 16 << 30
    max_total_bytes: int = 64 << 30
    max_manifest_bytes: int = 16 << 20
    max_json_depth: int = 64


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
    buckets: Mapping[str, Any] | None = None

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
            buckets=_buckets_json(d.get("buckets"), int(d["index"])),
        )


def _buckets_json(d: Any, index: int) -> dict[str, Any] | None:
    """A stage's ``buckets`` entry, checked (symbol text, positive integer sizes)."""
    if d is None:
        return None
    ok = (isinstance(d, dict) and isinstance(d.get("symbol"), str)
          and isinstance(d.get("sizes"), list) and d["sizes"]
          and all(isinstance(n, int) and n > 0 for n in d["sizes"]))  # fmt: skip
    if not ok:
        raise BundleError(
            f"member {MANIFEST!r}: stage {index} 'buckets' must be "
            '{"symbol": str, "sizes": [positive int, ...]}'
        )
    return {"symbol": d["symbol"], "sizes": sorted(d["sizes"])}


def _check_name(name: str) -> None:
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise BundleError(f"member {name!r}: absolute names are not allowed")
    parts = name.split("/")
    if ".." in parts or "." in parts or "" in parts or "\\" in name:
        raise BundleError(f"member {name!r}: path traversal or empty components are not allowed")
    if len(name) > 255 or not _NAME_RE.fullmatch(name):
        raise BundleError(f"member {name!r}: name has characters outside [A-Za-z0-9._-/]")


#: PAX keys a plain member may carry. ``path`` only for names too long for the ustar field and
#: ``size`` only for sizes too large for it (the ustar field would otherwise say the same);
#: anything else (``GNU.sparse.*``, ``linkpath``, ``hdrcharset``, vendor keys) is refused.
_PAX_KEYS = frozenset({"path", "size", "mtime", "atime", "ctime", "uid", "gid", "uname", "gname"})
_USTAR_MAX_SIZE = 0o77777777777


def _json_depth(data: bytes) -> int:
    """The deepest ``[``/``{`` nesting of JSON text, counted without parsing it (linear time).

    Brackets inside strings do not count: a quote is real unless an odd run of backslashes
    precedes it, and a position is inside a string after an odd number of real quotes.
    """
    b = np.frombuffer(data, np.uint8)
    if b.size == 0:
        return 0
    pos = np.arange(b.size, dtype=np.int64)
    # index of the last non-backslash at or before each position
    last_plain = np.maximum.accumulate(np.where(b != 92, pos, -1))
    quotes = np.flatnonzero(b == 34)
    run = quotes - 1 - np.concatenate(([-1], last_plain))[quotes]  # backslashes just before
    real = np.zeros(b.size, np.int8)
    real[quotes[run % 2 == 0]] = 1
    in_string = (np.cumsum(real, dtype=np.int64) & 1).astype(bool)
    step = ((b == 91) | (b == 123)).astype(np.int8) - ((b == 93) | (b == 125)).astype(np.int8)
    step[in_string] = 0
    return max(0, int(np.cumsum(step, dtype=np.int64).max()))


def load_json_member(data: bytes, member: str, max_bytes: int, max_depth: int) -> Any:
    """Parse a JSON member after refusing it by size and nesting depth (never a RecursionError)."""
    if len(data) > max_bytes:
        raise BundleError(f"member {member!r}: {len(data)} bytes exceeds the cap of {max_bytes}")
    depth = _json_depth(data)
    if depth > max_depth:
        raise BundleError(
            f"member {member!r}: JSON nested {depth} deep exceeds the cap of {max_depth}"
        )
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise BundleError(f"member {member!r} is not valid JSON: {e}") from None


def _check_member_type(info: tarfile.TarInfo) -> None:
    if info.issym() or info.islnk():
        raise BundleError(f"member {info.name!r}: links are not allowed (to {info.linkname!r})")
    pax = info.pax_headers
    if (
        info.type == tarfile.GNUTYPE_SPARSE
        or info.sparse is not None
        or any(k.startswith("GNU.sparse") for k in pax)
    ):
        raise BundleError(f"member {info.name!r}: sparse members are not allowed")
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        raise BundleError(
            f"member {info.name!r}: only regular files are allowed (tar type {info.type!r})"
        )
    for key in pax:
        if key not in _PAX_KEYS:
            raise BundleError(f"member {info.name!r}: PAX header {key!r} is not allowed")
    if "size" in pax and info.size <= _USTAR_MAX_SIZE:
        raise BundleError(
            f"member {info.name!r}: a PAX 'size' header is only allowed above "
            f"{_USTAR_MAX_SIZE} bytes (the tar header's own size field says the rest)"
        )
    if "path" in pax and len(info.name.encode()) <= 100:
        raise BundleError(
            f"member {info.name!r}: a PAX 'path' header is only allowed for names longer than "
            "100 bytes (it would rename the member)"
        )


def _check_extent(info: tarfile.TarInfo, file_bytes: int) -> None:
    if info.offset_data + info.size > file_bytes:
        raise BundleError(
            f"member {info.name!r}: {info.size} bytes declared, the file ends first (truncated)"
        )


def _scan(
    tar: tarfile.TarFile, limits: BundleLimits, file_bytes: int
) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    total = 0
    while True:
        try:
            info = tar.next()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise BundleError(f"corrupt tar structure after {len(members)} members: {e}") from e
        if info is None:
            break
        if tar.pax_headers:
            raise BundleError(
                f"member {info.name!r}: global PAX headers are not allowed "
                f"({', '.join(sorted(tar.pax_headers))})"
            )
        if len(members) >= limits.max_members:
            raise BundleError(f"more than {limits.max_members} members (member {info.name!r})")
        _check_name(info.name)
        _check_member_type(info)
        if info.size > limits.max_member_bytes:
            raise BundleError(
                f"member {info.name!r}: {info.size} bytes exceeds the cap of {limits.max_member_bytes}"
            )
        _check_extent(info, file_bytes)
        total += info.size
        if total > limits.max_total_bytes:
            raise BundleError(
                f"member {info.name!r}: bundle exceeds {limits.max_total_bytes} bytes"
            )
        if info.name in members:
            raise BundleError(f"member {info.name!r} appears twice")
        members[info.name] = info
    return members


def _read_member(
    tar: tarfile.TarFile, info: tarfile.TarInfo, max_bytes: int | None = None
) -> bytes:
    """A member's bytes, read with a cap (never more than it declares, nor ``max_bytes``)."""
    cap = info.size if max_bytes is None else min(info.size, max_bytes)
    if info.size > cap:
        raise BundleError(f"member {info.name!r}: {info.size} bytes exceeds the cap of {cap}")
    try:
        f = tar.extractfile(info)
        if f is None:
            raise BundleError(f"member {info.name!r} cannot be read")
        data = f.read(cap + 1)
    except (tarfile.TarError, OSError) as e:
        raise BundleError(f"member {info.name!r} cannot be read (truncated?): {e}") from e
    if len(data) != info.size:
        raise BundleError(
            f"member {info.name!r}: read {len(data)} bytes, the header says {info.size}"
        )
    return data


def _copy_member(
    tar: tarfile.TarFile,
    info: tarfile.TarInfo,
    out: Any,
    budget: list[int],
    limits: BundleLimits,
) -> str:
    """Stream a member through sha256 (into ``out`` when given); returns the hex digest.

    The bytes actually read are counted as they stream, against the member's declared size,
    the per-member cap and what is left of the total cap (``budget[0]``), whatever the header
    claims.
    """
    h = hashlib.sha256()
    n = 0
    try:
        src = tar.extractfile(info)
        if src is None:
            raise BundleError(f"member {info.name!r} cannot be read")
        while chunk := src.read(1 << 20):
            n += len(chunk)
            if n > info.size or n > limits.max_member_bytes:
                raise BundleError(
                    f"member {info.name!r}: more than {min(info.size, limits.max_member_bytes)} "
                    "bytes read (stopped)"
                )
            if n > budget[0]:
                raise BundleError(
                    f"member {info.name!r}: extraction would exceed what may be written "
                    f"(the total cap of {limits.max_total_bytes} bytes, and never more than the "
                    "bundle file holds); stopped"
                )
            h.update(chunk)
            if out is not None:
                out.write(chunk)
    except (tarfile.TarError, EOFError) as e:
        raise BundleError(f"member {info.name!r} cannot be read (truncated?): {e}") from e
    except OSError as e:
        what = "extracted" if out is not None else "read"
        raise BundleError(f"member {info.name!r} cannot be {what}: {e.strerror or e}") from e
    if n != info.size:
        raise BundleError(f"member {info.name!r}: read {n} bytes, the header says {info.size}")
    budget[0] -= n
    return h.hexdigest()


def _check_manifest(manifest: Any) -> dict[str, Any]:
    """The manifest's format, version and member list (the fields read before any hash)."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"member {MANIFEST!r} is not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise BundleError(
            f"member {MANIFEST!r}: format version {manifest.get('format_version')!r}, "
            f"this terrazzo reads {', '.join(map(str, READABLE_FORMAT_VERSIONS))}"
        )
    listed = manifest.get("members")
    if not isinstance(listed, dict):
        raise BundleError(f"member {MANIFEST!r} has no member list")
    for name, entry in listed.items():
        _check_name(str(name))
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not isinstance(entry.get("size_bytes"), int)
        ):
            raise BundleError(
                f"member {MANIFEST!r}: entry for {name!r} needs a sha256 string and a "
                "size_bytes integer"
            )
    model = manifest.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise BundleError(f"member {MANIFEST!r}: 'model.name' is missing")
    for key in ("inputs", "outputs", "stages"):
        if not isinstance(manifest.get(key), list):
            raise BundleError(f"member {MANIFEST!r}: {key!r} is missing or not a list")
    return manifest


@dataclass(frozen=True, slots=True)
class CheckedBundle:
    """What ``check_bundle`` found: the manifest and the signature's status.

    Attributes:
        manifest: the manifest dict (format, member list and hashes checked).
        signed: the bundle carries ``manifest.sig``.
        signer: the trusted key the signature verified with (None: not verified).
        policy: the trust policy applied.
    """

    manifest: dict[str, Any]
    signed: bool
    signer: TrustedKey | None
    policy: TrustPolicy

    @property
    def signature_status(self) -> str:
        """``verified``, ``does not verify`` or ``unsigned`` (one word or phrase for reports)."""
        if self.signer is not None:
            return "verified"
        return "does not verify" if self.signed else "unsigned"

    def describe_signature(self) -> str:
        """A phrase for reports: who signed, or why it is not verified."""
        if self.signer is not None:
            return f"verified ({self.signer.fingerprint}, {self.signer.source})"
        if self.signed:
            return f"does not verify with any trusted key ({self.policy.describe()})"
        return "none (unsigned)"


def unverified_warning(path: str | os.PathLike[str], signed: bool) -> str:
    """The one warning line printed when ``--allow-unsigned`` lets an unverified bundle in."""
    why = "is unsigned" if not signed else "has a signature that no trusted key verifies"
    return (
        f"warning: --allow-unsigned: bundle {str(path)!r} {why}; its native code will run "
        "unverified (anyone who could write the file can run code as this user)"
    )


def _check_signature(
    path: Path, manifest_bytes: bytes, sig: bytes | None, policy: TrustPolicy
) -> TrustedKey | None:
    signer = None
    if sig is not None and len(sig) == 64:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        for key in policy.keys:
            try:
                Ed25519PublicKey.from_public_bytes(key.raw).verify(sig, manifest_bytes)
            except InvalidSignature:
                continue
            signer = key
            break
    if signer is not None or policy.allow_unsigned:
        return signer
    if sig is None:
        raise BundleError(
            f"{str(path)!r} is unsigned (member {SIGNATURE!r} is missing): refused, nobody "
            "vouches for its code; sign it (terrazzo compile signs by default) or pass "
            "--allow-unsigned"
        )
    if not policy.keys:
        raise BundleError(
            f"member {SIGNATURE!r}: signature does not verify: {policy.describe()}; trust the "
            f"signer's public key with --trust KEY, ${TRUST_ENV}, or a .pem in {trust_dir()}"
        )
    if len(sig) != 64:
        raise BundleError(
            f"member {SIGNATURE!r}: signature does not verify ({len(sig)} bytes, an Ed25519 "
            "signature has 64)"
        )
    raise BundleError(
        f"member {SIGNATURE!r}: signature does not verify with any of the {policy.describe()}"
    )


def _validate(
    path: Path,
    policy: TrustPolicy,
    limits: BundleLimits,
    dest: Path | None,
) -> CheckedBundle:
    """Validate the bundle; copy members into ``dest`` when given.

    The signature is checked on the manifest before any other member is read; each member is
    hashed while it streams (into ``dest``), and the caller removes ``dest`` on any failure.
    """
    try:
        file_bytes = path.stat().st_size
    except OSError:
        file_bytes = -1
    if not path.is_file():
        raise BundleError(f"bundle {str(path)!r} does not exist or is not a regular file")
    try:
        tar = tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError) as e:
        raise BundleError(f"{str(path)!r} is not a .tzb bundle (uncompressed tar): {e}") from e
    with tar:
        members = _scan(tar, limits, file_bytes)
        if MANIFEST not in members:
            raise BundleError(f"member {MANIFEST!r} is missing")
        manifest_bytes = _read_member(tar, members[MANIFEST], limits.max_manifest_bytes)
        manifest = _check_manifest(
            load_json_member(
                manifest_bytes, MANIFEST, limits.max_manifest_bytes, limits.max_json_depth
            )
        )
        signed = SIGNATURE in members
        sig = _read_member(tar, members[SIGNATURE], 1024) if signed else None
        signer = _check_signature(path, manifest_bytes, sig, policy)
        listed = manifest["members"]
        for name in listed:
            if name not in members:
                raise BundleError(f"member {name!r} is listed in the manifest but missing")
        for name in members:
            if name not in listed and name not in (MANIFEST, SIGNATURE):
                raise BundleError(f"member {name!r} is not listed in the manifest (extra member)")
        for name, entry in listed.items():
            if members[name].size != entry["size_bytes"]:
                raise BundleError(
                    f"member {name!r}: size {members[name].size} differs from the manifest's "
                    f"{entry['size_bytes']}"
                )
        # bytes actually written: the total cap, and never more than the bundle file holds
        budget = [min(limits.max_total_bytes, file_bytes)]
        for name, entry in sorted(listed.items()):
            out = None
            if dest is not None:
                target = dest / name
                try:
                    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    out = open(target, "xb")  # noqa: SIM115 - closed below; x: never follow a stale file
                except OSError as e:
                    raise BundleError(f"member {name!r} cannot be extracted: {e.strerror}") from e
            try:
                digest = _copy_member(tar, members[name], out, budget, limits)
            finally:
                if out is not None:
                    out.close()
            if digest != entry["sha256"]:
                raise BundleError(
                    f"member {name!r}: sha256 does not match the manifest (tampered?)"
                )
    return CheckedBundle(manifest, signed, signer, policy)


def _policy(trust: TrustSpec, trust_key: TrustSpec, allow_unsigned: bool) -> TrustPolicy:
    if trust is not None and trust_key is not None:
        raise BundleError("give trust= or its older name trust_key=, not both")
    return resolve_trust(trust if trust is not None else trust_key, allow_unsigned=allow_unsigned)


def check_bundle(
    path: str | os.PathLike[str],
    trust: TrustSpec = None,
    limits: BundleLimits | None = None,
    *,
    allow_unsigned: bool = False,
    trust_key: TrustSpec = None,
) -> CheckedBundle:
    """Validate a bundle fully (names, types, caps, signature, hashes) without extracting it.

    Args:
        path: the bundle file.
        trust: trusted key(s) (see ``terrazzo.bundle.resolve_trust``; default: $TERRAZZO_TRUST,
            else the trust directory).
        limits: size and count caps.
        allow_unsigned: accept a bundle that is unsigned or not signed by a trusted key.
        trust_key: the older name of ``trust``.

    Raises:
        BundleError: any failed check, in one line naming the member.
    """
    policy = _policy(trust, trust_key, allow_unsigned)
    return _validate(Path(path), policy, limits or BundleLimits(), None)


def read_manifest(
    path: str | os.PathLike[str],
    trust: TrustSpec = None,
    limits: BundleLimits | None = None,
    *,
    allow_unsigned: bool = False,
    trust_key: TrustSpec = None,
) -> dict[str, Any]:
    """Validate a bundle fully (see ``check_bundle``) without extracting it.

    Returns:
        The manifest as a dict.
    """
    return check_bundle(
        path, trust, limits, allow_unsigned=allow_unsigned, trust_key=trust_key
    ).manifest


def read_member_text(
    path: str | os.PathLike[str],
    member: str,
    trust: TrustSpec = None,
    limits: BundleLimits | None = None,
    *,
    allow_unsigned: bool = False,
    trust_key: TrustSpec = None,
) -> str:
    """Validate a bundle fully, then return one text member (e.g. ``plan.mlir``) unextracted.

    Raises:
        BundleError: the bundle is invalid, or has no such member, or it is not UTF-8.
    """
    lim = limits or BundleLimits()
    manifest = read_manifest(path, trust, lim, allow_unsigned=allow_unsigned, trust_key=trust_key)
    entry = manifest["members"].get(member)
    if entry is None:
        raise BundleError(f"member {member!r} is not in the bundle")
    p = Path(path)
    try:
        with tarfile.open(p, mode="r:") as tar:
            data = _read_member(tar, _scan(tar, lim, p.stat().st_size)[member])
    except (tarfile.TarError, OSError) as e:
        raise BundleError(f"{str(p)!r} changed while being read: {e}") from e
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
        signed: whether the bundle carries a signature; ``signature_verified`` whether it
            verified with a trusted key (``signer``: that key). An unverified bundle opens only
            with ``allow_unsigned``.
        checked: what validation found (``CheckedBundle``).
    """

    def __init__(self, path: Path, root: Path, checked: CheckedBundle, limits: BundleLimits):
        self.path = path
        self.root = root
        self.checked = checked
        self.manifest = checked.manifest
        self.signed = checked.signed
        self.signer = checked.signer
        self.signature_verified = checked.signer is not None
        self._limits = limits
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(root), True)
        self._runners: dict[str, list[Any]] = {}  # loaded once per device choice, then reused
        self._load_lock = threading.Lock()
        # ``run``'s shortcut: the one stage's ``try_fast`` when its outputs are the model's
        # (set once the stages are loaded; see ``_set_fast``).
        self._fast: Any = None

    def worker_trust(self) -> dict[str, Any]:
        """The trust (JSON, for ``trust=``) under which another process re-opens this bundle.

        The key the signature verified with when it verified (so a worker on another host
        needs no trust directory); else the explicit ``allow_unsigned`` this bundle was
        opened with.
        """
        if self.signer is not None:
            return {"keys": [self.signer.raw.hex()], "allow_unsigned": False}
        return {"keys": [], "allow_unsigned": True}

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
        if not p.exists():
            return None
        lim = self._limits  # plans of large graphs: 4x the manifest's cap
        return load_json_member(
            p.read_bytes(), "plan.json", 4 * lim.max_manifest_bytes, lim.max_json_depth
        )

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
    def load_stage(
        self, index: int, device: str = "auto", library: str | None = None
    ) -> StageRunner:
        """Load stage ``index`` as a StageRunner.

        Args:
            index: stage index.
            device: ``"auto"`` (the planned device when present here, else the host CPU build),
                ``"cpu"`` (always the host build) or ``"device"`` (the device build; raises
                if it cannot run here).
            library: run this CPU build of the stage instead (with the bundle's weights):
                ``member:NAME`` names a bundle member, anything else a file, e.g. one built
                from the stage's ``ir.json`` for another target or re-tuned while serving.
        """
        from terrazzo.bundle._runner import StageRunner

        stages = self.manifest["stages"]
        if not 0 <= index < len(stages):
            raise BundleError(f"stage {index} does not exist (bundle has {len(stages)})")
        return StageRunner.from_bundle(self, StageInfo.from_json(stages[index]), device, library)

    def load_stages(self, device: str = "auto") -> list[StageRunner]:
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
        if runners is None and self._fast is not None and type(inputs) is dict:
            got = self._fast(inputs)  # one stage, common case: no further Python layers
            if got is not None:
                return got  # type: ignore[no-any-return]
        from terrazzo.bundle._runner import run_pipeline

        in_names, out_names = self._io_names
        for name in in_names:
            if name not in inputs:
                missing = [n for n in in_names if n not in inputs]
                raise BundleError(f"inputs not given: {', '.join(missing)}")
        if runners is None:
            stages = self.runners()
            if self._fast is None:
                self._set_fast(stages)
        else:
            stages = runners
        if len(stages) == 1:  # one stage: its signature is the model's
            out: dict[str, Any] = stages[0](inputs)
            return out if len(out) == len(out_names) else {n: out[n] for n in out_names}
        return run_pipeline(stages, inputs, out_names)

    def _set_fast(self, stages: list[Any]) -> None:
        """Let ``run`` call the one stage's ``try_fast`` directly when that stage returns
        exactly the model's outputs (the general path would hand its dict back as is)."""
        _, out_names = self._io_names
        if len(stages) == 1 and hasattr(stages[0], "try_fast"):
            stage_outs = tuple(s.name for s in stages[0].outputs)
            if stage_outs == out_names:
                self._fast = stages[0].try_fast

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
    trust: TrustSpec = None,
    limits: BundleLimits | None = None,
    *,
    allow_unsigned: bool = False,
    trust_key: TrustSpec = None,
) -> Bundle:
    """Validate a ``.tzb`` and extract it into a fresh private temp dir.

    Args:
        path: the bundle file.
        trust: the trusted Ed25519 public key(s): a PEM file, a directory of ``*.pem``, PEM or
            raw bytes, or a list of them. Default: ``$TERRAZZO_TRUST``, else the keys in
            ``$TERRAZZO_HOME/trusted`` (see ``terrazzo.bundle.resolve_trust``).
        limits: size and count caps (defaults: BundleLimits()).
        allow_unsigned: open a bundle that is unsigned or whose signature no trusted key
            verifies (its code runs unverified: use only for bundles you built yourself).
        trust_key: the older name of ``trust``.

    Returns:
        The Bundle; the signature and every member's hash have been checked, no library has
        been loaded.

    Raises:
        BundleError: naming the offending member, for any failed check; the bundle is unsigned
            or its signature does not verify (without ``allow_unsigned``).
    """
    p = Path(path)
    lim = limits or BundleLimits()
    policy = _policy(trust, trust_key, allow_unsigned)
    root = Path(tempfile.mkdtemp(prefix="tzb-"))
    os.chmod(root, 0o700)
    try:
        checked = _validate(p, policy, lim, root)
        bundle = Bundle(p, root, checked, lim)
        bundle.agent  # noqa: B018  (an agent bundle's contract is validated before use)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return bundle
