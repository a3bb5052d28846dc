"""`terrazzo keygen`: write an Ed25519 key pair (PEM) for signing and trusting bundles."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keygen",
        help="create an Ed25519 key pair for `compile --sign` / `verify --trust`",
        description="Writes PREFIX.pem (private, mode 600) and PREFIX.pub.pem (public).",
    )
    p.add_argument("prefix", metavar="PREFIX", help="output path prefix, e.g. keys/release")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from terrazzo.bundle import generate_keypair
    from terrazzo.errors import BundleError

    priv, pub = Path(f"{args.prefix}.pem"), Path(f"{args.prefix}.pub.pem")
    for p in (priv, pub):
        if p.exists():
            raise BundleError(f"{str(p)!r} already exists; choose another prefix")
    priv.parent.mkdir(parents=True, exist_ok=True)
    generate_keypair(priv, pub)
    print(
        f"private key: {priv} (keep secret; use with --sign)\npublic key:  {pub} (use with --trust)"
    )
    return 0
