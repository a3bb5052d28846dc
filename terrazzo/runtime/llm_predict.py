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

:func:`calibrate_serving` runs, for each compiled batch size ``B``, ``B`` synthetic sequences
(a real prefill's KV cache handed over ``B`` times) through the real decode worker, poller and
stream threads, and records the steady step period ``period_s[B]`` (so per-step overhead =
period − phase, and its growth between batch sizes is the per-token cost); the hand-over (one
join with a prefill-sized KV cache); one no-op round trip; the prefill alone; and the prefill
while the decode worker steps a batch of ``B`` (``prefill_busy_s[B]``, a burst of prefills arriving
together: on a shared host prefills and decode steps compete for the same cores) together with the step period meanwhile
(``period_busy_s[B]``). :func:`predict_serving` composes those into the figures for ``n``
concurrent streams. Nothing in it is fitted to a benchmark's output.
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
    """Costs measured on this host (seconds), keyed by compiled decode batch size."""

    phase_s: dict[int, float]  # the compiled decode phase alone (PagedEngine.calibrate)
    period_s: dict[int, float]  # a served step at B sequences: phase + every per-step overhead
    period_busy_s: dict[int, float]  # the same while the prefill worker runs a prefill
    prefill_s: float  # one prefill call reaching an idle server
    prefill_busy_s: dict[int, float]  # one prefill call while B sequences decode
    handover_s: float  # one join (the prefill's KV cache handed over), idle decode worker
    first_token_s: float  # join returned → first token at the front, idle decode worker
    handover_busy_s: dict[int, float]  # one join while the engine steps up to B sequences
    first_token_busy_s: dict[int, float]  # join → first token then (admission at a step end)
    hop_s: float  # one no-op round trip to the decode worker

    def overhead_s(self) -> dict[int, float]:
        """Per-step serving overhead at each batch size (period − phase)."""
        return {b: self.period_s[b] - self.phase_s.get(b, 0.0) for b in self.period_s}

    def to_json(self) -> dict[str, Any]:
        return {k: ({str(b): t for b, t in v.items()} if isinstance(v, dict) else v)
                for k, v in asdict(self).items()}  # fmt: skip


def _interp(table: Mapping[int, float], n: int) -> float:
    """``table`` (batch size → value) at ``n``: linear between the batch sizes around it."""
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


def predict_serving(cal: ServingCalibration, streams: int, tokens: int) -> dict[str, float]:
    """Predicted mean TTFT, mean TBT and aggregate tokens/s for ``streams`` requests arriving
    together, each generating ``tokens`` tokens, from a :class:`ServingCalibration`.

    - Step period at ``n`` running sequences: the phase of the smallest compiled batch size
      holding them plus the per-step overhead measured at the batch sizes around ``n``
      (interpolated in ``n``: the overhead has a per-step and a per-token part).
    - Prefills queue on the prefill worker: the first runs alone (``prefill_s``), the others
      while the decode worker already steps the earlier requests (``prefill_busy_s``). Request
      ``i`` is prefilled at ``t_i = prefill_s + i·prefill_busy``, then handed over, admitted
      at the next step boundary and its first token comes back on the poll: TTFT_i = t_i +
      handover + first token, each measured for an idle server (``i = 0``) and for one that
      is already stepping a batch (``i > 0``).
    - TBT of request ``i``: its steps before the last prefill ends run at ``period_busy``,
      the rest at ``period``; the mean over requests is reported. The wall time ends with the
      last request's last token.
    """
    if streams < 1 or tokens < 1:
        raise ServingError(f"streams and tokens must be positive, got {streams}, {tokens}")
    sizes = sorted(cal.phase_s)
    bucket = next((b for b in sizes if b >= streams), sizes[-1])
    n = min(streams, bucket)
    over = _interp(cal.overhead_s(), n)
    period = cal.phase_s[bucket] + over
    busy_ratio = _interp(cal.period_busy_s, n) / _interp(cal.period_s, n)
    period_busy = period * max(1.0, busy_ratio)
    pre_busy = _interp(cal.prefill_busy_s, n) if streams > 1 else cal.prefill_s
    ramp_end = cal.prefill_s + (streams - 1) * pre_busy
    ttfts, tbts, ends = [], [], []
    hand_busy = _interp(cal.handover_busy_s, n) + _interp(cal.first_token_busy_s, n)
    for i in range(streams):
        t = cal.prefill_s + i * pre_busy
        ttft = t + (cal.handover_s + cal.first_token_s if i == 0 else hand_busy)
        steps = tokens - 1
        ramp_steps = min(steps, max(0.0, (ramp_end - ttft) / period_busy))
        dur = ramp_steps * period_busy + (steps - ramp_steps) * period
        ttfts.append(ttft)
        tbts.append(dur / steps if steps else period)
        ends.append(ttft + dur)
    return {"ttft_s": float(np.mean(ttfts)), "tbt_s": float(np.mean(tbts)),
            "tokens_per_s": streams * tokens / max(ends), "period_s": period}  # fmt: skip


def calibrate_serving(
    prefill: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
    batch: Any,
    prompt_len: int,
    tokens: int = 48,
    prompt: int = 12,
) -> ServingCalibration:
    """Measure a :class:`ServingCalibration` through a running service: ``prefill`` (the
    prefill worker(s)), ``batch`` (a ``llm_batch.RemoteBatchDecode`` on the decode worker).
    Nothing else may be running. Takes about ``tokens`` steps per compiled batch size."""
    from terrazzo.runtime.llm_batch import Sampling

    m = max(1, min(prompt, prompt_len))
    padded = np.zeros((1, prompt_len), np.int64)
    padded[0, :m] = np.arange(3, 3 + m) % 250 + 3
    args = {"tokens": padded, "length": np.array([m], np.int64)}
    st = prefill(args)
    k, v = np.asarray(st["k_cache"]), np.asarray(st["v_cache"])
    logits = np.asarray(st["logits"]).reshape(-1)
    pre, hand, first = [], [], []
    for _ in range(7):  # one request reaching an idle server: prefill, hand-over, first token
        time.sleep(0.02)
        t0 = time.perf_counter()
        prefill(args)
        t1 = time.perf_counter()
        sid = batch.new_session()
        batch.join(sid, k, v, m, logits, [], Sampling(max_tokens=2, ignore_eos=True))
        t2 = time.perf_counter()
        _, done = batch.poll(sid)
        first.append(time.perf_counter() - t2)
        while not done:
            _, done = batch.poll(sid)
        pre.append(t1 - t0)
        hand.append(t2 - t1)
    hops = []
    for _ in range(15):
        t0 = time.perf_counter()
        batch.ping()
        hops.append(time.perf_counter() - t0)
    phase = {int(b): float(t) for b, t in batch.calibrate().items()}
    params = Sampling(max_tokens=tokens, ignore_eos=True)

    def run(b: int, burst: int) -> tuple[list[list[float]], list[float], list[float], float, float]:
        """``b`` synthetic streams (joined one after another, a consumer thread each), then
        ``burst`` prefills arriving together; the token stamps, join ends, join times and
        the window in which the burst ran."""
        stamps: list[list[float]] = [[] for _ in range(b)]
        joined, took = [0.0] * b, [0.0] * b
        sids = [batch.new_session() for _ in range(b)]

        def consume(i: int) -> None:
            done = False
            while not done:
                got, done = batch.poll(sids[i])
                stamps[i].extend([time.perf_counter()] * len(got))

        threads = [threading.Thread(target=consume, args=(i,), daemon=True) for i in range(b)]
        for i, sid in enumerate(sids):
            t0 = time.perf_counter()
            batch.join(sid, k, v, m, logits, [], params)
            joined[i] = time.perf_counter()
            took[i] = joined[i] - t0
            threads[i].start()
        t_all = time.perf_counter()
        pre_threads = [threading.Thread(target=prefill, args=(args,), daemon=True)
                       for _ in range(burst)]  # fmt: skip
        for t in pre_threads:
            t.start()
        for t in pre_threads:
            t.join(120)
        t_quiet = time.perf_counter()
        for t in threads:
            t.join(120)
        return stamps, joined, took, t_all, t_quiet

    period, period_busy, pre_busy, joins, firsts = {}, {}, {}, {}, {}
    for b in sorted(phase):
        # the steady period: the median of three runs with nothing else going on
        reps = []
        for _ in range(3):
            stamps, _, _, t_all, _ = run(b, 0)
            reps.append(_window_period(stamps, t_all, min(s[-1] for s in stamps if s)))
        period[b] = float(np.median(reps))
        # a burst of prefills arriving together while b sequences decode (as a burst of
        # requests does): time per prefill = the burst's length over its size
        burst = max(4, min(b, 8))
        stamps, joined, took, t_all, t_quiet = run(b, burst)
        pre_busy[b] = (t_quiet - t_all) / burst
        try:
            period_busy[b] = _window_period(stamps, t_all, t_quiet)
        except ServingError:  # the burst ended before two steps landed in it: no slowdown seen
            period_busy[b] = period[b]
        if b > 1:  # joins while the engine steps the ones before
            joins[b] = float(np.median(took[1:]))
            firsts[b] = float(np.median([s[0] - j for s, j in zip(stamps[1:], joined[1:],
                                                                   strict=True)]))  # fmt: skip
    return ServingCalibration(
        phase_s=phase, period_s=period, period_busy_s=period_busy,
        prefill_s=float(np.median(pre)), prefill_busy_s=pre_busy,
        handover_s=float(np.median(hand)), first_token_s=float(np.median(first)),
        handover_busy_s=joins or {1: float(np.median(hand))},
        first_token_busy_s=firsts or {1: float(np.median(first))},
        hop_s=float(np.median(hops)),
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
