"""Calibration fitting: measured op latencies → a CalibrationProfile of roofline efficiencies, and its accuracy.

The cost model's half of calibration: pure numpy over ``OpMeasurement`` values. The harness
that builds and times kernels with TVM sits above codegen (``terrazzo.pipeline.calibrate``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from terrazzo.costmodel.catalog import DeviceSpec
from terrazzo.costmodel.efficiency import MAX_MEMORY_EFFICIENCY, Efficiency
from terrazzo.costmodel.host import LOCAL_DEVICE
from terrazzo.costmodel.profile import CalibrationProfile, EfficiencyBucket, efficiency_key, op_work

# Relax ops that the VM lowers to views (RewriteDataflowReshape): no kernel runs.
VIEW_KINDS = ("reshape", "expand_dims", "squeeze", "flatten")


@dataclass(frozen=True, slots=True)
class OpMeasurement:
    """A timed op with the analyses the cost model uses."""

    name: str
    kind: str
    op_class: str
    flops: int
    nbytes: int
    latency_s: float
    held_out: bool
    param_bytes: int = 0
    bytes_read: int = 0

    @property
    def key(self) -> str:
        return efficiency_key(self.kind, self.op_class, self.param_bytes)

    @property
    def work(self) -> float:
        return op_work(self.op_class, self.flops, self.nbytes, self.param_bytes, self.bytes_read)

    def as_op(self) -> Any:
        """The measured op as an ``ir.Op`` (for predictions)."""
        from terrazzo.ir import Op

        return Op(
            self.name,
            self.kind,
            ("x",),
            (self.name,),
            op_class=self.op_class,
            flops=self.flops,
            bytes_read=self.bytes_read or self.nbytes,
            bytes_written=self.nbytes - (self.bytes_read or self.nbytes),
            param_bytes=self.param_bytes,
        )


# --- fitting -------------------------------------------------------------------------------------

_EC_GRID = np.logspace(-5, 0, 301)
_EM_GRID = np.logspace(-4, math.log10(MAX_MEMORY_EFFICIENCY), 301)


def _predict(
    flops: Any, nbytes: Any, peak: float, bw: float, launch: float, ec: Any, em: Any
) -> Any:
    return launch + np.maximum(flops / (peak * ec), nbytes / (bw * em))


# Even naive GEMM/conv loops stream their weights at ≥ 10% of DRAM bandwidth; without this
# floor a fit on activation-heavy shapes lets the memory term explode on weight-heavy layers.
_MEMORY_FLOOR = {"matmul": 0.1, "conv": 0.1}


def _fit_bucket(ms: Sequence[OpMeasurement], peak: float, bw: float, launch: float) -> Efficiency:
    """Efficiencies minimising squared log error of the roofline over the bucket (grid search)."""
    em_grid = _EM_GRID[_EM_GRID >= _MEMORY_FLOOR.get(ms[0].op_class, 0.0)]
    f = np.array([m.flops for m in ms], dtype=float)[:, None, None]
    b = np.array([m.nbytes for m in ms], dtype=float)[:, None, None]
    t = np.array([m.latency_s for m in ms], dtype=float)[:, None, None]
    pred = _predict(f, b, peak, bw, launch, _EC_GRID[None, :, None], em_grid[None, None, :])
    err = ((np.log(pred) - np.log(t)) ** 2).sum(axis=0)
    # A term the data never makes binding is unidentified; among near-optimal fits take the
    # least binding one (largest efficiencies) so it does not bind on unseen, heavier ops.
    ok = err <= err.min() * 1.02 + 1e-6
    j = int(np.nonzero(ok.any(axis=0))[0].max())
    i = int(np.nonzero(ok[:, j])[0].max())
    return Efficiency(float(_EC_GRID[i]), float(em_grid[j]))


def fit_profile(
    train: Sequence[OpMeasurement],
    spec: DeviceSpec,
    launch_overhead_s: float,
    applies_to: Sequence[str] = (LOCAL_DEVICE,),
    meta: dict[str, Any] | None = None,
) -> CalibrationProfile:
    """Fit per-class, size-bucketed efficiencies to measured ops.

    A class with ≥ 6 points gets up to 3 buckets split at equal counts along the op's work
    (``profile.op_work``); untuned kernels' efficiency depends on size. ``launch_overhead_s``
    is refined jointly: scaled by 0.25-1.5 and kept where the fit error is least.
    """
    peak = spec.peak_flops_per_s("fp32")
    bw = spec.mem_bw_bytes_per_s
    by_class: dict[str, list[OpMeasurement]] = {}
    by_kind: dict[str, list[OpMeasurement]] = {}
    for m in train:
        by_class.setdefault(m.op_class, []).append(m)
        by_kind.setdefault(m.key, []).append(m)
    best: tuple[float, float, Any, Any] | None = None
    for scale in (0.25, 0.5, 0.75, 1.0, 1.5):
        launch = launch_overhead_s * scale
        eff = {cls: _fit_buckets(ms, peak, bw, launch) for cls, ms in by_class.items()}
        # a kind gets its own table when it has enough points and its class has several kinds
        kind_eff = {}
        for kind, ms in by_kind.items():
            cls = ms[0].op_class
            if len(ms) >= 2 and len(by_class[cls]) > len(ms):
                kind_eff[kind] = _fit_buckets(ms, peak, bw, launch)
        err = 0.0
        for m in train:
            table = kind_eff.get(m.key) or eff[m.op_class]
            work = m.work
            e = next((b.efficiency for b in table if work <= b.max_work), table[-1].efficiency)
            pred = _predict(
                np.float64(m.flops), np.float64(m.nbytes), peak, bw, launch, e.compute, e.memory
            )
            err += float(np.log(pred / m.latency_s) ** 2)
        if best is None or err < best[0]:
            best = (err, launch, eff, kind_eff)
    assert best is not None
    _, launch_overhead_s, eff, kind_eff = best
    return CalibrationProfile(
        device=spec.name,
        applies_to=tuple(applies_to),
        launch_overhead_s=launch_overhead_s,
        efficiency=MappingProxyType(eff),
        device_spec=spec,
        meta=MappingProxyType(dict(meta or {})),
        zero_cost_kinds=VIEW_KINDS,
        kind_efficiency=MappingProxyType(kind_eff),
    )


def _bucket_groups(works: Sequence[float]) -> list[list[int]]:
    """Index groups (of ``works``, sorted ascending) that buckets are fitted on.

    Few distinct values (a discrete measure such as the weight-walk pressure): one group per
    value, a value with a single point joining its lower neighbour. Otherwise up to 4
    equal-count groups, never splitting equal values.
    """
    n = len(works)
    distinct = sorted(set(works))
    if 1 < len(distinct) <= 6 and n >= 4:
        groups: list[list[int]] = []
        for v in distinct:
            idx = [i for i in range(n) if works[i] == v]
            if groups and (len(idx) < 2 or len(groups[-1]) < 2):
                groups[-1].extend(idx)
            else:
                groups.append(idx)
        return groups
    nb = 1 if n < 6 else min(4, n // 3)
    cuts = [round(n * k / nb) for k in range(1, nb)]
    out, start = [], 0
    for c in cuts:
        while 0 < c < n and works[c] == works[c - 1]:
            c += 1
        if c > start:
            out.append(list(range(start, c)))
            start = c
    if start < n:
        out.append(list(range(start, n)))
    return out


def _fit_buckets(
    ms: Sequence[OpMeasurement], peak: float, bw: float, launch: float
) -> tuple[EfficiencyBucket, ...]:
    ms = sorted(ms, key=lambda m: m.work)
    chunks = _bucket_groups([m.work for m in ms])
    buckets = []
    for k, idx in enumerate(chunks):
        group = [ms[i] for i in idx]
        if k == len(chunks) - 1:
            bound = math.inf
        else:
            hi = group[-1].work
            lo = ms[chunks[k + 1][0]].work
            bound = math.sqrt(max(hi, 1.0) * max(lo, 1.0))
        buckets.append(EfficiencyBucket(bound, _fit_bucket(group, peak, bw, launch)))
    return tuple(buckets)


# --- accuracy ------------------------------------------------------------------------------------


def mape(pred: Sequence[float], meas: Sequence[float]) -> float:
    """Mean absolute percentage error of predictions against measurements, in percent."""
    p, m = np.asarray(pred, float), np.asarray(meas, float)
    return float(np.mean(np.abs(p - m) / m) * 100.0) if len(m) else float("nan")


def spearman(pred: Sequence[float], meas: Sequence[float]) -> float:
    """Spearman rank correlation of predictions and measurements."""
    if len(pred) < 2:
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr(pred, meas).statistic)
