"""Terrazzo: compile models and agents for mixed hardware, serve them, report their TCO.

The public API is re-exported here lazily so that ``import terrazzo`` stays fast.
"""

from __future__ import annotations

from typing import Any

from terrazzo.errors import (
    BundleError,
    CodegenError,
    CostModelError,
    FrontendError,
    PlacementError,
    ServingError,
    TerrazzoError,
    TuningError,
    UnsupportedOpError,
    VerifyError,
)

__version__ = "0.1.0"

# name → module that defines it; resolved on first access (PEP 562).
_LAZY = {
    "Graph": "terrazzo.ir",
    "Op": "terrazzo.ir",
    "TensorType": "terrazzo.ir",
    "from_onnx": "terrazzo.frontend",
    "from_torch": "terrazzo.frontend",
    "Fleet": "terrazzo.placement",
    "SLA": "terrazzo.placement",
    "plan": "terrazzo.placement",
    "compile": "terrazzo.pipeline",
    "open_bundle": "terrazzo.bundle",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'terrazzo' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "BundleError",
    "CodegenError",
    "CostModelError",
    "FrontendError",
    "Graph",
    "Op",
    "PlacementError",
    "ServingError",
    "TensorType",
    "TerrazzoError",
    "TuningError",
    "UnsupportedOpError",
    "VerifyError",
    "__version__",
    "compile",
    "from_onnx",
    "from_torch",
    "open_bundle",
    "plan",
    "Fleet",
    "SLA",
]
