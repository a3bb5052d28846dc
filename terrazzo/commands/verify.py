"""`terrazzo verify`: check a bundle's hashes and signature and re-check its numerics."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check a .tzb bundle: hashes, signature, numerics against independent references",
        description="Validates every member and hash (and the signature with --trust), then "
        "runs the stages on the inputs stored at compile time and compares with the outputs "
        "onnxruntime (ONNX) or torch (nn.Module) computed from them, and checks each stage and "
        "the whole chain on random inputs against the bundled whole-model build. NaN and Inf "
        "must match the reference. Exit 1 on a numerics mismatch.",
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
        print(
            f"{rep.name}: {rep.members} members hash-checked; signature {sig}; numerics "
            f"{rep.numerics}" + (f" against {rep.reference}" if rep.reference else "")
        )
        for c in rep.checks:
            rel = "≤" if c.ok else ">"
            print(
                f"  {'ok  ' if c.ok else 'FAIL'} {c.what}: max abs diff {c.max_abs_diff:.3g} "
                f"{rel} tolerance {rep.tolerance:g}" + (f" ({c.detail})" if c.detail else "")
            )
        if rep.trials:
            print(f"  ({rep.trials} random input sets for the whole-model reference checks)")
        for n in rep.notes:
            print(f"  note: {n}")
    return 0 if rep.ok else 1
