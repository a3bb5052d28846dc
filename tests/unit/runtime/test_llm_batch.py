"""Continuous batching over a paged KV pool (``terrazzo.runtime.llm_batch``).

The engine runs the batched decode phase in torch eager here (the same module TVM compiles
into the bundle's ``decode_b{B}`` stages; the compiled path is checked end to end in
``tests/unit/pipeline/test_hf_checkpoints.py``). The reference is the unbatched prefill +
one-sequence decode loop, which is checked against transformers there.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from terrazzo.codegen.llm_phases import (
    KVLayout,
    TinyLlamaConfig,
    torch_batch_reference,
    torch_reference,
)
from terrazzo.errors import ServingError
from terrazzo.runtime.llm_batch import KVBlockPool, PagedEngine, RemoteBatchDecode, Sampling

CFG = TinyLlamaConfig(max_len=32, prompt_len=8, vocab_size=64, d_model=32, d_ff=64)
KV = KVLayout(block=8, n_blocks=1 + 4 * 4)


@pytest.fixture(scope="module")
def phases() -> dict:
    return {"ref": torch_reference(CFG), "batch": torch_batch_reference(CFG, KV, (1, 2, 4))}


def prefill(ref: dict, ids: list[int]) -> dict:
    first = ids[: CFG.prompt_len]
    padded = np.zeros((1, CFG.prompt_len), np.int64)
    padded[0, : len(first)] = first
    return ref["prefill"]({"tokens": padded, "length": np.array([len(first)], np.int64)})


def unbatched(ref: dict, ids: list[int], n: int) -> list[int]:
    """Greedy: prefill the first chunk, feed the rest one decode step each, then generate."""

    def step(tok: int, pos: int, k: np.ndarray, v: np.ndarray) -> dict:
        return ref["decode"]({"token": np.array([[tok]], np.int64),
                              "pos": np.array([pos], np.int64), "k_cache": k, "v_cache": v})  # fmt: skip

    st = prefill(ref, ids)
    for pos in range(min(len(ids), CFG.prompt_len), len(ids)):
        st = step(ids[pos], pos, st["k_cache"], st["v_cache"])
    out: list[int] = []
    for i in range(n):
        out.append(int(np.argmax(st["logits"][0])))
        if i < n - 1:
            st = step(out[-1], len(ids) + i, st["k_cache"], st["v_cache"])
    return out


def engine(phases: dict, dtype: str = "float32") -> PagedEngine:
    pool = KVBlockPool(KV.pool_shape(CFG), dtype)
    return PagedEngine(phases["batch"], pool, CFG.max_len, eos=())


def join(eng: PagedEngine, ref: dict, sid: int, ids: list[int], n: int) -> None:
    st = prefill(ref, ids)
    first = min(len(ids), CFG.prompt_len)
    eng.join(sid, st["k_cache"], st["v_cache"], first, st["logits"][0], ids[first:],
             Sampling(max_tokens=n))  # fmt: skip


PROMPTS = [[5, 9, 2], [7] * 6, list(range(1, 12)), [3, 1, 4, 1, 5, 9, 2, 6, 5], [60]]


def test_batched_greedy_equals_unbatched(phases: dict) -> None:
    ref = phases["ref"]
    eng = engine(phases)
    lens = [6, 9, 4, 7, 5]
    for sid, (ids, n) in enumerate(zip(PROMPTS, lens, strict=True)):
        join(eng, ref, sid, ids, n)
    eng.run_until_idle()
    for sid, (ids, n) in enumerate(zip(PROMPTS, lens, strict=True)):
        got, done = eng.poll(sid, timeout=0)
        assert done
        assert got == unbatched(ref, ids, n), (sid, ids)
    # five sequences do not fit the largest bucket (4): one waited, then joined
    assert eng.stats()["per_bucket"]["4"]["steps"] >= 1


def test_sequences_join_and_leave_at_every_step(phases: dict) -> None:
    ref = phases["ref"]
    eng = engine(phases)
    sizes = []
    join(eng, ref, 1, [5, 9, 2], 3)  # leaves after its 2nd step
    sizes.append(eng.step())
    join(eng, ref, 2, [7, 7], 5)  # joins a running batch
    sizes.append(eng.step())
    join(eng, ref, 3, [1, 2, 3, 4], 2)
    for _ in range(6):
        sizes.append(eng.step())
    # (the first token of each comes from its prefill logits, on admission)
    # [1]; [1, 2] (1 emits its 3rd token, leaves); [2, 3] (3 emits its 2nd, leaves); [2]; [2]
    assert sizes == [1, 2, 2, 1, 1, 0, 0, 0], sizes
    assert eng.step() == 0 and eng.active() == 0
    # buckets: the smallest compiled batch that holds the running sequences
    assert [eng.bucket(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]
    assert eng.poll(2, timeout=0)[0] == unbatched(ref, [7, 7], 5)


def test_kv_block_accounting(phases: dict) -> None:
    ref = phases["ref"]
    eng = engine(phases)
    free0 = eng.pool.n_free
    assert free0 == KV.n_blocks - 1  # block 0 is scratch
    join(eng, ref, 1, list(range(1, 12)), 10)  # 11 + 10 = 21 tokens → 3 blocks of 8
    eng.step()
    assert eng.pool.n_free == free0 - 3
    # a request the free blocks cannot hold waits, then runs once blocks come back
    for sid in range(2, 7):  # 5 × 4 blocks (prompt 9 + 23 → 32 tokens) > 13 free
        join(eng, ref, sid, [3, 1, 4, 1, 5, 9, 2, 6, 5], 23)
    eng.step()
    assert len(eng._waiting) > 0 and eng.pool.n_free < 4
    eng.cancel(2)
    eng.run_until_idle()
    assert eng.pool.n_free == free0
    assert all(eng.poll(s, timeout=0)[1] for s in (1, 3, 4, 5, 6))


def test_fp16_pool_and_remote_protocol(phases: dict) -> None:
    """The fp16 pool keeps greedy ids here; three streams through the runner's op protocol
    and its client (in process), whose one poller fetches every stream's tokens at once."""
    import threading

    from terrazzo.runtime import llm_batch

    ref = phases["ref"]
    eng = engine(phases, "float16")
    assert eng.pool.k.dtype == np.float16
    eng.start()
    try:
        calls: list[int] = []
        ops = llm_batch.engine_ops(eng)

        def call(values: dict) -> dict:
            calls.append(int(values["op"][0]))
            return ops(values)

        client = RemoteBatchDecode(call)
        results: dict[int, list[int]] = {}

        def stream(ids: list[int]) -> None:
            sid = client.new_session()
            st = prefill(ref, ids)
            client.join(sid, st["k_cache"], st["v_cache"], len(ids), st["logits"][0], [],
                        Sampling(max_tokens=8))  # fmt: skip
            got, done = [], False
            while not done:
                toks, done = client.poll(sid)
                got += toks
            results[sid] = got

        threads = [threading.Thread(target=stream, args=(p,)) for p in PROMPTS[:2] + PROMPTS[4:]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(len(v) for v in results.values()) == [8, 8, 8]
        assert sorted(results.values()) == sorted(
            unbatched(ref, p, 8) for p in PROMPTS[:2] + PROMPTS[4:]
        )
        assert calls.count(llm_batch.OP_JOIN) == 3
        assert llm_batch.OP_POLL not in calls  # one poll for all streams per round
        assert 0 < calls.count(llm_batch.OP_POLL_ALL) <= 3 * 8
    finally:
        eng.stop()


def test_serving_calibration_and_prediction(phases: dict) -> None:
    """``llm_predict.calibrate_serving`` measures every term through a running engine, its
    op protocol and client (in process), bursts of real requests included; the prediction
    composes them: one stream at the measured period of batch 1 and the measured TTFT of a
    request reaching an idle server."""
    from terrazzo.runtime import llm_batch
    from terrazzo.runtime.llm_predict import calibrate_serving, predict_serving

    eng = engine(phases)
    eng.start()
    try:
        client = RemoteBatchDecode(llm_batch.engine_ops(eng))
        cal = calibrate_serving(phases["ref"]["prefill"], client, CFG.prompt_len, tokens=12,
                                rounds=2)  # fmt: skip
    finally:
        eng.stop()
    assert sorted(cal.phase_s) == sorted(cal.period_s) == [1, 2, 4]
    assert cal.burst == 4  # one burst of 4 at an idle server: the pool holds 4 sequences
    assert sorted(cal.burst_interval_s) == sorted(cal.burst_deliver_s) == [2.0]
    assert all(t > 0 for t in (*cal.phase_s.values(), *cal.period_s.values(),
                               *cal.burst_interval_s.values(), *cal.burst_deliver_s.values(),
                               cal.burst_first_s, cal.ttft_s,
                               cal.prefill_s, cal.handover_s, cal.first_token_s, cal.hop_s))  # fmt: skip
    assert cal.prefill_s < cal.ttft_s
    assert eng.active() == 0 and eng.pool.n_free == eng.pool.capacity  # nothing left behind
    one = predict_serving(cal, 1, 10)
    assert one["tbt_s"] == pytest.approx(cal.period_s[1])
    assert one["ttft_s"] == pytest.approx(cal.ttft_s)
    assert set(cal.to_json()["period_s"]) == {"1", "2", "4"}


def test_prediction_composes_measured_terms() -> None:
    """Three streams arriving together: TTFT queues (the burst's first prefill, then one
    interval per request, read at the number already running, plus the delivery); decode is stepped at the period of the
    sequences running then (phase of the bucket + overhead interpolated in the count)."""
    from terrazzo.runtime.llm_predict import ServingCalibration, predict_serving

    def cal(interval_s: float) -> ServingCalibration:
        return ServingCalibration(
            phase_s={1: 0.001, 2: 0.0015, 4: 0.002}, period_s={1: 0.002, 2: 0.0025, 4: 0.0034},
            period_busy_s={}, ttft_s=0.012, prefill_s=0.01, handover_s=0.001,
            first_token_s=0.001, burst_first_s=0.012,
            burst_interval_s={2.0: interval_s, 10.0: 3 * interval_s},
            burst_deliver_s={2.0: 0.003}, hop_s=0.0005,
        )  # fmt: skip

    # far apart: each stream decodes alone at batch 1's period
    p = predict_serving(cal(0.02), 3, 5)
    ttft = [0.015, 0.035, 0.055]
    assert p["ttft_s"] == pytest.approx(sum(ttft) / 3)
    assert p["tbt_s"] == pytest.approx(0.002)
    assert p["tokens_per_s"] == pytest.approx(15 / (ttft[2] + 4 * 0.002))
    # at once: three running in bucket 4, the overhead halfway between batch 2's and 4's
    p = predict_serving(cal(0.0), 3, 10)
    period = 0.002 + (0.001 + 0.0014) / 2
    assert p["period_s"] == pytest.approx(period)
    assert p["ttft_s"] == pytest.approx(0.015)
    assert p["tbt_s"] == pytest.approx(period)
    assert p["tokens_per_s"] == pytest.approx(30 / (0.015 + 9 * period))
    # a busy period while the burst still arrives lengthens the steps before the last join
    base = cal(0.004)
    busy = dataclasses.replace(base, period_busy_s={2.0: 0.01})
    assert predict_serving(busy, 3, 10)["tbt_s"] > predict_serving(base, 3, 10)["tbt_s"]
    assert predict_serving(busy, 3, 10)["ttft_s"] == predict_serving(base, 3, 10)["ttft_s"]
    with pytest.raises(ServingError, match="positive"):
        predict_serving(cal(0.0), 0, 10)
