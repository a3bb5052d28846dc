"""``terrazzo serve BUNDLE --openai-port N --prefill-workers 2``: two prefill worker processes
feed one continuous-batching decode worker, and the greedy text of concurrent streams equals
transformers' ``generate`` for the same weights.

The checkpoint is made here (random-weight Llama via ``save_pretrained``, a BPE tokenizer
trained with ``tokenizers``; the helpers of ``tests/unit/pipeline/test_hf_checkpoints.py``);
the server runs in its own process and is driven by the stock ``openai`` client.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.unit.pipeline.test_hf_checkpoints import (
    CLI,
    REPO,
    cli,
    compile_dir,
    hf_greedy,
    make_checkpoint,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPTS = ["hello world, hello", "the quick brown fox", "a compiler turns", "prefill and decode"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_prefill_workers_feed_one_batching_decode_worker(tmp_path: Path) -> None:
    import openai
    from tokenizers import Tokenizer

    model = make_checkpoint(tmp_path / "llama", "llama")
    bundle = compile_dir(tmp_path / "llama", tmp_path / "l.tzb", "--decode-batches", "1,4")
    tok = Tokenizer.from_file(str(tmp_path / "llama" / "tokenizer.json"))
    want = [tok.decode(hf_greedy(model, tok.encode(p).ids, 12), skip_special_tokens=True)
            for p in PROMPTS]  # fmt: skip
    assert all(want) and len(set(want)) > 1  # the comparison below is not vacuous

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CLI, "serve", str(bundle), "--openai-port",
                             str(port), "--prefill-workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f":{port}/v1" in line and "2 prefill worker(s)" in line, (
            line, proc.stderr.read() if proc.poll() is not None else "")  # fmt: skip
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                               max_retries=0, timeout=120)  # fmt: skip
        got: dict[int, str] = {}

        def stream(i: int) -> None:
            chunks = client.completions.create(model="m", prompt=PROMPTS[i], max_tokens=12,
                                               stream=True)  # fmt: skip
            got[i] = "".join(c.choices[0].text for c in chunks)

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert [got.get(i) for i in range(len(PROMPTS))] == want

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            metrics = r.read().decode()
        calls = {int(w): int(n) for w, n in re.findall(
            r'terrazzo_llm_prefill_requests_total\{worker="(\d+)"\} (\d+)', metrics)}  # fmt: skip
        assert calls == {0: 2, 1: 2}, metrics  # round robin: both prefill workers took two
        # the one decode worker stepped sequences together (the batch-4 stage ran)
        steps = re.search(r'terrazzo_llm_tbt_seconds\{batch="4",kind="measured"\} (\S+)', metrics)
        assert steps is not None and float(steps.group(1)) > 0, metrics
    finally:
        proc.terminate()
        t0 = time.monotonic()
        proc.wait(timeout=30)
        assert time.monotonic() - t0 < 30


def test_prefill_workers_needs_the_openai_port(tmp_path: Path) -> None:
    """The flag on a plain (KServe) serve, or N < 1, is refused in one line, exit 2, before
    anything starts."""
    for extra in (("--prefill-workers", "2"), ("--openai-port", "0", "--prefill-workers", "0")):
        p = cli("serve", str(tmp_path / "none.tzb"), *extra, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, p.stderr
        assert "--prefill-workers" in lines[0] and "--openai-port" in lines[0], p.stderr
