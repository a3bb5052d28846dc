"""TTFT, TBT and tokens/s of a served LLM bundle, predicted from costs measured on this host
(the serving half of issue 17's "the cost model knows it"; sits beside ``llm_batch``).

Why a serving calibration and not the compiled step alone: one decode step of the batching
engine is the compiled ``decode_b{B}`` phase (``PagedEngine.calibrate`` times it alone) *plus*
what serving adds to every step, measured here rather than assumed:

- the engine's own per-step work outside the phase (building the batch, writing each
  sequence's new K/V row, sampling), which grows with the number of sequences;
- the poll that carries every stream's new token to the front (one gRPC round trip per step)
  and the front handing each token to its stream: work per step and per token. Where the
  front and the decode worker share the CPU cores the compiled phase uses (a CPU host), that
  work lengthens the step. When the step is shorter than the poll round trip (one stream on a
  small model), polls run back to back and take a core for the whole step: the step then
  stretches by far more than the poll's CPU time. Both regimes are what the calibration sees.

Requests that arrive together (a burst) wait for each other: the prefill worker runs one
prefill at a time, and each prefill competes for the cores with the hand-overs of the ones
before it and with the decode worker stepping them (and their polls). So the calibration also
sends bursts of real requests (prefill, hand-over, poll: what ``TextGenerator`` does per
request) and measures how far apart their first tokens land, beside ``b`` sequences already
decoding for a ladder of ``b``: the time one more request of a burst adds to TTFT at each
number of running sequences.

:func:`calibrate_serving` measures, in interleaved rounds (so that a moment of load from other
jobs on a shared host moves one sample, not the figure; medians are kept): single requests at
an idle server end to end; the steady step period ``period_s[B]`` with ``B`` sequences for each
compiled batch size (per-step overhead = period − phase; its growth between batch sizes is the
per-token cost); and the bursts (first token of a burst, interval between first tokens, step
period meanwhile). :func:`predict_serving` composes those for ``n`` concurrent streams arriving
together. Nothing in it is fitted to a benchmark's output.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from terrazzo.errors import ServingError


@dataclass(frozen=True, slots=True)
class ServingCalibration:
    """Costs measured on this host (seconds). ``phase_s`` and ``period_s`` are keyed by
    compiled decode batch size, the burst tables by the mean number of sequences running while
    the burst was measured."""

    phase_s: dict[int, float]  # the compiled decode phase alone (PagedEngine.calibrate)
    period_s: dict[int, float]  # a served step at B sequences: phase + overheads
    period_busy_s: dict[float, float]  # the step period while a burst is prefilled
    ttft_s: float  # one request at an idle server: prefill + hand-over + first token
    prefill_s: float  # its parts: one prefill call reaching an idle server,
    handover_s: float  # one join (the prefill's KV cache handed over),
    first_token_s: float  # join returned → first token at the front
    burst_first_s: float  # a burst at an idle server: its first prefill's return
    burst_interval_s: dict[float, float]  # one more request of a burst: its prefill's wait
    burst_deliver_s: dict[float, float]  # a burst's prefill returned → its first token
    hop_s: float  # one no-op round trip to the decode worker
    burst: int = 4  # requests per calibration burst

    def overhead_s(self) -> dict[int, float]:
        """Per-step serving overhead at each batch size (period − phase)."""
        return {b: self.period_s[b] - self.phase_s.get(b, 0.0) for b in self.period_s}

    def to_json(self) -> dict[str, Any]:
        return {k: ({str(b): t for b, t in v.items()} if isinstance(v, dict) else v)
                for k, v in asdict(self).items()}  # fmt: skip


def _interp(table: Mapping[Any, float], n: float) -> float:
    """``table`` (batch size → value) at ``n``: linear between the keys around it."""
    xs = sorted(table)
    if n <= xs[0]:
        return float(table[xs[0]])
    if n >= xs[-1]:
        return float(table[xs[-1]])
    hi = next(x for x in xs if x >= n)
    lo = max(x for x in xs if x <= n)
    if hi == lo:
        return float(table[lo])
    w = (n - lo) / (hi - lo)
    return float(table[lo] * (1 - w) + table[hi] * w)


def step_period_s(cal: ServingCalibration, running: int, busy: bool = False) -> float:
    """The served step period with ``running`` sequences: the phase of the smallest compiled
    batch size holding them plus the per-step overhead measured at the batch sizes around
    ``running`` (the overhead has a per-step and a per-token part); while a burst is being
    prefilled, the period measured then at that many sequences, if longer."""
    sizes = sorted(cal.phase_s)
    bucket = next((b for b in sizes if b >= running), sizes[-1])
    period = cal.phase_s[bucket] + _interp(cal.overhead_s(), min(running, bucket))
    if busy and cal.period_busy_s:
        period = max(period, _interp(cal.period_busy_s, running))
    return float(period)


def predict_serving(cal: ServingCalibration, streams: int, tokens: int) -> dict[str, float]:
    """Predicted mean TTFT, mean TBT and aggregate tokens/s for ``streams`` requests arriving
    together at an idle server, each generating ``tokens`` tokens, from a
    :class:`ServingCalibration`.

    - TTFT: one stream alone takes ``ttft_s``. In a burst the prefill worker returns the
      first prefill after ``burst_first_s`` and prefill ``i`` ``burst_interval_s`` after
      prefill ``i − 1``, read at the ``i`` sequences then running (the requests before it);
      the hand-over, admission at a step's end and the poll add ``burst_deliver_s`` (read at
      ``i`` too). The prefills' returns are the queue; first tokens land on step boundaries,
      which is why the two are measured apart.
    - Decode is stepped in order: each step's period is :func:`step_period_s` at the number of
      sequences running (joined at their TTFT, not yet finished), the busy period while later
      requests of the burst are still being prefilled; every running sequence gets one token
      per step. TBT of a stream = (its last token − its first) / (tokens − 1); the mean over
      streams is reported, and tokens/s = all tokens / the last stream's end.
    """
    if streams < 1 or tokens < 1:
        raise ServingError(f"streams and tokens must be positive, got {streams}, {tokens}")
    if streams == 1:
        ttfts = [cal.ttft_s]
    else:
        done = [cal.burst_first_s]
        for i in range(1, streams):
            done.append(done[-1] + _interp(cal.burst_interval_s, i))
        ttfts = [t + _interp(cal.burst_deliver_s, i) for i, t in enumerate(done)]
    last_join = ttfts[-1]
    left = [tokens - 1] * streams
    ends = list(ttfts)
    t, joined = ttfts[0], 1
    while any(left):
        while joined < streams and ttfts[joined] <= t:
            joined += 1
        running = [i for i in range(joined) if left[i]]
        if not running:  # everyone joined so far is done: the next one joins later
            t = ttfts[joined]
            continue
        t += step_period_s(cal, len(running), busy=t < last_join)
        for i in running:
            left[i] -= 1
            ends[i] = t
    tbts = [(e - f) / (tokens - 1) if tokens > 1 else step_period_s(cal, streams)
            for e, f in zip(ends, ttfts, strict=True)]  # fmt: skip
    return {"ttft_s": float(np.mean(ttfts)), "tbt_s": float(np.mean(tbts)),
            "tokens_per_s": streams * tokens / max(ends),
            "period_s": step_period_s(cal, streams)}  # fmt: skip


def calibrate_serving(
    prefill: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
    batch: Any,
    prompt_len: int,
    tokens: int = 48,
    prompt: int = 12,
    rounds: int = 5,
    burst: int = 4,
) -> ServingCalibration:
    """Measure a :class:`ServingCalibration` through a running service: ``prefill`` (the
    prefill worker(s)), ``batch`` (a ``llm_batch.RemoteBatchDecode`` on the decode worker).
    Nothing else may be running.

    ``rounds`` interleaved rounds each time three single requests, the steady period at
    every compiled batch size (to the context's end) and a burst of ``burst`` requests
    beside ``b`` decoding sequences for ``b`` in 0, every compiled size that leaves room for
    the burst, and the largest minus the burst. Medians over rounds are kept."""
    from terrazzo.runtime.llm_batch import Sampling

    m = max(1, min(prompt, prompt_len))
    padded = np.zeros((1, prompt_len), np.int64)
    padded[0, :m] = np.arange(3, 3 + m) % 250 + 3
    args = {"tokens": padded, "length": np.array([m], np.int64)}
    st = prefill(args)
    k, v = np.asarray(st["k_cache"]), np.asarray(st["v_cache"])
    logits = np.asarray(st["logits"]).reshape(-1)
    hops = []
    for _ in range(15):
        t0 = time.perf_counter()
        batch.ping()
        hops.append(time.perf_counter() - t0)
    phase = {int(b): float(t) for b, t in batch.calibrate().items()}
    sizes = sorted(phase)
    burst = max(2, min(burst, sizes[-1]))
    ladder = sorted({0, *(b for b in sizes if b + burst <= sizes[-1]),
                     max(0, sizes[-1] - burst)})  # fmt: skip
    params = Sampling(max_tokens=tokens, ignore_eos=True)
    # background streams decode to the context's end (the engine caps the budget there), so
    # that the first ones joined are still running when the last join and the burst are done
    long = Sampling(max_tokens=1 << 20, ignore_eos=True)

    def request(out: list[float], t_start: float) -> None:
        """One request as the front sends it: prefill, hand-over, poll to the end. ``out``
        gets the prefill's end, the join's end and every token's stamp (from ``t_start``)."""
        s = prefill(args)
        out.append(time.perf_counter() - t_start)
        sid = batch.new_session()
        batch.join(sid, s["k_cache"], s["v_cache"], m, np.asarray(s["logits"]).reshape(-1),
                   [], params)  # fmt: skip
        out.append(time.perf_counter() - t_start)
        done = False
        while not done:
            got, done = batch.poll(sid)
            out.extend([time.perf_counter() - t_start] * len(got))

    def single() -> tuple[float, float, float, float]:
        out: list[float] = []
        t0 = time.perf_counter()
        request(out, t0)
        return out[2], out[0], out[1] - out[0], out[2] - out[1]

    def run(b: int, n_burst: int) -> tuple[list[list[float]], list[list[float]], float]:
        """``b`` synthetic streams joined one after another (a consumer thread each), then
        ``n_burst`` requests arriving together: the background streams' token stamps, each
        burst request's record (see ``request``) and the burst's start, all on one clock."""
        stamps: list[list[float]] = [[] for _ in range(b)]
        sids = [batch.new_session() for _ in range(b)]
        t_ref = time.perf_counter()

        def consume(i: int) -> None:
            done = False
            while not done:
                got, done = batch.poll(sids[i])
                stamps[i].extend([time.perf_counter() - t_ref] * len(got))

        threads = [threading.Thread(target=consume, args=(i,), daemon=True) for i in range(b)]
        for i, sid in enumerate(sids):
            batch.join(sid, k, v, m, logits, [], long)
            threads[i].start()
        t_burst = time.perf_counter() - t_ref
        recs: list[list[float]] = [[] for _ in range(n_burst)]
        reqs = [threading.Thread(target=request, args=(r, t_ref), daemon=True) for r in recs]
        for t in reqs:
            t.start()
        for t in (*reqs, *threads):
            t.join(120)
        return stamps, recs, t_burst

    singles: list[tuple[float, float, float, float]] = []
    period: dict[int, list[float]] = {b: [] for b in sizes}
    firsts: list[float] = []
    gaps: dict[int, list[float]] = {b: [] for b in ladder}
    deliver: dict[int, list[float]] = {b: [] for b in ladder}
    busy: dict[int, list[float]] = {b: [] for b in ladder}
    for _ in range(rounds):
        singles += [single() for _ in range(3)]
        for b in sizes:
            stamps, _, t_end = run(b, 0)
            try:  # from the last join to the first stream's end
                period[b].append(_window_period(stamps, t_end, min(s[-1] for s in stamps if s)))
            except ServingError:  # the joins outlasted a stream (a stalled host): next round
                pass
        for b in ladder:
            stamps, recs, t_burst = run(b, burst)
            first = sorted(rec[2] for rec in recs)
            pre = sorted(rec[0] for rec in recs)
            if b == 0:
                firsts.append(pre[0] - t_burst)
            gaps[b].append((pre[-1] - pre[0]) / (len(pre) - 1))
            deliver[b].append(float(np.mean([rec[2] - rec[0] for rec in recs])))
            try:  # every stream's steps while the burst's requests were still arriving
                busy[b].append(_window_period(stamps + [rec[2:] for rec in recs],
                                              t_burst, first[-1]))  # fmt: skip
            except ServingError:  # too short a burst to hold two steps: no slowdown seen
                pass
    if missing := [b for b in sizes if not period[b]]:
        raise ServingError(f"serving calibration: no steady window at batch sizes {missing}")
    med = np.median
    # the burst's requests already running, on average, between two first tokens (and over
    # the whole burst): half of them
    mid = burst / 2
    return ServingCalibration(
        phase_s=dict(phase), period_s={b: float(med(x)) for b, x in period.items() if x},
        period_busy_s={b + mid: float(med(x)) for b, x in busy.items() if x},
        ttft_s=float(med([s[0] for s in singles])),
        prefill_s=float(med([s[1] for s in singles])),
        handover_s=float(med([s[2] for s in singles])),
        first_token_s=float(med([s[3] for s in singles])),
        burst_first_s=float(med(firsts)),
        burst_interval_s={b + mid: float(med(x)) for b, x in gaps.items()},
        burst_deliver_s={b + mid: float(med(x)) for b, x in deliver.items()},
        hop_s=float(med(hops)), burst=burst,
    )  # fmt: skip


def _window_period(stamps: list[list[float]], lo: float, hi: float) -> float:
    """Mean time per token of the streams between ``lo`` and ``hi`` (tokens that arrive
    together in one poll count as one step each)."""
    rates = []
    for s in stamps:
        w = [t for t in s if lo <= t <= hi]
        if len(w) >= 2 and w[-1] > w[0]:
            rates.append((w[-1] - w[0]) / (len(w) - 1))
    if not rates:
        raise ServingError("serving calibration: no tokens in the measuring window")
    return float(np.median(rates))
