"""The one exception hierarchy of Terrazzo; every user-facing failure is a TerrazzoError.

The CLI turns a TerrazzoError into one line on stderr and exit code 2. Anything else
escaping to the CLI is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


class TerrazzoError(Exception):
    """Base class: a problem with the user's input or environment, reported in one line."""


class FrontendError(TerrazzoError):
    """A model file or module could not be imported (missing, corrupt, unsafe, dynamic shapes)."""


class UnsupportedOpError(FrontendError):
    """The model uses operators Terrazzo cannot import; lists every one with its count."""

    def __init__(self, ops: Iterable[str], where: str = "") -> None:
        self.counts: Counter[str] = Counter(ops)
        listed = ", ".join(f"{name} (x{n})" for name, n in sorted(self.counts.items()))
        loc = f" in {where}" if where else ""
        super().__init__(f"unsupported operators{loc}: {listed}")


class VerifyError(TerrazzoError):
    """An IR value (graph, plan, MLIR text) broke an invariant."""


class CostModelError(TerrazzoError):
    """Unknown device, bad device/profile file, or a model that fits no device."""


class PlacementError(TerrazzoError):
    """No placement satisfies the SLA, memory and fleet constraints; names the binding one."""


class CodegenError(TerrazzoError):
    """TVM could not build a stage for its target."""


class TuningError(TerrazzoError):
    """The schedule search failed (bad database, unreachable proposer endpoint)."""


class BundleError(TerrazzoError):
    """A .tzb bundle is malformed, tampered with, unsigned where trust was asked, or unsafe."""


class ServingError(TerrazzoError):
    """The runtime could not start or serve (ports, workers, missing device resources)."""


__all__ = [
    "BundleError",
    "CodegenError",
    "CostModelError",
    "FrontendError",
    "PlacementError",
    "ServingError",
    "TerrazzoError",
    "TuningError",
    "UnsupportedOpError",
    "VerifyError",
]
