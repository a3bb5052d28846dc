"""terrazzo.runtime: serve a .tzb bundle over KServe v2 gRPC with one worker process per stage replica.

Gateway (``inference.GRPCInferenceService`` + ``grpc.health.v1``) -> stage workers (local
processes on loopback, or Ray actors requesting ``devclass_<name>`` resources).

The facade resolves its names lazily, so a worker process (which imports
``terrazzo.runtime.worker``) does not pay for the gateway, metrics and server modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from terrazzo.ir import TensorSpec
    from terrazzo.runtime.batcher import BatchingOptions
    from terrazzo.runtime.plan import RunnerSpec, ServingPlan, StageSpec, devclass_resource
    from terrazzo.runtime.server import ServeOptions, Server, TLSOptions, serve

__all__ = [
    "BatchingOptions",
    "RunnerSpec",
    "ServeOptions",
    "Server",
    "ServingPlan",
    "StageSpec",
    "TLSOptions",
    "TensorSpec",
    "devclass_resource",
    "serve",
]

_WHERE = {
    "BatchingOptions": "batcher",
    "RunnerSpec": "plan",
    "ServingPlan": "plan",
    "StageSpec": "plan",
    "devclass_resource": "plan",
    "ServeOptions": "server",
    "Server": "server",
    "TLSOptions": "server",
    "serve": "server",
    "TensorSpec": "tensors",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'terrazzo.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"terrazzo.runtime.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
