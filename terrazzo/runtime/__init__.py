"""terrazzo.runtime: serve a .tzb bundle over KServe v2 gRPC with one worker process per stage replica.

Gateway (``inference.GRPCInferenceService`` + ``grpc.health.v1``) -> stage workers (local
processes on loopback, or Ray actors requesting ``devclass_<name>`` resources).
"""

from terrazzo.runtime.plan import RunnerSpec, ServingPlan, StageSpec, devclass_resource
from terrazzo.runtime.server import ServeOptions, Server, TLSOptions, serve
from terrazzo.runtime.tensors import TensorSpec

__all__ = [
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
