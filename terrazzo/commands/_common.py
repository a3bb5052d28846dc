"""Helpers shared by CLI subcommands: JSON output (durations parse in ``terrazzo.placement``),
the runtime-only guard."""

from __future__ import annotations

import json
import sys
from typing import Any

from terrazzo.errors import TerrazzoError


def require_compiler(command: str) -> None:
    """Refuse in one line a command that needs TVM's compiler on a runtime-only install.

    A runtime-only install (``libtvm_compiler`` absent, or ``TVM_USE_RUNTIME_LIB=1``) serves,
    runs, verifies and inspects bundles; compiling, tuning and calibrating happen elsewhere.
    """
    import tvm.base

    if getattr(tvm.base, "_RUNTIME_ONLY", False):
        raise TerrazzoError(
            f"`terrazzo {command}` needs the TVM compiler, and this is a runtime-only install "
            "(no libtvm_compiler, or TVM_USE_RUNTIME_LIB=1); build the bundle on a machine with "
            "the full install, then serve, run, verify or inspect it here"
        )


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def add_shape_args(p: Any, plan_shape: bool = True) -> None:
    """``--shape NAME=DIMS`` (repeatable; sizes or ``lo..hi`` ranges) and ``--plan-shape``."""
    p.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME=DIMS",
        help="an input's shape: sizes or lo..hi ranges joined by x, e.g. x=1..32x3x224x224 "
        "(repeatable). A range keeps the dimension symbolic: one build serves the whole range. "
        "Open dimensions not named get 1..64 (batch: first dimension) or 1..512 (others)",
    )
    if plan_shape:
        p.add_argument(
            "--plan-shape",
            action="append",
            default=[],
            metavar="NAME=DIMS",
            help="the input shape the cost model and planner assume, e.g. x=8x3x224x224 "
            "(default: the upper bound of every range)",
        )


def shapes_from_args(args: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(shapes, plan_shapes) parsed from ``--shape`` / ``--plan-shape`` (one line on error)."""
    from terrazzo.ir.shapes import parse_shape_args

    shapes = parse_shape_args(getattr(args, "shape", None) or [], "--shape")
    plan = parse_shape_args(getattr(args, "plan_shape", None) or [], "--plan-shape")
    for name, dims in plan.items():
        if any(isinstance(d, tuple) for d in dims):
            raise TerrazzoError(f"--plan-shape {name}: give sizes, not ranges")
    return shapes, plan


def describe_dynamic(plan_summary: Any) -> str | None:
    """One line on what a dynamic-shape bundle or plan serves and what shape it was costed at."""
    if not plan_summary or not plan_summary.get("dynamic_dims"):
        return None
    dims = ", ".join(f"{k} {v[0]}..{v[1]}" for k, v in plan_summary["dynamic_dims"].items())
    at = ", ".join(f"{k}={v}" for k, v in (plan_summary.get("plan_shape") or {}).items())
    build = plan_summary.get("shape_build", "symbolic")
    if build == "bucketed":  # static builds at a few batch sizes beside the symbolic one
        sizes = sorted(
            {n for b in (plan_summary.get("buckets") or {}).values() for n in b["sizes"]}
        )
        build = f"bucketed: static builds at {','.join(map(str, sizes))} plus symbolic"
    return f"dynamic shapes: {dims} ({build} build); planned and costed at {at}"


TRUST_HELP = (
    "trust this Ed25519 public key (PEM file, or a directory of .pem files; repeatable). "
    "Default: $TERRAZZO_TRUST, else the keys in $TERRAZZO_HOME/trusted "
    "(~/.config/terrazzo/trusted), which holds this machine's local key"
)


def add_trust_arguments(p: Any, allow_unsigned_help: str | None = None) -> None:
    """``--trust KEY`` (repeatable; ``--trust-key`` is its hidden old name) and, when
    ``allow_unsigned_help`` is given, ``--allow-unsigned``."""
    import argparse

    p.add_argument("--trust", action="append", default=None, metavar="KEY", help=TRUST_HELP)
    p.add_argument("--trust-key", action="append", dest="trust", help=argparse.SUPPRESS)
    if allow_unsigned_help is not None:
        p.add_argument("--allow-unsigned", action="store_true", help=allow_unsigned_help)


def warn_unverified(command: str, path: str, signed: bool, verified: bool) -> None:
    """Print the one ``--allow-unsigned`` warning line when a bundle was not verified."""
    if not verified:
        from terrazzo.bundle import unverified_warning

        print(f"terrazzo {command}: {unverified_warning(path, signed)}", file=sys.stderr)
