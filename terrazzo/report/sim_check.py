"""The fleet study's analytical plans checked against the trace-driven simulator.

For a study row (one P::D pair in one cell) this builds fleets from the plan — its devices, TP
degrees and batch caps, whole numbers of prefill and decode instances — and runs
``costmodel.llm_sim`` on the cell's fixed ISL/OSL with Poisson arrivals:

* **decode capacity**: decode instances at half the planned share (so prefill supplies twice
  what they can take): tokens/s per decode instance and TBT at the planned batch;
* **prefill capacity**: decode instances at twice the planned share: requests/s per prefill
  instance (the plan's tokens/s);
* **operating point**: the planned ratio, arrivals at ``utilisation`` × the plan's capacity
  (default 0.8): TTFT p50/p99 and the fraction of requests meeting the TTFT and TBT bounds.

The two capacity runs check the phase model's throughput and TBT; the operating point shows
what the plan leaves out: it prices one full prefill batch, so TTFT excludes the wait for the
batch in progress and the queue, and a fleet sized at 100% utilisation has no headroom.
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
SLA_TARGET = 0.99
MAX_INSTANCES = 48


@dataclass(frozen=True, slots=True)
class SimCheck:
    """Analytical vs simulated figures of one study row (rates per instance, times in s)."""

    cell: str
    pair: str
    sla: str
    prefill_tp: int
    decode_tp: int
    prefill_batch: int
    decode_batch: int
    requests: int
    # decode capacity run
    decode_run_instances: tuple[int, int]
    analytical_decode_tokens_per_s: float  # per decode instance
    sim_decode_tokens_per_s: float
    decode_rel_error: float
    sim_mean_decode_batch: float
    analytical_tbt_s: float  # decode step at the planned batch and the mean context
    analytical_tbt_max_s: float  # the plan's TBT: the step at the longest context
    sim_tbt_p50_s: float
    sim_itl_p99_s: float
    tbt_rel_error: float
    # prefill capacity run
    prefill_run_instances: tuple[int, int]
    analytical_tokens_per_s: float  # per prefill instance: the plan's tokens/s
    sim_tokens_per_s: float
    throughput_rel_error: float
    # operating point
    plan_instances: tuple[int, int]
    utilisation: float
    offered_requests_per_s: float
    analytical_ttft_s: float
    sim_ttft_p50_s: float
    sim_ttft_p99_s: float
    sim_tbt_p99_s: float
    sla_attainment: float | None
    # highest load (fraction of the plan's capacity) at which ≥ SLA_TARGET of requests meet the
    # TTFT and TBT bounds (interactive rows, when asked for; None otherwise)
    sla_headroom_utilisation: float | None
    sim_usd_per_million_tokens: float | None
    analytical_usd_per_million_tokens: float
    within_target: bool
    explanation: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def instance_counts(
    ratio: float, round_down: bool = True, max_instances: int = MAX_INSTANCES
) -> tuple[int, int]:
    """Whole (prefill, decode) instance counts whose ratio d/p is as close to ``ratio`` as possible.

    ``round_down``: d/p ≤ ratio (decode the bottleneck), else d/p ≥ ratio (prefill the bottleneck).
    """
    if not (ratio > 0 and math.isfinite(ratio)):
        raise TerrazzoError(f"decode instances per prefill must be > 0, found {ratio!r}")
    best: tuple[int, int] | None = None
    best_err = math.inf
    for n_p in range(1, max_instances):
        n_d = math.floor(n_p * ratio + 1e-9) if round_down else math.ceil(n_p * ratio - 1e-9)
        if n_d < 1:
            continue
        if n_p + n_d > max_instances:
            break
        err = abs(n_p * ratio - n_d) / (n_p * ratio)
        if err < best_err - 1e-12:
            best, best_err = (n_p, n_d), err
        if err < 0.02:
            break
    if best is None:  # one prefill needs more decodes than the budget allows
        return (1, max(1, math.floor(ratio) if round_down else math.ceil(ratio)))
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


def _run(
    row: StudyRow,
    fleet: FleetSpec,
    rate_per_s: float,
    span_s: float,
    opts: SimOptions,
    max_requests: int,
    seed: int,
    short: list[str],
) -> SimResult:
    need = max(400, int(rate_per_s * span_s))
    n = min(max_requests, need)
    if n < need:
        short.append(f"{n} < {need}")
    trace = synthetic_trace(f"fixed:{row.isl}/{row.osl}", n, rate_per_s, "poisson", seed)
    return simulate(fleet, trace, opts)


def check_row(
    row: StudyRow,
    result: StudyResult,
    catalog: Mapping[str, DeviceSpec],
    datasheet: Mapping[str, DeviceSpec] | None = None,
    *,
    utilisation: float = 0.8,
    max_requests: int = 150_000,
    seed: int = 0,
    headroom: bool = False,
) -> SimCheck:
    """Run the decode-capacity, prefill-capacity and operating-point simulations of one feasible row."""
    if not (0 < utilisation < 1.5):
        raise TerrazzoError(f"utilisation must be in (0, 1.5), found {utilisation!r}")
    ratio = row.decode_instances_per_prefill
    pre_rps = row.tokens_per_s / row.osl  # one prefill instance, as planned
    dec_rps = pre_rps / ratio  # one decode instance
    prices = result.device_usd_per_hour
    plan = fleet_of(row, catalog, prices, datasheet, instance_counts(ratio))
    cfg, dev_d = plan.model, plan.decode.device
    mean_step = llm.decode_step_latency_s(
        cfg, dev_d, row.isl + row.osl // 2, row.decode_batch, row.precision, row.decode_tp
    )
    # A request lives ~ TTFT + osl steps; arrivals span several lifetimes so the decode
    # population fills and turns over inside the window (the first 30% is warm-up).
    life_s = row.ttft_s + row.osl * mean_step
    interactive = row.sla == "interactive"
    short: list[str] = []  # runs capped below the steady-state length
    opts = SimOptions(
        ttft_s=result.options.ttft_s if interactive else None,
        tbt_s=result.options.tbt_s if interactive else None,
        warmup_fraction=0.3,
    )
    # Decode capacity: prefill supplies ~2x what the decode instances take.
    dec_fleet = fleet_of(row, catalog, prices, datasheet, instance_counts(ratio / 2))
    n_p, n_d = dec_fleet.prefill.instances, dec_fleet.decode.instances
    dec = _run(row, dec_fleet, 1.2 * min(n_p * pre_rps, 2 * n_d * dec_rps), 5 * life_s, opts, max_requests, seed, short)  # fmt: skip
    sim_dec = dec.throughput_tokens_per_s / n_d
    dec_err = sim_dec / (dec_rps * row.osl) - 1.0
    tbt_err = dec.tbt_p50_s / mean_step - 1.0
    # Prefill capacity: decode instances can take ~2x what prefill supplies.
    pre_fleet = fleet_of(row, catalog, prices, datasheet, instance_counts(2 * ratio, round_down=False))  # fmt: skip
    n_p2 = pre_fleet.prefill.instances
    pre = _run(row, pre_fleet, 1.5 * n_p2 * pre_rps, 4 * life_s, opts, max_requests, seed, short)
    sim_pre = pre.throughput_tokens_per_s / n_p2
    thr_err = sim_pre / row.tokens_per_s - 1.0
    # Operating point: the planned ratio at ``utilisation`` of its capacity.
    n_p3, n_d3 = plan.prefill.instances, plan.decode.instances
    cap_rps = min(n_p3 * pre_rps, n_d3 * dec_rps)
    at = _run(row, plan, utilisation * cap_rps, 4 * life_s, opts, max_requests, seed, short)
    ok = max(abs(dec_err), abs(tbt_err), abs(thr_err)) <= TARGET_REL_ERROR
    room: float | None = None
    if headroom and interactive:
        # Bisect the load at which SLA_TARGET of requests still meet both bounds.
        lo, hi = 0.0, 1.0
        for _ in range(6):
            mid = (lo + hi) / 2
            r = _run(row, plan, mid * cap_rps, 4 * life_s, opts, max_requests, seed, short)
            if r.sla_attainment is not None and r.sla_attainment >= SLA_TARGET:
                lo = mid
            else:
                hi = mid
        room = lo
    usd_plan = plan.usd_per_hour / (cap_rps * row.osl)
    return SimCheck(
        cell=f"{row.model} {row.precision} {row.isl}/{row.osl} {row.sla}",
        pair=row.pair,
        sla=row.sla,
        prefill_tp=row.prefill_tp,
        decode_tp=row.decode_tp,
        prefill_batch=row.prefill_batch,
        decode_batch=row.decode_batch,
        requests=dec.requests + pre.requests + at.requests,
        decode_run_instances=(n_p, n_d),
        analytical_decode_tokens_per_s=dec_rps * row.osl,
        sim_decode_tokens_per_s=sim_dec,
        decode_rel_error=dec_err,
        sim_mean_decode_batch=dec.window_mean_decode_batch,
        analytical_tbt_s=mean_step,
        analytical_tbt_max_s=row.tbt_s,
        sim_tbt_p50_s=dec.tbt_p50_s,
        sim_itl_p99_s=dec.itl_p99_s,
        tbt_rel_error=tbt_err,
        prefill_run_instances=(n_p2, pre_fleet.decode.instances),
        analytical_tokens_per_s=row.tokens_per_s,
        sim_tokens_per_s=sim_pre,
        throughput_rel_error=thr_err,
        plan_instances=(n_p3, n_d3),
        utilisation=utilisation,
        offered_requests_per_s=at.offered_requests_per_s,
        analytical_ttft_s=row.ttft_s,
        sim_ttft_p50_s=at.ttft_p50_s,
        sim_ttft_p99_s=at.ttft_p99_s,
        sim_tbt_p99_s=at.tbt_p99_s,
        sla_attainment=at.sla_attainment,
        sla_headroom_utilisation=room,
        sim_usd_per_million_tokens=at.usd_per_million_tokens,
        analytical_usd_per_million_tokens=usd_plan / 3600.0 * 1e6,
        within_target=ok and not short,
        explanation=(
            f"runs capped by max_requests ({', '.join(short)} needed for steady state): not "
            "steady-state figures; "
            if short
            else ""
        )
        + explain(row, dec, pre, at, dec_err, tbt_err, thr_err, utilisation),
    )


def explain(row: StudyRow, dec: SimResult, pre: SimResult, at: SimResult, dec_err: float,
            tbt_err: float, thr_err: float, utilisation: float) -> str:  # fmt: skip
    """Which analytical assumption the simulation contradicts, in one line (empty if none)."""
    why: list[str] = []
    if abs(dec_err) > TARGET_REL_ERROR or abs(tbt_err) > TARGET_REL_ERROR:
        why.append(
            f"decode {dec_err:+.0%}, TBT {tbt_err:+.0%}: decode batches average "
            f"{dec.window_mean_decode_batch:.0f} of the planned {row.decode_batch}"
        )
    if abs(thr_err) > TARGET_REL_ERROR:
        why.append(f"prefill throughput {thr_err:+.0%} (batches of up to {pre.max_prefill_batch})")
    if at.ttft_p99_s > (1.0 + TARGET_REL_ERROR) * row.ttft_s:
        why.append(
            f"TTFT p99 {at.ttft_p99_s * 1e3:.0f} ms > planned {row.ttft_s * 1e3:.0f} ms at "
            f"{utilisation:.0%} load: the plan prices one full prefill batch and ignores the wait "
            "for the batch in progress and the queue"
        )
    elif at.ttft_p50_s < 0.5 * row.ttft_s:
        why.append(
            f"TTFT p50 {at.ttft_p50_s * 1e3:.0f} ms < half the planned {row.ttft_s * 1e3:.0f} ms: "
            "below capacity prefill batches are smaller than the planned full batch"
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
    headroom: bool = False,
) -> list[SimCheck]:
    """Check the best pair of every cell (and ``pairs``, when given) against the simulator."""
    chosen: dict[tuple[Any, ...], StudyRow] = {}
    for r in result.best_per_cell():
        chosen[(*r.cell, r.pair)] = r
    for r in result.rows:
        if pairs and r.pair in pairs and r.feasible:
            chosen[(*r.cell, r.pair)] = r
    return [
        check_row(
            r,
            result,
            catalog,
            datasheet,
            utilisation=utilisation,
            max_requests=max_requests,
            headroom=headroom,
        )  # fmt: skip
        for r in chosen.values()
    ]


def print_checks(checks: Any) -> None:
    """The analytical-vs-simulated table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Study plans: analytical (model) vs simulated (sim); capacities per instance")
    for h in ("cell", "pair", "prefill tok/s model", "sim", "err", "decode tok/s model", "sim", "err",
              "TBT model", "sim", "err", "TTFT model", "sim p50/p99", "SLA", "99% SLA up to", "ok"):  # fmt: skip
        t.add_column(h, justify="left" if h in ("cell", "pair") else "right", no_wrap=True)
    for c in checks:
        t.add_row(
            c.cell, c.pair,
            f"{c.analytical_tokens_per_s:,.0f}", f"{c.sim_tokens_per_s:,.0f}", f"{c.throughput_rel_error:+.1%}",
            f"{c.analytical_decode_tokens_per_s:,.0f}", f"{c.sim_decode_tokens_per_s:,.0f}", f"{c.decode_rel_error:+.1%}",
            f"{c.analytical_tbt_s * 1e3:.1f} ms", f"{c.sim_tbt_p50_s * 1e3:.1f} ms", f"{c.tbt_rel_error:+.1%}",
            f"{c.analytical_ttft_s * 1e3:.0f} ms", f"{c.sim_ttft_p50_s * 1e3:.0f}/{c.sim_ttft_p99_s * 1e3:.0f} ms",
            "-" if c.sla_attainment is None else f"{c.sla_attainment:.0%}",
            "-" if c.sla_headroom_utilisation is None else f"{c.sla_headroom_utilisation:.0%} load",
            "yes" if c.within_target else "no",
        )  # fmt: skip
    Console(width=220).print(t)
    for c in checks:
        if c.explanation:
            print(f"{c.cell} {c.pair}: {c.explanation}")
