"""Bundle signing: Ed25519 signatures over ``manifest.json`` (which hashes every other member)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from terrazzo.errors import BundleError


def _read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise BundleError(f"{what} {str(p)!r} does not exist or is not a file")
    return p.read_bytes()


def load_private_key(path: str | os.PathLike[str]) -> Any:
    """Load an unencrypted Ed25519 private key from a PEM file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(_read_pem(path, "signing key"), password=None)
    except (ValueError, TypeError) as e:
        raise BundleError(
            f"signing key {str(path)!r} is not an unencrypted PEM private key: {e}"
        ) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"signing key {str(path)!r} is {type(key).__name__}, expected Ed25519")
    return key


def load_public_key(path: str | os.PathLike[str] | bytes) -> Any:
    """Load an Ed25519 public key: a PEM file path, PEM bytes, or the raw 32 key bytes.

    A private key PEM is accepted too (its public half is used).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    if isinstance(path, bytes) and len(path) == 32:
        return Ed25519PublicKey.from_public_bytes(path)
    pem = path if isinstance(path, bytes) else _read_pem(path, "trusted key")
    path = "<key bytes>" if isinstance(path, bytes) else path
    try:
        key: Any = serialization.load_pem_public_key(pem)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as e:
            raise BundleError(f"trusted key {str(path)!r} is not a PEM Ed25519 key") from e
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"trusted key {str(path)!r} is {type(key).__name__}, expected Ed25519")
    return key


def sign_bytes(data: bytes, private_key_path: str | os.PathLike[str]) -> bytes:
    """The 64-byte Ed25519 signature of ``data``."""
    return bytes(load_private_key(private_key_path).sign(data))


def verify_bytes(
    data: bytes, signature: bytes, public_key_path: str | os.PathLike[str] | bytes
) -> None:
    """Raise BundleError unless ``signature`` is a valid signature of ``data`` by the key."""
    from cryptography.exceptions import InvalidSignature

    key = load_public_key(public_key_path)
    try:
        key.verify(signature, data)
    except InvalidSignature as e:
        raise BundleError(
            "member 'manifest.sig': signature does not verify with the trusted key"
            f"{'' if isinstance(public_key_path, bytes) else ' ' + repr(str(public_key_path))}"
        ) from e


def generate_keypair(
    private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]
) -> None:
    """Write a new Ed25519 key pair as PEM files (the private one readable by its owner only)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(str(private_path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(priv)
    Path(public_path).write_bytes(pub)
