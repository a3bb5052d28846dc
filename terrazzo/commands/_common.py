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
