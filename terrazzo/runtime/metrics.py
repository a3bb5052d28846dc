"""Runtime observability: Prometheus metrics of the gateway and one JSON log line per request.

Names follow the Prometheus guide: ``terrazzo_`` prefix, base units (seconds), counters in
``_total``, no request ids in labels. Log lines never carry tensor contents or tokens.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ACCESS_LOG = logging.getLogger("terrazzo.runtime.access")
_LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class RuntimeMetrics:
    """The gateway's metric families, in a registry of their own (one per served model)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "terrazzo_requests",
            "Inference requests by model and final gRPC status.",
            ["model", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "terrazzo_request_latency_seconds",
            "End-to-end gateway latency of inference requests.",
            ["model"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.stage_latency = Histogram(
            "terrazzo_stage_latency_seconds",
            "Latency of one stage call as seen by the gateway.",
            ["model", "stage", "device"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_depth = Gauge(
            "terrazzo_queue_depth",
            "Requests admitted by the gateway and not yet answered.",
            ["model"],
            registry=r,
        )
        self.worker_outstanding = Gauge(
            "terrazzo_worker_outstanding_requests",
            "Requests sent to a worker and not yet answered.",
            ["stage", "replica", "device"],
            registry=r,
        )
        self.device_busy = Counter(
            "terrazzo_device_busy_seconds",
            "Seconds workers of a device class spent computing.",
            ["device"],
            registry=r,
        )
        self.worker_up = Gauge(
            "terrazzo_worker_up",
            "1 when a stage replica is healthy and receives traffic.",
            ["stage", "replica", "device"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "terrazzo_worker_restarts",
            "Stage workers restarted after they died.",
            ["stage", "device"],
            registry=r,
        )


def log_request(**fields: Any) -> None:
    """Write one structured access-log line (JSON) at INFO level."""
    ACCESS_LOG.info(json.dumps({"event": "infer", **fields}, sort_keys=True, default=str))
