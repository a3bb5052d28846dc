"""`terrazzo verify`: check a bundle's hashes and signature and re-check its numerics."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check a .tzb bundle: signature, hashes, numerics against independent references",
        description="Checks the signature against the trusted keys and every member and hash "
        "before any code loads (an unsigned bundle, or a signature no trusted key verifies, is a "
        "failure: exit 2), then runs the stages on the inputs stored at compile time and compares "
        "with the outputs onnxruntime (ONNX) or torch (nn.Module) computed from them, and checks "
        "each stage and the whole chain on random inputs against the bundled whole-model build. "
        "NaN and Inf must match the reference. Exit 1 on a numerics mismatch.",
    )
    p.add_argument("bundle", metavar="BUNDLE", help=".tzb file")
    from terrazzo.commands._common import add_trust_arguments

    add_trust_arguments(
        p,
        "check the numerics of a bundle that is unsigned or whose signature no trusted key "
        "verifies (its code runs unverified; reported, with a warning)",
    )
    p.add_argument(
        "--tol", type=float, default=1e-5, help="max abs difference allowed (default 1e-5)"
    )
    p.add_argument("--trials", type=int, default=2, help="random input sets (default 2)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from terrazzo.bundle import verify_bundle
    from terrazzo.commands._common import print_json, warn_unverified

    # the signature and every hash are checked before any stage library loads
    rep = verify_bundle(
        args.bundle, args.trust, tolerance=args.tol, trials=args.trials,
        allow_unsigned=args.allow_unsigned,
    )  # fmt: skip
    warn_unverified("verify", args.bundle, rep.signed, rep.signature_verified)
    if args.json:
        print_json(rep.to_json())
    else:
        sig = rep.signature
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
