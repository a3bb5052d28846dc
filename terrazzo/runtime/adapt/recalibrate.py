"""Recalibrate: fold served measurements into the cost model's per-op-group latencies, with confidence.

The compile-time cost model gives a prior latency per (task, device class). Each window, the
measured per-request execution time of every stage (a group of tasks on one class) updates an
exponentially weighted estimate of that group; its weight (confidence) grows with the samples
seen, ``n / (n + confidence_samples)``, and decays with age (half-life ``half_life_s``), so a
class that stopped being measured drifts back towards the prior instead of staying frozen.
A group's measurement is shared among its tasks in proportion to their priors; a class-wide
speed factor (measured / prior over every group on it) carries a slowdown seen on one stage
to the tasks not measured there. ``errors`` keeps served-vs-predicted per stage over time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from terrazzo.runtime.adapt.observe import Snapshot


@dataclass(slots=True)
class _Measured:
    mean_s: float
    n: float
    t: float


@dataclass(frozen=True, slots=True)
class StageError:
    """Served vs predicted for one stage at one time (seconds; errors are relative)."""

    t: float
    tasks: tuple[str, ...]
    device: str
    measured_s: float
    prior_s: float
    calibrated_s: float

    @property
    def prior_error(self) -> float:
        return (self.prior_s - self.measured_s) / self.measured_s if self.measured_s else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "t": round(self.t, 3),
            "tasks": list(self.tasks),
            "device": self.device,
            "measured_s": self.measured_s,
            "prior_s": self.prior_s,
            "calibrated_s": self.calibrated_s,
            "prior_error": round(self.prior_error, 4),
        }


class Profile:
    """Per (op group, device class) latency: compile-time prior blended with measurements.

    Args:
        prior_s: task -> device class -> predicted seconds per request (the cost model).
        confidence_samples: samples at which a measurement gets weight 1/2.
        half_life_s: age at which a measurement's weight halves.
        alpha: EWMA weight of a new window.
    """

    def __init__(
        self,
        prior_s: Mapping[str, Mapping[str, float]],
        confidence_samples: int = 20,
        half_life_s: float = 120.0,
        alpha: float = 0.5,
        step_factor: float = 2.0,
    ):
        self.prior_s = {t: dict(d) for t, d in prior_s.items()}
        self.k = float(confidence_samples)
        self.half_life_s = half_life_s
        self.alpha = alpha
        self._lock = threading.Lock()
        self._groups: dict[tuple[tuple[str, ...], str], _Measured] = {}
        self._overhead_s: float | None = None
        self.errors: list[StageError] = []
        self.step_factor = step_factor
        # class -> measured / calibrated ratio of the latest window, where it jumped by at
        # least ``step_factor`` (a slowdown or a recovery): the estimate steps there at once
        self.jumps: dict[str, float] = {}

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.prior_s)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(sorted({d for row in self.prior_s.values() for d in row}))

    def group_prior(self, tasks: tuple[str, ...], device: str) -> float:
        return sum(self.prior_s[t].get(device, math.inf) for t in tasks)

    def _confidence(self, m: _Measured, now: float) -> float:
        age = max(0.0, now - m.t)
        return m.n / (m.n + self.k) * 0.5 ** (age / self.half_life_s)

    def update(self, snap: Snapshot, min_samples: int = 1) -> list[StageError]:
        """Fold one window in; returns the served-vs-predicted rows it recorded."""
        rows = []
        with self._lock:
            self.jumps = {}
            overheads = []
            for (tasks, device), w in snap.stages.items():
                if w.samples < min_samples or any(t not in self.prior_s for t in tasks):
                    continue
                # only calls not folded in before (a window re-folded every tick would keep
                # pulling a class that stepped back towards its old speed until the window
                # rolled past the step, and count each call ~window/interval times)
                new_n = w.samples if w.fresh_samples is None else w.fresh_samples
                new_mean = w.compute_mean_s if w.fresh_samples is None else w.fresh_compute_mean_s
                if new_n == 0:
                    continue
                before = self._estimate_group(tasks, device, snap.t)
                m = self._groups.get((tasks, device))
                ratio = w.recent_compute_mean_s / before if before > 0 else 1.0
                jumped = m is not None and (
                    ratio >= self.step_factor or ratio <= 1 / self.step_factor
                )
                if jumped:
                    self.jumps[device] = max(self.jumps.get(device, 0.0), ratio)
                if m is None or jumped:
                    first = w.recent_compute_mean_s if jumped else w.compute_mean_s
                    m = self._groups[(tasks, device)] = _Measured(first, 0.0, snap.t)
                else:
                    m.mean_s = (1 - self.alpha) * m.mean_s + self.alpha * new_mean
                # a step of ``step_factor`` or more is strong evidence even from a few calls:
                # it starts at full weight, so the class is not trusted at its old speed again
                m.n = min(max(m.n + new_n, self.k if jumped else 0.0), 10 * self.k)
                m.t = snap.t
                overheads.append(w.transfer_mean_s)
                rows.append(
                    StageError(
                        snap.t,
                        tasks,
                        device,
                        w.compute_mean_s,
                        self.group_prior(tasks, device),
                        before,
                    )
                )
            if overheads:
                o = sorted(overheads)[len(overheads) // 2]
                self._overhead_s = o if self._overhead_s is None else 0.5 * (self._overhead_s + o)
            self.errors.extend(rows)
            del self.errors[:-5000]
        return rows

    def hop_s(self) -> float:
        """Measured per-stage hop (gateway <-> worker transfer and RPC), 0 before any."""
        return self._overhead_s or 0.0

    def _device_factor(self, device: str, now: float) -> tuple[float, float]:
        """(measured / prior speed factor of a class, confidence) over its measured groups."""
        num = den = conf = 0.0
        for (tasks, dev), m in self._groups.items():
            if dev != device:
                continue
            c = self._confidence(m, now)
            prior = self.group_prior(tasks, dev)
            if not math.isfinite(prior) or prior <= 0:
                continue
            num += c * m.mean_s / prior
            den += c
            conf = max(conf, c)
        return (num / den if den else 1.0), conf

    def _estimate_group(self, tasks: tuple[str, ...], device: str, now: float) -> float:
        return sum(self._estimate(t, device, now) for t in tasks)

    def _estimate(self, task: str, device: str, now: float) -> float:
        prior = self.prior_s[task].get(device, math.inf)
        if not math.isfinite(prior):
            return math.inf
        best: tuple[float, float] | None = None  # (confidence, value) of the surest group
        for (tasks, dev), m in self._groups.items():
            if dev != device or task not in tasks:
                continue
            c = self._confidence(m, now)
            share = prior / max(self.group_prior(tasks, dev), 1e-12)
            if best is None or c > best[0]:
                best = (c, m.mean_s * share)
        factor, fconf = self._device_factor(device, now)
        by_class = prior * factor
        if best is None:
            return fconf * by_class + (1 - fconf) * prior
        c, value = best
        return c * value + (1 - c) * by_class

    def estimate(self, task: str, device: str) -> float:
        """Calibrated seconds per request of ``task`` on ``device`` (``inf``: cannot run)."""
        with self._lock:
            return self._estimate(task, device, time.monotonic())

    def table(self) -> dict[str, dict[str, float]]:
        """task -> device -> calibrated seconds: the placement solver's latency table."""
        now = time.monotonic()
        with self._lock:
            return {
                t: {d: self._estimate(t, d, now) for d in row} for t, row in self.prior_s.items()
            }

    def slowdown(self, device: str) -> float:
        """Measured / prior speed factor of a class (1.0 when unmeasured)."""
        with self._lock:
            factor, conf = self._device_factor(device, time.monotonic())
        return factor if conf > 0 else 1.0
