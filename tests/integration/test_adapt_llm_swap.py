"""Hot swap of an LLM's decode worker (``runtime.adapt.llm_swap``): a greedy generation that is
decoding when the swap flips finishes on the old worker with its KV cache and the same text as
transformers; the next one runs on the new worker; the old worker is stopped after the drain."""

from __future__ import annotations

import threading
import time

import pytest

from tests.unit.pipeline.test_hf_checkpoints import compile_dir, hf_greedy, make_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_decode_swap_drains_in_flight_sequence_with_same_greedy_text(tmp_path):
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    from terrazzo.runtime.adapt.llm_swap import DecodeSwap
    from terrazzo.runtime.llm_text import SamplingParams
    from terrazzo.runtime.openai_front import LLMService

    model = make_checkpoint(tmp_path / "qwen", "qwen2")
    # one batched decode size: the swap needs the continuous-batching engine, not several
    # buckets (a second size was a whole extra build, about a third of the test's time)
    bundle = compile_dir(tmp_path / "qwen", tmp_path / "q.tzb", "--decode-batches", "1")
    tok = Tokenizer.from_file(str(tmp_path / "qwen" / "tokenizer.json"))
    ids = tok.encode("the quick brown fox").ids
    n = 40
    want = hf_greedy(model, ids, n)
    params = SamplingParams(max_tokens=n)
    svc = LLMService(str(bundle))
    try:
        assert svc.batching  # the continuous-batching engine: the default decode path
        gen = svc.generator
        old_worker, old_batch = svc.workers[-1], svc.batch
        swap = DecodeSwap(svc).start()  # the new decode worker is up before the flip
        got: list[int] = []
        consumer = threading.Thread(target=lambda: got.extend(gen.stream_ids(ids, params)))
        consumer.start()
        deadline = time.monotonic() + 60
        while old_batch.in_flight() == 0 and time.monotonic() < deadline:
            time.sleep(0.0005)  # flip as soon as the sequence has joined the old engine
        swap.flip()
        assert svc.batch is not old_batch  # new sequences go to the new worker now
        consumer.join(120)  # ... the joined one finishes on the old one, with its KV cache
        swap.drain(timeout_s=60)
        assert swap.in_flight_at_flip >= 1
        assert got == want
        assert not old_worker.alive()  # stopped once drained
        steps_new = svc.batch.stats()["steps"]
        assert list(gen.stream_ids(ids, params)) == want  # on the new worker
        assert svc.batch.stats()["steps"] > steps_new
    finally:
        svc.close()
