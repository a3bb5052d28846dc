"""`terrazzo keygen`: write an Ed25519 key pair (PEM) for signing and trusting bundles."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keygen",
        help="create an Ed25519 key pair for `compile --sign` / `--trust`, or show the local key",
        description="Writes PREFIX.pem (private, mode 600) and PREFIX.pub.pem (public). Without "
        "PREFIX, creates (if needed) and prints the local key pair that `terrazzo compile` signs "
        "with by default: $TERRAZZO_HOME/keys/local.pem (TERRAZZO_HOME defaults to "
        "~/.config/terrazzo), whose public half is trusted on this machine "
        "($TERRAZZO_HOME/trusted/local.pub.pem). run, serve, verify and inspect refuse a bundle "
        "unless its signature verifies with a trusted key: --trust KEY, else $TERRAZZO_TRUST "
        "(PEM files or directories, ':'-separated), else every .pem in $TERRAZZO_HOME/trusted. "
        "To run a bundle on another machine, copy the signer's .pub.pem into that machine's "
        "trusted directory (or pass it with --trust).",
    )
    p.add_argument(
        "prefix",
        metavar="PREFIX",
        nargs="?",
        help="output path prefix, e.g. keys/release (omit: the local key)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from terrazzo.bundle import ensure_local_key, generate_keypair, local_key_paths, trust_dir
    from terrazzo.errors import BundleError

    if args.prefix is None:
        ensure_local_key()
        priv, pub = local_key_paths()
        print(
            f"local private key: {priv} (compile signs with it by default)\n"
            f"local public key:  {pub} (trusted here via {trust_dir()}; copy it to another "
            "machine's trusted directory, or pass it with --trust, to run these bundles there)"
        )
        return 0
    priv, pub = Path(f"{args.prefix}.pem"), Path(f"{args.prefix}.pub.pem")
    for p in (priv, pub):
        if p.exists():
            raise BundleError(f"{str(p)!r} already exists; choose another prefix")
    priv.parent.mkdir(parents=True, exist_ok=True)
    generate_keypair(priv, pub)
    print(
        f"private key: {priv} (keep secret; use with compile --sign)\n"
        f"public key:  {pub} (use with --trust, or copy into {trust_dir()})"
    )
    return 0
