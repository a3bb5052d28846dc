"""The fleet study's analytical plans checked against the trace-driven simulator.

For a study row (one P::D pair in one cell) this builds the fleet the plan describes — its TP
degrees and batch caps, ``n_p`` prefill and ``n_d`` decode instances in the planned ratio
(rounded to whole instances) — and runs ``costmodel.llm_sim`` on the cell's fixed ISL/OSL:

* **capacity**: Poisson arrivals at 1.5× the analytical capacity (overload), the throughput
  measured in the steady-state window vs. the plan's tokens/s for the same whole fleet;
* **operating point**: Poisson arrivals at ``utilisation`` × capacity (default 0.8): TTFT,
  TBT (per-request mean) and ITL (per-token gap, p99) vs. the plan's TTFT and TBT, and the
  fraction of requests meeting both bounds.

The analytical model prices a prefill at a full batch and ignores the wait for the batch in
progress and for the queue; the simulator shows what that leaves out (see ``explain``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from terrazzo.costmodel import llm
from terrazzo.costmodel.catalog import DeviceSpec
from terrazzo.costmodel.llm_sim import FleetSpec, PhasePool, SimOptions, SimResult, simulate
from terrazzo.costmodel.traces import synthetic_trace
from terrazzo.errors import TerrazzoError
from terrazzo.report import phases
from terrazzo.report.study import MAX_PREFILL_TOKENS, StudyResult, StudyRow, arch_of

TARGET_REL_ERROR = 0.15
MAX_INSTANCES = 40


@dataclass(frozen=True, slots=True)
class SimCheck:
    """Analytical vs simulated figures of one study row's fleet."""

    cell: str
    pair: str
    sla: str
    prefill_instances: int
    decode_instances: int
    prefill_tp: int
    decode_tp: int
    prefill_batch: int
    decode_batch: int
    requests: int
    # capacity: overload run (decode-bound fleet, batches full)
    analytical_tokens_per_s: float
    sim_tokens_per_s: float
    throughput_rel_error: float
    sim_mean_decode_batch: float
    analytical_tbt_s: float  # decode step at the planned batch and the mean context
    analytical_tbt_max_s: float  # the plan's TBT: step at the longest context
    sim_tbt_p50_s: float
    sim_itl_p99_s: float
    tbt_rel_error: float
    # operating point: Poisson arrivals at ``utilisation`` × capacity
    utilisation: float
    analytical_ttft_s: float
    sim_ttft_p50_s: float
    sim_ttft_p99_s: float
    sim_tbt_p99_at_utilisation_s: float
    sla_attainment: float | None
    sim_usd_per_million_tokens: float | None
    analytical_usd_per_million_tokens: float
    within_target: bool
    explanation: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def instance_counts(ratio: float, max_instances: int = MAX_INSTANCES) -> tuple[int, int]:
    """Whole (prefill, decode) instance counts with d/p ≤ ``ratio`` and as close to it as possible.

    Rounding the decode side down makes decode the (slight) bottleneck, so in an overload run
    decode instances hold their planned batch and the measured TBT is the planned one.
    """
    if not (ratio > 0 and math.isfinite(ratio)):
        raise TerrazzoError(f"decode instances per prefill must be > 0, found {ratio!r}")
    best: tuple[int, int] | None = None
    best_err = math.inf
    for n_p in range(1, max_instances):
        n_d = math.floor(n_p * ratio + 1e-9)
        if n_d < 1:
            continue
        if n_p + n_d > max_instances:
            break
        err = (n_p * ratio - n_d) / (n_p * ratio)
        if err < best_err - 1e-12:
            best, best_err = (n_p, n_d), err
        if err < 0.02:
            break
    if best is None:  # ratio so large that one prefill needs more decodes than the budget
        return (1, max(1, math.floor(ratio)))
    return best


def fleet_of(
    row: StudyRow,
    catalog: Mapping[str, DeviceSpec],
    prices: Mapping[str, float],
    datasheet: Mapping[str, DeviceSpec] | None = None,
    counts: tuple[int, int] | None = None,
) -> FleetSpec:
    """The simulated fleet of a feasible study row (devices with the study's FP8 rule applied)."""
    if not row.feasible:
        raise TerrazzoError(f"{row.pair} in {row.cell} is infeasible: {row.reason}")
    n_p, n_d = counts or instance_counts(row.decode_instances_per_prefill)

    def dev(name: str) -> DeviceSpec:
        ds = datasheet.get(name) if datasheet is not None and name in datasheet else None
        return phases.phase_device(catalog[name], ds).spec

    return FleetSpec(
        model=arch_of(row.model),
        dtype=row.precision,
        prefill=PhasePool(dev(row.prefill), n_p, row.prefill_tp, row.prefill_batch,
                          max(MAX_PREFILL_TOKENS, row.isl), prices.get(row.prefill, 0.0)),
        decode=PhasePool(dev(row.decode), n_d, row.decode_tp, row.decode_batch,
                         MAX_PREFILL_TOKENS, prices.get(row.decode, 0.0)),
    )  # fmt: skip


def analytical_capacity_tokens_per_s(row: StudyRow, n_p: int, n_d: int) -> float:
    """The plan's tokens/s for ``n_p`` prefill and ``n_d`` decode instances (the slower side)."""
    pre_rps = row.tokens_per_s / row.osl  # one prefill instance
    dec_rps = pre_rps / row.decode_instances_per_prefill  # one decode instance
    return min(n_p * pre_rps, n_d * dec_rps) * row.osl


def check_row(
    row: StudyRow,
    result: StudyResult,
    catalog: Mapping[str, DeviceSpec],
    datasheet: Mapping[str, DeviceSpec] | None = None,
    *,
    utilisation: float = 0.8,
    max_requests: int = 150_000,
    seed: int = 0,
) -> SimCheck:
    """Simulate one feasible study row at overload (capacity, TBT) and at ``utilisation`` × capacity (TTFT, SLA)."""
    if not (0 < utilisation < 1.5):
        raise TerrazzoError(f"utilisation must be in (0, 1.5), found {utilisation!r}")
    n_p, n_d = instance_counts(row.decode_instances_per_prefill)
    fleet = fleet_of(row, catalog, result.device_usd_per_hour, datasheet, (n_p, n_d))
    cap_tok = analytical_capacity_tokens_per_s(row, n_p, n_d)
    cap_rps = cap_tok / row.osl
    cfg, dev_d = fleet.model, fleet.decode.device
    mean_step = llm.decode_step_latency_s(
        cfg, dev_d, row.isl + row.osl // 2, row.decode_batch, row.precision, row.decode_tp
    )
    # Arrivals span ~4 request lifetimes so the decode population (n_d · batch sequences, each
    # osl steps) fills and turns over inside the window (warm-up 30%); capped for run time.
    w_est = row.ttft_s + row.osl * mean_step
    n_over = int(min(max_requests, max(400, 1.5 * cap_rps * 4 * w_est, 3 * n_d * row.decode_batch)))
    n_at = int(min(max_requests, max(400, utilisation * cap_rps * 4 * w_est)))
    lengths = f"fixed:{row.isl}/{row.osl}"
    interactive = row.sla == "interactive"
    opts = SimOptions(
        ttft_s=result.options.ttft_s if interactive else None,
        tbt_s=result.options.tbt_s if interactive else None,
        warmup_fraction=0.3,
    )
    over = simulate(fleet, synthetic_trace(lengths, n_over, 1.5 * cap_rps, "poisson", seed), opts)
    at = simulate(fleet, synthetic_trace(lengths, n_at, utilisation * cap_rps, "poisson", seed), opts)  # fmt: skip
    thr_err = over.throughput_tokens_per_s / cap_tok - 1.0
    tbt_err = over.tbt_p50_s / mean_step - 1.0
    ok = abs(thr_err) <= TARGET_REL_ERROR and abs(tbt_err) <= TARGET_REL_ERROR
    usd_h = fleet.usd_per_hour
    return SimCheck(
        cell=f"{row.model} {row.precision} {row.isl}/{row.osl} {row.sla}",
        pair=row.pair,
        sla=row.sla,
        prefill_instances=n_p,
        decode_instances=n_d,
        prefill_tp=row.prefill_tp,
        decode_tp=row.decode_tp,
        prefill_batch=row.prefill_batch,
        decode_batch=row.decode_batch,
        requests=n_over + n_at,
        analytical_tokens_per_s=cap_tok,
        sim_tokens_per_s=over.throughput_tokens_per_s,
        throughput_rel_error=thr_err,
        sim_mean_decode_batch=over.mean_decode_batch,
        analytical_tbt_s=mean_step,
        analytical_tbt_max_s=row.tbt_s,
        sim_tbt_p50_s=over.tbt_p50_s,
        sim_itl_p99_s=over.itl_p99_s,
        tbt_rel_error=tbt_err,
        utilisation=utilisation,
        analytical_ttft_s=row.ttft_s,
        sim_ttft_p50_s=at.ttft_p50_s,
        sim_ttft_p99_s=at.ttft_p99_s,
        sim_tbt_p99_at_utilisation_s=at.tbt_p99_s,
        sla_attainment=at.sla_attainment,
        sim_usd_per_million_tokens=over.usd_per_million_tokens,
        analytical_usd_per_million_tokens=usd_h / 3600.0 / cap_tok * 1e6 if cap_tok > 0 else math.nan,
        within_target=ok,
        explanation=explain(row, over, at, thr_err, tbt_err, utilisation),
    )


def explain(
    row: StudyRow, over: SimResult, at: SimResult, thr_err: float, tbt_err: float, utilisation: float
) -> str:
    """Which analytical assumption the simulation contradicts, in one line (empty if none)."""
    why: list[str] = []
    if abs(thr_err) > TARGET_REL_ERROR or abs(tbt_err) > TARGET_REL_ERROR:
        why.append(
            f"throughput {thr_err:+.0%}, TBT {tbt_err:+.0%}: decode batches average "
            f"{over.mean_decode_batch:.0f} of the planned {row.decode_batch}, prefill busy "
            f"{over.prefill_utilisation:.0%}"
        )
    if at.ttft_p99_s > (1.0 + TARGET_REL_ERROR) * row.ttft_s:
        why.append(
            f"TTFT p99 {at.ttft_p99_s * 1e3:.0f} ms > planned {row.ttft_s * 1e3:.0f} ms at "
            f"{utilisation:.0%} load: the plan prices one full prefill batch and ignores the wait "
            "for the batch in progress and the queue"
        )
    elif at.ttft_p50_s < 0.5 * row.ttft_s:
        why.append(
            f"TTFT p50 {at.ttft_p50_s * 1e3:.0f} ms ≪ planned {row.ttft_s * 1e3:.0f} ms: below capacity "
            "prefill batches are smaller than the planned full batch"
        )
    return "; ".join(why)


def check_study(
    result: StudyResult,
    catalog: Mapping[str, DeviceSpec],
    datasheet: Mapping[str, DeviceSpec] | None = None,
    *,
    pairs: Sequence[str] | None = None,
    utilisation: float = 0.8,
    max_requests: int = 150_000,
) -> list[SimCheck]:
    """Check the best pair of every cell (and ``pairs``, when given) against the simulator."""
    chosen: dict[tuple[Any, ...], StudyRow] = {}
    for r in result.best_per_cell():
        chosen[(*r.cell, r.pair)] = r
    for r in result.rows:
        if pairs and r.pair in pairs and r.feasible:
            chosen[(*r.cell, r.pair)] = r
    return [
        check_row(r, result, catalog, datasheet, utilisation=utilisation, max_requests=max_requests)
        for r in chosen.values()
    ]
