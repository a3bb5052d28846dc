"""Vendored gRPC stubs (Triton's ``inference`` service and model config, vendored; ``grpc.health.v1``); regenerate with regen.sh."""

from terrazzo.runtime.protos import (
    grpc_service_pb2,
    grpc_service_pb2_grpc,
    health_pb2,
    health_pb2_grpc,
    model_config_pb2,
)

__all__ = [
    "grpc_service_pb2",
    "grpc_service_pb2_grpc",
    "health_pb2",
    "health_pb2_grpc",
    "model_config_pb2",
]
