"""Helpers shared by CLI subcommands: argument parsing of units and JSON/terminal output."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from terrazzo.errors import TerrazzoError

_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}


def parse_duration_s(text: str) -> float:
    """Parse '50ms', '0.2s', '250us' or a bare number of milliseconds into seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs)?\s*", text)
    if not m:
        raise TerrazzoError(f"cannot parse duration {text!r}; expected e.g. 50ms, 0.2s, 250us")
    value = float(m.group(1))
    if value <= 0:
        raise TerrazzoError(f"duration {text!r} must be positive")
    return value * _TIME_UNITS[m.group(2) or "ms"]


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")
