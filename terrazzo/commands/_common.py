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
