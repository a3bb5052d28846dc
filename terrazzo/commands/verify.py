"""`terrazzo verify`: check a bundle's hashes and signature and re-check its numerics."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check a .tzb bundle: hashes, signature, staged-vs-whole-model numerics",
        description="Validates every member and hash (and the signature with --trust), then runs "
        "the stages one after another on random inputs and compares with the bundled "
        "whole-model reference. Exit 1 on a numerics mismatch.",
    )
    p.add_argument("bundle", metavar="BUNDLE", help=".tzb file")
    p.add_argument(
        "--trust", metavar="KEY", help="require a signature by this Ed25519 public key (PEM)"
    )
    p.add_argument(
        "--tol", type=float, default=1e-5, help="max abs difference allowed (default 1e-5)"
    )
    p.add_argument("--trials", type=int, default=2, help="random input sets (default 2)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from terrazzo.bundle import verify_bundle
    from terrazzo.commands._common import print_json

    rep = verify_bundle(args.bundle, trust_key=args.trust, tolerance=args.tol, trials=args.trials)
    if args.json:
        print_json(rep.to_json())
    else:
        sig = (
            "verified"
            if rep.signature_verified
            else ("present, not checked" if rep.signed else "none")
        )
        diff = "n/a" if rep.max_abs_diff is None else f"{rep.max_abs_diff:.3g}"
        print(f"{rep.name}: {rep.members} members hash-checked; signature {sig}; numerics "
              f"{rep.numerics} (max abs diff {diff} ≤ {rep.tolerance:g} over {rep.trials} random inputs)")  # fmt: skip
        for n in rep.notes:
            print(f"  note: {n}")
    return 0 if rep.ok else 1
