"""Observe: what the gateway serves, per stage and device, in a rolling time window.

The gateway calls the hooks of ``terrazzo.runtime.adapt.runtime.AdaptHooks`` on its request
path; they land here as plain tuples in bounded deques (appends are O(1) and hold one lock
for a few microseconds, so observing costs the serving path next to nothing). A ``snapshot``
summarises the window: per stage (tasks, device) the execution-time distribution reported by
the workers, the queueing + transfer time the gateway saw around it, the arrival rate and its
trend, end-to-end latencies and the request mix (input shapes).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

_MAX_SAMPLES = 20_000
_RECENT = 5  # calls that make up a stage's "recent" execution time


@dataclass(frozen=True, slots=True)
class StageWindow:
    """One stage group's measurements in the window (seconds)."""

    key: tuple[tuple[str, ...], str]  # (tasks, device class)
    samples: int
    compute_p50_s: float
    compute_p99_s: float
    compute_mean_s: float
    queue_mean_s: float  # waiting for the device in the worker
    queue_p99_s: float
    transfer_mean_s: float  # gateway-seen minus the worker's queue and compute: the hop
    recent_compute_mean_s: float  # the last few calls only: a step change shows here first
    # calls since ``fresh_since`` (the previous summary the profile folded in): each call is
    # folded into the calibration once, not once per tick while it stays in the window.
    # None: not asked for (the whole window stands in)
    fresh_samples: int | None = None
    fresh_compute_mean_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The rolling window summarised at time ``t``."""

    t: float
    window_s: float
    arrivals: int
    rate_rps: float
    rate_trend_rps_per_s: float  # slope of the arrival rate over the window
    rate_span_s: float  # how far back the current rate level reaches (a level shift cuts it)
    p50_s: float
    p99_s: float
    requests: int
    failed: int
    stages: dict[tuple[tuple[str, ...], str], StageWindow] = field(default_factory=dict)
    mix: dict[str, int] = field(default_factory=dict)

    def forecast_rps(self, horizon_s: float) -> float:
        """Arrival rate ``horizon_s`` ahead on the window's linear trend (never below 0)."""
        return max(0.0, self.rate_rps + self.rate_trend_rps_per_s * horizon_s)


def _level(arrivals: np.ndarray, now: float, span: float) -> tuple[float, float]:
    """The arrival rate at its current level, and how many seconds that level covers.

    The longest recent stretch of the window whose rate agrees (within 3 Poisson sigmas)
    with the last second's: after a step in traffic the estimate follows the step within a
    second, and otherwise averages the whole window (noise down by sqrt(window)).
    """
    if arrivals.size == 0:
        return 0.0, span
    short = min(1.0, span)
    n_s = int(np.count_nonzero(arrivals >= now - short))
    for length in sorted({span, 0.8 * span, 0.6 * span, 0.4 * span, 2 * short}, reverse=True):
        if length <= short or length > span:
            continue
        n_l = int(np.count_nonzero(arrivals >= now - length))
        # the last second against the rest of this stretch: same level?
        rest, n_r = length - short, n_l - n_s
        if rest <= 0:
            continue
        expect = n_r / rest * short
        if abs(n_s - expect) <= 3.0 * np.sqrt(max(expect, 1.0)):
            return n_l / length, length
    return n_s / short, short


class Observer:
    """Rolling window of requests and stage calls (thread-safe; the gateway's threads append).

    Args:
        window_s: how far back ``snapshot`` looks.
    """

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self._lock = threading.Lock()
        self._arrivals: deque[float] = deque(maxlen=_MAX_SAMPLES)
        self._requests: deque[tuple[float, float, bool]] = deque(maxlen=_MAX_SAMPLES)
        self._stages: deque[tuple[float, tuple[str, ...], str, float, float, float]] = deque(
            maxlen=_MAX_SAMPLES
        )
        self._mix: deque[tuple[float, str]] = deque(maxlen=_MAX_SAMPLES)
        self.total_requests = 0
        self.total_failed = 0

    # -- hooks (gateway threads) ----------------------------------------------------------
    def arrival(self, shape_key: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._arrivals.append(now)
            self._mix.append((now, shape_key))

    def stage_done(
        self, tasks: tuple[str, ...], device: str, took_s: float, compute_s: float, queue_s: float
    ) -> None:
        with self._lock:
            self._stages.append((time.monotonic(), tasks, device, took_s, compute_s, queue_s))

    def request_done(self, latency_s: float, ok: bool) -> None:
        with self._lock:
            self._requests.append((time.monotonic(), latency_s, ok))
            self.total_requests += 1
            self.total_failed += int(not ok)

    # -- summary (controller thread) ------------------------------------------------------
    def _trim(self, now: float) -> None:
        cut = now - self.window_s
        while self._arrivals and self._arrivals[0] < cut:
            self._arrivals.popleft()
        for dq in (self._requests, self._stages, self._mix):
            while dq and dq[0][0] < cut:  # type: ignore[index]
                dq.popleft()

    def snapshot(
        self, window_s: float | None = None, since: float = -1.0, fresh_since: float | None = None
    ) -> Snapshot:
        """Summarise the last ``window_s`` (default the observer's window); latencies only of
        requests that started after ``since`` (monotonic: the last plan change); with
        ``fresh_since``, each stage also counts the calls that ended after it."""
        now = time.monotonic()
        win = self.window_s if window_s is None else window_s
        cut = now - win
        with self._lock:
            self._trim(now)
            arrivals = [t for t in self._arrivals if t >= cut]
            reqs = [r for r in self._requests if r[0] >= cut]
            stages = [s for s in self._stages if s[0] >= cut]
            mix = Counter(k for t, k in self._mix if t >= cut)
        span = win
        if arrivals:
            # a window that started before traffic did would under-count the rate
            span = max(min(win, now - arrivals[0]), 1e-3) if len(arrivals) > 1 else win
        rate, rate_span = _level(np.asarray(arrivals), now, span)
        trend = 0.0
        if len(arrivals) >= 8:
            # arrival counts in the two halves of the window: a rising trend only when the
            # change is beyond Poisson noise (z >= 3), so noise does not make the controller flap
            a = np.asarray(arrivals)
            mid = now - span / 2
            n1 = int(np.count_nonzero(a < mid))
            n2 = len(arrivals) - n1
            if n2 - n1 >= 3.0 * np.sqrt(n1 + n2):
                trend = (n2 - n1) / (span / 2) / (span / 2)
        lat = np.asarray([r[1] for r in reqs if r[2] and r[0] - r[1] >= since], dtype=float)
        groups: dict[tuple[tuple[str, ...], str], list[tuple[float, float, float, float]]] = {}
        for t_done, tasks, dev, took, compute, queue in stages:
            groups.setdefault((tasks, dev), []).append((took, compute, queue, t_done))
        summary = {}
        for key, rows in groups.items():
            arr = np.asarray(rows, dtype=float)
            comp = arr[:, 1]
            fresh = comp[arr[:, 3] > fresh_since] if fresh_since is not None else comp
            hop = np.maximum(arr[:, 0] - arr[:, 1] - arr[:, 2], 0.0)
            summary[key] = StageWindow(
                key=key,
                samples=len(rows),
                compute_p50_s=float(np.percentile(comp, 50)),
                compute_p99_s=float(np.percentile(comp, 99)),
                compute_mean_s=float(comp.mean()),
                queue_mean_s=float(arr[:, 2].mean()),
                queue_p99_s=float(np.percentile(arr[:, 2], 99)),
                transfer_mean_s=float(hop.mean()),
                recent_compute_mean_s=float(comp[-_RECENT:].mean()),
                fresh_samples=None if fresh_since is None else int(fresh.size),
                fresh_compute_mean_s=float(fresh.mean()) if fresh.size else 0.0,
            )
        return Snapshot(
            t=now,
            window_s=win,
            arrivals=len(arrivals),
            rate_rps=rate,
            rate_span_s=rate_span,
            rate_trend_rps_per_s=trend,
            p50_s=float(np.percentile(lat, 50)) if lat.size else 0.0,
            p99_s=float(np.percentile(lat, 99)) if lat.size else 0.0,
            requests=int(lat.size),
            failed=sum(1 for r in reqs if not r[2]),
            stages=summary,
            mix=dict(mix),
        )
