"""Who is trusted: the Ed25519 keys a bundle's signature must verify against, and the local key.

A bundle holds native code (stage libraries) that runs when it is loaded, so loading it is
refused unless ``manifest.sig`` verifies against a trusted key (``allow_unsigned`` is the
explicit, warned-about way out). The trusted keys come from the first of these that is set:

1. ``trust=`` in the API / ``--trust KEY`` on the CLI (repeatable): a PEM file, a directory of
   ``*.pem`` files, PEM bytes or the raw 32 key bytes;
2. the environment variable ``TERRAZZO_TRUST``: PEM files or directories, separated by
   ``os.pathsep`` (``:``);
3. the trust directory ``$TERRAZZO_HOME/trusted/*.pem`` (``TERRAZZO_HOME`` defaults to
   ``~/.config/terrazzo``).

The local key pair (like ssh's or cosign's local keys): ``terrazzo compile`` signs with
``$TERRAZZO_HOME/keys/local.pem`` (mode 0600), created on first use, whose public half is put
in the trust directory as ``local.pub.pem``; so bundles compiled on this machine (by this user)
run here, and anything else needs its signer's public key trusted explicitly.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from terrazzo.errors import BundleError

#: Environment variables: the home of keys and trust, and an explicit trusted-key list.
HOME_ENV = "TERRAZZO_HOME"
TRUST_ENV = "TERRAZZO_TRUST"
LOCAL_KEY_NAME = "local"
#: One PEM key file is small; anything larger in a trust directory is not a key.
_MAX_PEM_BYTES = 16 << 10

#: What ``trust=`` accepts: a path (file or directory), PEM or raw key bytes, the JSON form
#: ``{"keys": [hex, ...], "allow_unsigned": bool}`` (or ``{"hex": ...}``), a TrustPolicy, or a
#: sequence of those.
TrustSpec = Union[
    str, "os.PathLike[str]", bytes, Mapping[str, Any], "TrustPolicy", Sequence[Any], None
]


def terrazzo_home() -> Path:
    """``$TERRAZZO_HOME``, else ``~/.config/terrazzo``."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".config" / "terrazzo"


def trust_dir() -> Path:
    """The trust directory: every ``*.pem`` public key in it is trusted (unless overridden)."""
    return terrazzo_home() / "trusted"


def local_key_paths() -> tuple[Path, Path]:
    """(private, public) paths of the local signing key pair."""
    keys = terrazzo_home() / "keys"
    return keys / f"{LOCAL_KEY_NAME}.pem", keys / f"{LOCAL_KEY_NAME}.pub.pem"


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """One trusted Ed25519 public key.

    Attributes:
        source: where it came from (a file path, or ``<key bytes>``).
        raw: the 32 public key bytes.
    """

    source: str
    raw: bytes

    @property
    def fingerprint(self) -> str:
        """``ed25519:`` and the first 16 hex digits of the key's sha256 (for messages)."""
        return "ed25519:" + hashlib.sha256(self.raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """The keys a signature must verify against, and whether an unverified bundle may load.

    Attributes:
        keys: the trusted keys.
        source: where they came from, for messages (``--trust``, ``TERRAZZO_TRUST``, the dir).
        allow_unsigned: accept a bundle that is unsigned or whose signature verifies with none
            of ``keys`` (its code runs unverified; callers warn).
    """

    keys: tuple[TrustedKey, ...]
    source: str
    allow_unsigned: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON form ``resolve_trust`` reads back (what serving workers receive)."""
        return {"keys": [k.raw.hex() for k in self.keys], "allow_unsigned": self.allow_unsigned}

    def describe(self) -> str:
        if not self.keys:
            return f"no trusted keys ({self.source})"
        return f"{len(self.keys)} trusted key{'s' if len(self.keys) > 1 else ''} ({self.source})"


def _raw_public(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def _key_from(item: Any, where: str) -> TrustedKey:
    from terrazzo.bundle._sign import load_public_key

    if isinstance(item, bytes):
        return TrustedKey("<key bytes>", _raw_public(load_public_key(item)))
    p = Path(os.fspath(item))
    try:
        size = p.stat().st_size
    except OSError:
        raise BundleError(f"{where}: trusted key {str(p)!r} does not exist") from None
    if size > _MAX_PEM_BYTES:
        raise BundleError(f"{where}: trusted key {str(p)!r} is {size} bytes, not a PEM key")
    return TrustedKey(str(p), _raw_public(load_public_key(p)))


def _keys_from_path(item: Any, where: str) -> list[TrustedKey]:
    if not isinstance(item, bytes) and Path(os.fspath(item)).is_dir():
        return [_key_from(f, where) for f in sorted(Path(os.fspath(item)).glob("*.pem"))]
    return [_key_from(item, where)]


def _hex_key(h: Any, where: str) -> TrustedKey:
    try:
        raw = bytes.fromhex(str(h))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise BundleError(f"{where}: trusted key {str(h)[:80]!r} is not 32 hex-encoded bytes")
    return TrustedKey("<key bytes>", raw)


def resolve_trust(trust: TrustSpec = None, *, allow_unsigned: bool = False) -> TrustPolicy:
    """The trust policy for ``trust`` (see the module docstring for the sources and order).

    Raises:
        BundleError: a named key file is missing or not an Ed25519 PEM key.
    """
    if isinstance(trust, TrustPolicy):
        return TrustPolicy(trust.keys, trust.source, trust.allow_unsigned or allow_unsigned)
    if isinstance(trust, Mapping):
        if "hex" in trust:
            keys = [_hex_key(trust["hex"], "trust")]
        else:
            keys = [_hex_key(h, "trust") for h in trust.get("keys", ())]
        return TrustPolicy(
            tuple(keys), "trust=", bool(trust.get("allow_unsigned")) or allow_unsigned
        )
    if trust is not None:
        items: Iterable[Any] = trust if isinstance(trust, list | tuple) else [trust]
        keys = []
        for item in items:
            if isinstance(item, Mapping | TrustPolicy):
                keys.extend(resolve_trust(item).keys)
            else:
                keys.extend(_keys_from_path(item, "--trust"))
        return TrustPolicy(tuple(keys), "--trust", allow_unsigned)
    env = os.environ.get(TRUST_ENV)
    if env:
        keys = []
        for part in env.split(os.pathsep):
            if part:
                keys.extend(_keys_from_path(Path(part).expanduser(), TRUST_ENV))
        return TrustPolicy(tuple(keys), f"${TRUST_ENV}", allow_unsigned)
    d = trust_dir()
    keys = _keys_from_path(d, f"trust directory {str(d)!r}") if d.is_dir() else []
    return TrustPolicy(tuple(keys), f"trust directory {d}", allow_unsigned)


def ensure_local_key() -> Path:
    """The local signing key, created on first use; its public half is trusted locally.

    Returns:
        The private key's path (``$TERRAZZO_HOME/keys/local.pem``, mode 0600).
    """
    from cryptography.hazmat.primitives import serialization

    from terrazzo.bundle._sign import generate_keypair, load_private_key

    priv, pub = local_key_paths()
    if not priv.exists():
        priv.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            generate_keypair(priv, pub)
        except FileExistsError:  # another process created it meanwhile
            pass
    trusted = trust_dir() / f"{LOCAL_KEY_NAME}.pub.pem"
    if not trusted.exists():
        pem = (
            load_private_key(priv)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        trusted.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = trusted.with_name(f".{trusted.name}.{os.getpid()}")
        tmp.write_bytes(pem)
        os.replace(tmp, trusted)
    return priv
