"""Discrete-event simulation of a prefill::decode (P::D) fleet serving a request trace.

Sits beside the analytical phase model (``costmodel.llm``) and checks it: every iteration's
duration comes from :func:`llm.prefill_latency_s` and :func:`llm.decode_step_latency_s`, so the
simulator adds queueing, batching dynamics and link contention, never a second cost model.

What is simulated (the choices a vLLM / Dynamo / DistServe user expects):

* **Routing**: an arriving request joins the prefill instance with the fewest queued prompt
  tokens (join-shortest-queue).
* **Prefill batching**: an idle prefill instance takes requests first-come-first-served while
  the batch stays within ``max_batch`` prompts, the token budget ``max_batch_tokens`` (vLLM's
  ``max_num_batched_tokens``) and the KV memory left beside the weights; one oversized prompt
  runs alone. A ragged batch is priced as ``n`` prompts of the mean length (exact for the linear
  FLOP and byte terms; the quadratic attention term, < 5% of prefill FLOPs below 5k tokens on
  an 8B/70B model, uses the mean length squared).
* **KV transfer**: after prefill, requests wait first-come-first-served for a decode instance
  with room (the one with the most free KV); the decode instance reserves KV for the whole
  sequence (prompt + output) at that point, so no preemption ever happens (vLLM with known
  ``max_tokens``). Each transfer crosses the network: latency + bytes / min(tp_p·NIC_p,
  tp_d·NIC_d), serialised on the prefill instance's egress and the decode instance's ingress.
  The first token is sampled at the end of prefill and delivered with the KV: **TTFT = queueing
  + prefill + KV transfer**, as in ``llm.estimate``.
* **Continuous batching** on decode instances: iteration-level scheduling; arrivals join at the
  next iteration boundary; a sequence leaves after its last token. Each step's duration is
  ``decode_step_latency_s`` at the batch's mean context (exact: its byte and FLOP terms are
  linear in the summed context). Runs of steps with an unchanged batch are advanced in one
  event (the step time is affine in the step index between memory- and compute-bound, so the
  run's duration uses the mean context over the run).
* **Token counting**: a request with O output tokens gets token 1 from prefill and O − 1 decode
  steps. Its TBT is (last token − first token) / (O − 1) (vLLM's TPOT); SLA attainment counts
  requests with TTFT ≤ bound and TBT ≤ bound.

Runs in plain Python with ``heapq``: ~10k requests take about a second.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from terrazzo.costmodel import llm
from terrazzo.costmodel.catalog import DeviceSpec
from terrazzo.costmodel.efficiency import LINK_LATENCY_S
from terrazzo.costmodel.tco import usd_per_million_tokens
from terrazzo.costmodel.traces import TraceRequest
from terrazzo.errors import CostModelError


@dataclass(frozen=True, slots=True)
class PhasePool:
    """Identical instances of one phase: ``instances`` × (``tp`` devices of class ``device``).

    ``max_batch``: prompts per prefill batch, or sequences per decode batch (vLLM
    ``max_num_seqs``). ``max_batch_tokens``: prefill token budget (ignored for decode).
    ``usd_per_hour_per_device``: price of one device (``tco.usd_per_hour``); 0 when unpriced.
    """

    device: DeviceSpec
    instances: int = 1
    tp: int = 1
    max_batch: int = 1024
    max_batch_tokens: int = 65536
    usd_per_hour_per_device: float = 0.0

    def __post_init__(self) -> None:
        for name in ("instances", "tp", "max_batch", "max_batch_tokens"):
            if getattr(self, name) < 1:
                raise CostModelError(f"PhasePool.{name} must be ≥ 1, found {getattr(self, name)!r}")
        if self.tp > self.device.chassis_size:
            raise CostModelError(
                f"tensor parallel degree {self.tp} exceeds {self.device.name}'s chassis_size "
                f"{self.device.chassis_size}"
            )
        if not (self.usd_per_hour_per_device >= 0):
            raise CostModelError(f"PhasePool.usd_per_hour_per_device must be ≥ 0, found {self.usd_per_hour_per_device!r}")  # fmt: skip

    @property
    def usd_per_hour(self) -> float:
        return self.instances * self.tp * self.usd_per_hour_per_device


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """A P::D fleet serving one model at one precision."""

    model: llm.LLMConfig
    dtype: str
    prefill: PhasePool
    decode: PhasePool

    def kv_capacity_tokens(self, pool: PhasePool) -> int:
        """Tokens of KV one instance of ``pool`` holds beside the weights (0 if weights do not fit)."""
        free = pool.tp * pool.device.mem_bytes * llm.MEM_UTILISATION - self.model.weight_bytes(
            self.dtype
        )
        per_token = self.model.kv_bytes_per_token(self.dtype)
        return max(0, int(free // per_token))

    @property
    def kv_link_bw_bytes_per_s(self) -> float:
        """KV transfer bandwidth between a prefill and a decode instance (network, per side's NICs)."""
        p, d = self.prefill, self.decode
        return min(p.tp * p.device.scaleout_bw_bytes_per_s, d.tp * d.device.scaleout_bw_bytes_per_s)

    @property
    def usd_per_hour(self) -> float:
        return self.prefill.usd_per_hour + self.decode.usd_per_hour


@dataclass(frozen=True, slots=True)
class SimOptions:
    """SLA bounds and the measurement window (the first ``warmup_fraction`` of arrivals is excluded)."""

    ttft_s: float | None = None
    tbt_s: float | None = None
    warmup_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not (0.0 <= self.warmup_fraction < 1.0):
            raise CostModelError(
                f"warmup_fraction must be in [0, 1), found {self.warmup_fraction!r}"
            )
        for name in ("ttft_s", "tbt_s"):
            v = getattr(self, name)
            if v is not None and not (v > 0):
                raise CostModelError(f"SimOptions.{name} must be > 0, found {v!r}")


@dataclass(frozen=True, slots=True)
class SimResult:
    """What a simulation measured. Latencies in seconds; percentiles over requests (TTFT, TBT)
    or over output tokens (ITL, the gap between consecutive tokens)."""

    requests: int
    completed: int
    makespan_s: float
    window_s: float
    throughput_tokens_per_s: float  # output tokens/s inside the measurement window
    input_tokens_per_s: float
    requests_per_s: float
    offered_requests_per_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    ttft_mean_s: float
    tbt_p50_s: float
    tbt_p99_s: float
    itl_p99_s: float
    e2e_mean_s: float
    queue_mean_s: float  # arrival → prefill start
    sla_attainment: float | None
    usd_per_hour: float
    usd_per_million_tokens: float | None
    mean_in_system: float  # time-average requests in the system over the window (Little's L)
    window_arrival_rate_per_s: float  # λ over the window
    window_e2e_mean_s: float  # W of requests arriving in the window
    max_decode_batch: int
    mean_decode_batch: float  # over the stepping time of the whole run
    window_mean_decode_batch: float  # over the stepping time inside the window
    max_prefill_batch: int
    prefill_utilisation: float
    decode_utilisation: float
    events: int
    per_request: tuple[tuple[float, float, float], ...] = field(default=(), repr=False)

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "per_request"}
        return out


# ---------------------------------------------------------------------------------------------


def _interp(fn: Callable[[int], float], x: float) -> float:
    """``fn`` at a fractional argument: linear between ⌊x⌋ and ⌈x⌉ (exact where fn is affine)."""
    lo = math.floor(x)
    frac = x - lo
    if frac == 0.0:
        return fn(lo)
    return fn(lo) * (1.0 - frac) + fn(lo + 1) * frac


class _Req:
    __slots__ = ("i", "arrival", "inp", "out", "prefill_start", "first_token", "finish",
                 "join_step", "dec", "steps_left")  # fmt: skip

    def __init__(self, i: int, r: TraceRequest) -> None:
        self.i, self.arrival, self.inp, self.out = i, r.arrival_s, r.input_tokens, r.output_tokens
        self.prefill_start = math.nan
        self.first_token = math.nan
        self.finish = math.nan
        self.join_step = 0
        self.dec = -1
        self.steps_left = r.output_tokens - 1


class _Prefill:
    __slots__ = ("idx", "queue", "queued_tokens", "busy", "nic_free", "busy_s")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.queue: deque[_Req] = deque()
        self.queued_tokens = 0
        self.busy = False
        self.nic_free = 0.0
        self.busy_s = 0.0


class _Decode:
    __slots__ = ("idx", "reserved_tokens", "reserved_seqs", "pending", "active", "finish_heap",
                 "ctx_base_sum", "step", "busy", "chunk_start", "chunk_k", "chunk_step_s",
                 "chunk_steps0", "version", "nic_free", "busy_s", "batch_time")  # fmt: skip

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.reserved_tokens = 0
        self.reserved_seqs = 0
        self.pending: list[_Req] = []
        self.active = 0
        self.finish_heap: list[tuple[int, int, _Req]] = []
        self.ctx_base_sum = 0  # Σ (context at join − step counter at join) over active sequences
        self.step = 0  # iterations completed by this instance
        self.busy = False
        self.chunk_start = 0.0
        self.chunk_k = 0
        self.chunk_step_s = 0.0
        self.chunk_steps0 = 0
        self.version = 0
        self.nic_free = 0.0
        self.busy_s = 0.0
        self.batch_time = 0.0  # ∫ batch size dt


_ARRIVE, _PREFILL_DONE, _KV_ARRIVED, _CHUNK_END, _KICK_PREFILL, _KICK_DECODE = range(6)


def simulate(
    fleet: FleetSpec,
    trace: Sequence[TraceRequest],
    options: SimOptions | None = None,
    *,
    keep_requests: bool = False,
) -> SimResult:
    """Serve ``trace`` on ``fleet`` and measure latency, throughput and cost.

    Args:
        fleet: the P::D fleet (devices, TP degrees, instance counts, batch caps, prices).
        trace: requests sorted or not by arrival (they are sorted here).
        options: SLA bounds and the measurement window.
        keep_requests: also return (TTFT, TBT, e2e) of every request in ``per_request``.

    Raises:
        CostModelError: an empty trace, weights that do not fit an instance, or a request
            whose KV alone exceeds an instance's memory (it could never be served).
    """
    opts = options or SimOptions()
    if not trace:
        raise CostModelError("the trace has no requests")
    cfg, dtype = fleet.model, fleet.dtype
    P, D = fleet.prefill, fleet.decode
    cap_p, cap_d = fleet.kv_capacity_tokens(P), fleet.kv_capacity_tokens(D)
    for pool, cap, phase in ((P, cap_p, "prefill"), (D, cap_d, "decode")):
        if cap < 1:
            raise CostModelError(
                f"{cfg.name} {dtype} weights ({cfg.weight_bytes(dtype) / 1e9:.1f} GB) leave no room for KV on "
                f"{phase} instances of {pool.tp}x{pool.device.name} ({pool.device.mem_bytes / 1e9:.0f} GB each, "
                f"{llm.MEM_UTILISATION:.0%} usable)"
            )
    reqs = [_Req(i, r) for i, r in enumerate(sorted(trace, key=lambda r: r.arrival_s))]
    for r in reqs:
        if r.out < 1 or r.inp < 1:
            raise CostModelError(
                f"request {r.i}: input and output tokens must be ≥ 1 (found {r.inp}, {r.out})"
            )
        if r.inp > cap_p:
            raise CostModelError(
                f"request {r.i} has a {r.inp}-token prompt; a prefill instance ({P.tp}x{P.device.name}) holds "
                f"KV for {cap_p} tokens"
            )
        if r.inp + r.out > cap_d:
            raise CostModelError(
                f"request {r.i} needs KV for {r.inp + r.out} tokens; a decode instance ({D.tp}x{D.device.name}) "
                f"holds {cap_d}"
            )

    kv_per_token = cfg.kv_bytes_per_token(dtype)
    link_bw = fleet.kv_link_bw_bytes_per_s
    link_lat = LINK_LATENCY_S["network"]
    pre = [_Prefill(i) for i in range(P.instances)]
    dec = [_Decode(i) for i in range(D.instances)]
    waiting: deque[tuple[_Req, int]] = deque()  # prefilled, waiting for a decode slot
    events: list[tuple[float, int, int, int, Any]] = []
    seq = 0

    def push(t: float, kind: int, payload: Any, version: int = 0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, version, payload))

    def prefill_s(n: int, tokens: int) -> float:
        return _interp(
            lambda L: llm.prefill_latency_s(cfg, P.device, max(1, L), n, dtype, P.tp), tokens / n
        )

    def step_s(batch: int, mean_ctx: float) -> float:
        return _interp(
            lambda c: llm.decode_step_latency_s(cfg, D.device, max(1, c), batch, dtype, D.tp),
            mean_ctx,
        )

    # measurement window: arrivals after the warm-up fraction up to the last arrival
    t_first, t_last = reqs[0].arrival, reqs[-1].arrival
    w0 = t_first + opts.warmup_fraction * (t_last - t_first)
    w1 = t_last if t_last > w0 else math.inf  # a single burst: measure to the end
    tokens_in_window = 0
    in_tokens_in_window = 0
    in_system = 0
    last_t = 0.0
    area_in_system = 0.0
    itl_s: list[float] = []
    itl_w: list[int] = []
    max_dec_batch = 0
    max_pre_batch = 0
    n_events = 0
    win_busy = 0.0  # decode-instance seconds of stepping inside the window
    win_batch_time = 0.0  # ∫ batch dt over them

    def advance_clock(now: float) -> None:
        nonlocal last_t, area_in_system
        a, b = max(last_t, w0), min(now, w1)
        if b > a:
            area_in_system += in_system * (b - a)
        last_t = now

    def count_tokens(now: float, n: int) -> None:
        nonlocal tokens_in_window
        if w0 <= now <= w1:
            tokens_in_window += n

    def start_prefill(p: _Prefill, now: float) -> None:
        nonlocal max_pre_batch
        if p.busy or not p.queue:
            return
        batch: list[_Req] = []
        tokens = 0
        budget = min(P.max_batch_tokens, cap_p)
        while p.queue and len(batch) < P.max_batch:
            r = p.queue[0]
            if batch and tokens + r.inp > budget:
                break
            p.queue.popleft()
            p.queued_tokens -= r.inp
            batch.append(r)
            tokens += r.inp
        for r in batch:
            r.prefill_start = now
        dur = prefill_s(len(batch), tokens)
        p.busy = True
        p.busy_s += dur
        max_pre_batch = max(max_pre_batch, len(batch))
        push(now + dur, _PREFILL_DONE, (p, batch))

    def dispatch(now: float) -> None:
        # FCFS: the head waits until some decode instance can reserve its whole sequence.
        while waiting:
            r, p_idx = waiting[0]
            need = r.inp + r.out
            best: _Decode | None = None
            for d in dec:
                if d.reserved_seqs < D.max_batch and d.reserved_tokens + need <= cap_d:
                    if best is None or d.reserved_tokens < best.reserved_tokens:
                        best = d
            if best is None:
                return
            waiting.popleft()
            best.reserved_tokens += need
            best.reserved_seqs += 1
            r.dec = best.idx
            # Egress and ingress are separate FIFO queues: the prefill's NIC sends in order,
            # the decode's NIC receives in order, and a busy receiver delays this transfer
            # without holding the sender's NIC (which would chain every NIC into one queue).
            p = pre[p_idx]
            wire = r.inp * kv_per_token / link_bw
            sent = max(now, p.nic_free) + wire
            p.nic_free = sent
            received = max(sent, best.nic_free + wire)
            best.nic_free = received
            push(received + link_lat, _KV_ARRIVED, r)

    def start_chunk(d: _Decode, now: float) -> None:
        nonlocal max_dec_batch
        for r in d.pending:
            r.join_step = d.step
            d.ctx_base_sum += r.inp + 1 - d.step
            d.active += 1
            heapq.heappush(d.finish_heap, (d.step + r.steps_left, r.i, r))
        d.pending.clear()
        if d.active == 0:
            d.busy = False
            return
        max_dec_batch = max(max_dec_batch, d.active)
        k = d.finish_heap[0][0] - d.step
        mean_ctx = d.ctx_base_sum / d.active + d.step
        s = step_s(d.active, mean_ctx + (k - 1) / 2.0)
        d.busy = True
        d.chunk_start, d.chunk_k, d.chunk_step_s, d.chunk_steps0 = now, k, s, d.step
        d.version += 1
        push(now + k * s, _CHUNK_END, d, d.version)

    def truncate_chunk(d: _Decode, now: float) -> None:
        # A sequence arrived mid-run: end the run at the first step boundary after ``now``.
        t0, k = d.chunk_start, d.chunk_k
        base = d.ctx_base_sum / d.active + d.chunk_steps0
        kk = min(k, int((now - t0) / d.chunk_step_s) + 1)
        while kk < k:
            s = step_s(d.active, base + (kk - 1) / 2.0)
            if t0 + kk * s > now:
                break
            kk += 1
        if kk >= k:
            return  # the run ends at its planned time anyway
        s = step_s(d.active, base + (kk - 1) / 2.0)
        d.chunk_k, d.chunk_step_s = kk, s
        d.version += 1
        push(t0 + kk * s, _CHUNK_END, d, d.version)

    def finish(r: _Req, now: float) -> None:
        nonlocal in_system
        advance_clock(now)
        r.finish = now
        in_system -= 1

    for r in reqs:
        push(r.arrival, _ARRIVE, r)

    while events:
        now, _, kind, version, payload = heapq.heappop(events)
        n_events += 1
        if kind == _ARRIVE:
            r = payload
            advance_clock(now)
            in_system += 1
            if w0 <= now <= w1:
                in_tokens_in_window += r.inp
            p = min(pre, key=lambda x: (x.queued_tokens + (1 if x.busy else 0), x.idx))
            p.queue.append(r)
            p.queued_tokens += r.inp
            if not p.busy:  # start after every arrival at this instant has queued (one batch)
                push(now, _KICK_PREFILL, p)
        elif kind == _PREFILL_DONE:
            p, batch = payload
            p.busy = False
            for r in batch:
                if r.out == 1:  # the prefill's token is the whole answer: no KV to move
                    r.first_token = now
                    count_tokens(now, 1)
                    finish(r, now)
                else:
                    waiting.append((r, p.idx))
            dispatch(now)
            start_prefill(p, now)
        elif kind == _KV_ARRIVED:
            r = payload
            r.first_token = now
            count_tokens(now, 1)
            d = dec[r.dec]
            d.pending.append(r)
            if not d.busy:  # as for prefill: simultaneous arrivals join the same first step
                push(now, _KICK_DECODE, d)
            else:
                truncate_chunk(d, now)
        elif kind == _KICK_PREFILL:
            start_prefill(payload, now)
        elif kind == _KICK_DECODE:
            if not payload.busy:
                start_chunk(payload, now)
        else:  # _CHUNK_END
            d = payload
            if version != d.version:
                continue
            k, s = d.chunk_k, d.chunk_step_s
            d.busy_s += k * s
            d.batch_time += k * s * d.active
            overlap = min(now, w1) - max(now - k * s, w0)
            if overlap > 0:
                win_busy += overlap
                win_batch_time += overlap * d.active
            d.step += k
            itl_s.append(s)
            itl_w.append(k * d.active)
            count_tokens(now, k * d.active)
            freed = False
            while d.finish_heap and d.finish_heap[0][0] <= d.step:
                _, _, r = heapq.heappop(d.finish_heap)
                d.active -= 1
                d.ctx_base_sum -= r.inp + 1 - r.join_step
                d.reserved_tokens -= r.inp + r.out
                d.reserved_seqs -= 1
                finish(r, now)
                freed = True
            if freed:
                dispatch(now)
            start_chunk(d, now)

    return _summarise(fleet, opts, reqs, w0, w1, tokens_in_window, in_tokens_in_window,
                      area_in_system, itl_s, itl_w, max_dec_batch, max_pre_batch, pre, dec,
                      n_events, keep_requests, win_batch_time / win_busy if win_busy > 0 else 0.0)  # fmt: skip


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if x.size else math.nan


def _weighted_pct(values: list[float], weights: list[int], q: float) -> float:
    if not values:
        return math.nan
    v = np.asarray(values)
    w = np.asarray(weights, dtype=np.float64)
    order = np.argsort(v)
    v, w = v[order], w[order]
    cum = np.cumsum(w)
    if cum[-1] <= 0:
        return math.nan
    return float(v[np.searchsorted(cum, q / 100.0 * cum[-1], side="left")])


def _summarise(fleet: FleetSpec, opts: SimOptions, reqs: list[_Req], w0: float, w1: float,
               tokens_in_window: int, in_tokens_in_window: int, area: float, itl_s: list[float],
               itl_w: list[int], max_dec: int, max_pre: int, pre: list[_Prefill],
               dec: list[_Decode], n_events: int, keep: bool, win_batch: float) -> SimResult:  # fmt: skip
    arrival = np.array([r.arrival for r in reqs])
    first = np.array([r.first_token for r in reqs])
    fin = np.array([r.finish for r in reqs])
    out = np.array([r.out for r in reqs])
    start = np.array([r.prefill_start for r in reqs])
    ttft = first - arrival
    multi = out > 1
    tbt = np.where(multi, (fin - first) / np.maximum(out - 1, 1), 0.0)
    e2e = fin - arrival
    makespan = float(fin.max() - arrival.min())
    end = float(fin.max())
    win_end = w1 if math.isfinite(w1) else end
    window = max(win_end - w0, 0.0)
    in_win = (arrival >= w0) & (arrival <= win_end)
    if window <= 0:  # one burst at t=0: whole run
        window = makespan
        tokens_in_window = int(out.sum())
        in_tokens_in_window = int(sum(r.inp for r in reqs))
        in_win = np.ones_like(in_win)
    thr = tokens_in_window / window if window > 0 else math.nan
    sla: float | None = None
    if opts.ttft_s is not None or opts.tbt_s is not None:
        ok = np.ones(len(reqs), dtype=bool)
        if opts.ttft_s is not None:
            ok &= ttft <= opts.ttft_s
        if opts.tbt_s is not None:
            ok &= tbt <= opts.tbt_s
        sla = float(ok.mean())
    usd_h = fleet.usd_per_hour
    usd_m = usd_per_million_tokens(usd_h, thr) if usd_h > 0 and thr > 0 else None
    total_dec_busy = sum(d.busy_s for d in dec)
    total_batch_time = sum(d.batch_time for d in dec)
    n_win = int(in_win.sum())
    return SimResult(
        requests=len(reqs),
        completed=int(np.isfinite(fin).sum()),
        makespan_s=makespan,
        window_s=window,
        throughput_tokens_per_s=thr,
        input_tokens_per_s=in_tokens_in_window / window if window > 0 else math.nan,
        requests_per_s=len(reqs) / makespan if makespan > 0 else math.nan,
        offered_requests_per_s=n_win / window if window > 0 else math.nan,
        ttft_p50_s=_pct(ttft, 50),
        ttft_p99_s=_pct(ttft, 99),
        ttft_mean_s=float(ttft.mean()),
        tbt_p50_s=_pct(tbt[multi], 50),
        tbt_p99_s=_pct(tbt[multi], 99),
        itl_p99_s=_weighted_pct(itl_s, itl_w, 99),
        e2e_mean_s=float(e2e.mean()),
        queue_mean_s=float((start - arrival).mean()),
        sla_attainment=sla,
        usd_per_hour=usd_h,
        usd_per_million_tokens=usd_m,
        mean_in_system=area / window if window > 0 else math.nan,
        window_arrival_rate_per_s=n_win / window if window > 0 else math.nan,
        window_e2e_mean_s=float(e2e[in_win].mean()) if n_win else math.nan,
        max_decode_batch=max_dec,
        mean_decode_batch=total_batch_time / total_dec_busy if total_dec_busy > 0 else 0.0,
        window_mean_decode_batch=win_batch,
        max_prefill_batch=max_pre,
        prefill_utilisation=sum(p.busy_s for p in pre) / (len(pre) * end) if end > 0 else 0.0,
        decode_utilisation=total_dec_busy / (len(dec) * end) if end > 0 else 0.0,
        events=n_events,
        per_request=tuple(zip(ttft.tolist(), tbt.tolist(), e2e.tolist(), strict=True))
        if keep
        else (),
    )
