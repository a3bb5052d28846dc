"""Runtime observability: Prometheus metrics of the gateway and one JSON log line per request.

Names follow the Prometheus guide: ``terrazzo_`` prefix, base units (seconds), counters in
``_total``, no request ids in labels. Log lines never carry tensor contents or tokens.
"""

from __future__ import annotations

import json
import logging
import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

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


class Tally:
    """Per-thread counter and histogram accumulators of the request path, folded into their
    Prometheus children at scrape time (issue 14: ``Counter.inc`` and ``Histogram.observe``
    take a lock and cost a few us each; a plain add to a thread's own list costs ~0.1 us).

    ``inc(child, amount)`` and ``observe(child, value)`` take a labelled child of a
    ``Counter`` / ``Histogram`` (``family.labels(...)``); ``fold()`` adds what every thread
    accumulated since the last fold to those children, so a scrape reads the same names, labels
    and values as if each call had gone to the child directly. A family created by
    ``RuntimeMetrics`` folds before it is collected; code reading a child's value directly
    (``child._value.get()``) must call ``fold()`` first.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._threads: list[dict[Any, list[float]]] = []  # one dict per thread that recorded
        self._folded: dict[Any, list[float]] = {}  # child -> totals already added to it

    def _mine(self) -> dict[Any, list[float]]:
        try:
            return self._local.acc  # type: ignore[no-any-return]
        except AttributeError:
            acc: dict[Any, list[float]] = {}
            self._local.acc = acc
            with self._lock:
                self._threads.append(acc)
            return acc

    def inc(self, child: Any, amount: float = 1.0) -> None:
        """``child.inc(amount)``, deferred to the next fold."""
        acc = self._mine()
        a = acc.get(child)
        if a is None:
            a = acc[child] = [0.0]
        a[0] += amount

    def observe(self, child: Any, value: float) -> None:
        """``child.observe(value)``, deferred to the next fold: [sum, count per bucket...]."""
        acc = self._mine()
        a = acc.get(child)
        if a is None:
            a = acc[child] = [0.0] * (len(child._upper_bounds) + 1)  # noqa: SLF001
        a[0] += value
        a[1 + bisect_left(child._upper_bounds, value)] += 1  # noqa: SLF001  first bound >= value

    def fold(self) -> None:
        """Add every thread's accumulation since the last fold to the Prometheus children."""
        with self._lock:
            totals: dict[Any, list[float]] = {}
            for acc in self._threads:
                for child, a in acc.copy().items():  # dict.copy: atomic under the GIL
                    t = totals.get(child)
                    if t is None:
                        totals[child] = list(a)
                    else:
                        for i, v in enumerate(a):
                            t[i] += v
            for child, t in totals.items():
                done = self._folded.setdefault(child, [0.0] * len(t))
                deltas = [v - d for v, d in zip(t, done, strict=True)]
                self._folded[child] = t
                if len(t) == 1:
                    if deltas[0] > 0:
                        child.inc(deltas[0])
                    continue
                if deltas[0] != 0:
                    child._sum.inc(deltas[0])  # noqa: SLF001
                for bucket, n in zip(child._buckets, deltas[1:], strict=True):  # noqa: SLF001
                    if n > 0:
                        bucket.inc(n)


class _FoldingCounter(Counter):
    """A Counter that folds its ``Tally`` before it is collected."""

    tally: Tally | None = None

    def collect(self) -> Iterator[Any]:  # type: ignore[override]
        if self.tally is not None:
            self.tally.fold()
        return super().collect()  # type: ignore[return-value]


class _FoldingHistogram(Histogram):
    """A Histogram that folds its ``Tally`` before it is collected."""

    tally: Tally | None = None

    def collect(self) -> Iterator[Any]:  # type: ignore[override]
        if self.tally is not None:
            self.tally.fold()
        return super().collect()  # type: ignore[return-value]


class RuntimeMetrics:
    """The gateway's metric families, in a registry of their own (one per served model).

    ``tally``: the request path's deferred updates (``Tally``) of ``requests``,
    ``request_latency``, ``stage_latency`` and ``device_busy``, folded at scrape time.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tally = Tally()
        r = self.registry
        self.requests = _FoldingCounter(
            "terrazzo_requests",
            "Inference requests by model and final gRPC status.",
            ["model", "status"],
            registry=r,
        )
        self.request_latency = _FoldingHistogram(
            "terrazzo_request_latency_seconds",
            "End-to-end gateway latency of inference requests.",
            ["model"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.stage_latency = _FoldingHistogram(
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
        self.device_busy = _FoldingCounter(
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
        for family in (self.requests, self.request_latency, self.stage_latency, self.device_busy):
            family.tally = self.tally


_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class WorkerStatsCollector(Collector):
    """Per-stage counters read from every live worker at scrape time (``terrazzo.WorkerStats``).

    The workers own the counts (they see every execution, batched or not); the gateway cannot
    infer them from responses. Families (labels model, stage, replica, device):
    ``terrazzo_stage_request_success_total`` / ``_failure_total`` (requests),
    ``terrazzo_stage_inference_count_total`` (rows, as Triton's ``nv_inference_count``),
    ``terrazzo_stage_execution_count_total`` (executions, ``nv_inference_exec_count``),
    ``terrazzo_stage_queue_seconds_total``, ``terrazzo_stage_compute_infer_seconds_total`` and
    the histogram ``terrazzo_stage_batch_size`` (rows per execution). A restarted worker starts
    from zero, which Prometheus reads as a counter reset.

    Args:
        pools: the gateway's replica pools (``.stage``, ``.replicas`` with ``.channel``).
        model: model label.
        token: the internal worker token (empty when mTLS authenticates the hop).
        timeout_s: how long one worker may take to answer.
    """

    def __init__(self, pools: Sequence[Any], model: str, token: str, timeout_s: float = 0.5):
        self.pools = pools
        self.model = model
        self.token = token
        self.timeout_s = timeout_s

    def fetch(self) -> list[dict[str, Any]]:
        """Every reachable worker's ``StageStats`` snapshot plus stage/replica/device keys."""
        from terrazzo.runtime.worker import STATS_METHOD, TOKEN_HEADER

        metadata = [(TOKEN_HEADER, self.token)] if self.token else []
        calls = []
        for pool in self.pools:
            for rep in pool.replicas:
                channel = rep.channel
                if channel is None:
                    continue
                fut = channel.unary_unary(STATS_METHOD).future(
                    b"", timeout=self.timeout_s, metadata=metadata
                )
                calls.append((pool.stage, rep, fut))
        rows = []
        for stage, rep, fut in calls:
            try:
                data = json.loads(fut.result())
            except Exception:  # a worker down or restarting: no sample from it this scrape
                continue
            data.update(stage=stage.index, replica=rep.index, device=stage.device)
            rows.append(data)
        return rows

    def describe(self) -> list[Any]:
        return []  # no scrape at registration time

    def collect(self) -> Iterator[Any]:
        labels = ["model", "stage", "replica", "device"]
        counters = {
            "request_count": CounterMetricFamily(
                "terrazzo_stage_request_success",
                "Requests a stage worker answered successfully.",
                labels=labels,
            ),
            "failure_count": CounterMetricFamily(
                "terrazzo_stage_request_failure",
                "Requests a stage worker failed or rejected.",
                labels=labels,
            ),
            "inference_count": CounterMetricFamily(
                "terrazzo_stage_inference_count",
                "Inferences (batch rows) a stage worker computed.",
                labels=labels,
            ),
            "execution_count": CounterMetricFamily(
                "terrazzo_stage_execution_count",
                "Stage executions (one per batch when requests are merged).",
                labels=labels,
            ),
            "queue_s": CounterMetricFamily(
                "terrazzo_stage_queue_seconds",
                "Seconds requests waited in a stage worker before their execution.",
                labels=labels,
            ),
            "compute_infer_s": CounterMetricFamily(
                "terrazzo_stage_compute_infer_seconds",
                "Seconds a stage worker spent executing.",
                labels=labels,
            ),
        }
        hist = HistogramMetricFamily(
            "terrazzo_stage_batch_size",
            "Rows per stage execution.",
            labels=labels,
        )
        for row in self.fetch():
            values = [self.model, str(row["stage"]), str(row["replica"]), str(row["device"])]
            for key, family in counters.items():
                extra = row.get("rejected_count", 0) if key == "failure_count" else 0
                family.add_metric(values, float(row.get(key, 0)) + float(extra))
            by_size = {int(b["batch_size"]): int(b["count"]) for b in row.get("batch_stats", [])}
            buckets, seen = [], 0
            for edge in _BATCH_BUCKETS:
                seen = sum(n for size, n in by_size.items() if size <= edge)
                buckets.append((str(float(edge)), float(seen)))
            total = sum(by_size.values())
            buckets.append(("+Inf", float(total)))
            rows_sum = sum(size * n for size, n in by_size.items())
            hist.add_metric(values, buckets, float(rows_sum))
        yield from counters.values()
        yield hist


def access_log_enabled() -> bool:
    """True when ``log_request`` would write (callers skip building its arguments otherwise)."""
    return ACCESS_LOG.isEnabledFor(logging.INFO)


def log_request(**fields: Any) -> None:
    """Write one structured access-log line (JSON) at INFO level (nothing is formatted when the
    access log is off: that JSON is a third of the gateway's own per-request time)."""
    if not ACCESS_LOG.isEnabledFor(logging.INFO):
        return
    ACCESS_LOG.info(json.dumps({"event": "infer", **fields}, sort_keys=True, default=str))
