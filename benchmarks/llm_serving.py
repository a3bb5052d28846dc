"""LLM serving throughput: continuous batching vs one request at a time vs transformers.

A random-weight Llama-style checkpoint (saved with ``save_pretrained``, tokenizer trained with
``tokenizers``; nothing downloaded) is compiled with ``compile_hf`` (decode at batch sizes
1, 8, 16, 32, CPU-only fleet) and served with prefill and decode in two worker processes
(``LLMService``: loopback gRPC, KV handed over once). For each concurrency ``c``, ``c``
threads stream ``--tokens`` tokens each (EOS ignored) through the text generator, the way the
OpenAI front does minus HTTP. Reported per ``c``:

- batched: aggregate tokens/s (all tokens / wall time), TTFT p50, TBT p50/p99 (gaps between a
  stream's tokens as the client sees them);
- one at a time: the same service without the batching engine, the ``c`` requests in turn;
- transformers: ``generate`` (greedy, same prompt lengths) one request at a time and as one
  batch of ``c`` (eager torch, same threads), in a fresh process of its own;
- predicted vs measured mean TTFT, mean TBT and tokens/s: ``llm_predict.predict_serving`` from
  ``LLMService.calibrate_serving()`` (synthetic requests through the same workers, run just
  before each ``c``; the ``c`` streams here start together, the burst the prediction models).
  Each batched figure is the median of ``--rounds`` rounds.

Usage: ``python benchmarks/llm_serving.py [--streams 1,8,16,32] [--tokens 48]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_info, print_table, write_result  # noqa: E402

FLEET = "devices:\n  cpu: {count: 4}\npricing: {mode: cloud}\n"
WORDS = "the quick brown fox jumps over the lazy dog a compiler turns models into fast code".split()


def make_checkpoint(d: Path, hidden: int, layers: int, vocab: int) -> Any:
    """A random-weight Llama checkpoint plus a small byte-level BPE tokenizer."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 32,
        num_key_value_heads=hidden // 64, intermediate_size=hidden * 2, vocab_size=vocab,
        max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(d, safe_serialization=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator([" ".join(WORDS)] * 8, trainer)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    return model


def prompts(n: int, length: int) -> list[list[int]]:
    rng = np.random.default_rng(1)
    return [[int(x) for x in rng.integers(3, 300, length)] for _ in range(n)]


def run_streams(gen: Any, ids: list[list[int]], tokens: int, concurrent: bool) -> dict[str, Any]:
    """Stream every prompt (concurrently or in turn); tokens/s, TTFT and TBT."""
    from terrazzo.runtime.llm_text import SamplingParams

    params = SamplingParams(max_tokens=tokens, ignore_eos=True)
    stamps: list[list[float]] = [[] for _ in ids]
    starts = [0.0] * len(ids)

    def one(i: int) -> None:
        starts[i] = time.perf_counter()
        for _ in gen.stream_ids(ids[i], params):
            stamps[i].append(time.perf_counter())

    t0 = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(ids))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i in range(len(ids)):
            one(i)
    wall = time.perf_counter() - t0
    n = sum(len(s) for s in stamps)
    ttft = [s[0] - t for s, t in zip(stamps, starts, strict=True) if s]
    tbt = np.concatenate([np.diff(s) for s in stamps if len(s) > 1])
    return {"tokens": n, "wall_s": wall, "tokens_per_s": n / wall,
            "ttft_p50_ms": 1e3 * float(np.median(ttft)),
            "ttft_mean_ms": 1e3 * float(np.mean(ttft)), "tbt_mean_ms": 1e3 * float(np.mean(tbt)),
            "tbt_p50_ms": 1e3 * float(np.median(tbt)),
            "tbt_p99_ms": 1e3 * float(np.percentile(tbt, 99))}  # fmt: skip


def hf_tokens_per_s(model: Any, ids: list[list[int]], tokens: int, batched: bool) -> float:
    import torch

    t0 = time.perf_counter()
    with torch.no_grad():
        if batched:
            model.generate(torch.tensor(ids), do_sample=False, max_new_tokens=tokens,
                           min_new_tokens=tokens, pad_token_id=0)  # fmt: skip
        else:
            for p in ids:
                model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=tokens,
                               min_new_tokens=tokens, pad_token_id=0)  # fmt: skip
    return len(ids) * tokens / (time.perf_counter() - t0)


def hf_fresh(model_dir: Path, ids: list[list[int]], tokens: int) -> tuple[float, float]:
    """``transformers`` tokens/s one request at a time (the first ≤ 4 prompts) and as one batch,
    timed in a fresh process: in this one the service's client threads (a poller blocked in a
    gRPC call) slowed eager torch up to 9× at 2 threads, a baseline no user would see."""
    import subprocess

    code = (
        "import json, sys, transformers\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from benchmarks.llm_serving import hf_tokens_per_s\n"
        "a = json.loads(sys.argv[1])\n"
        "m = transformers.LlamaForCausalLM.from_pretrained(a['dir']).eval()\n"
        "ids = a['ids']\n"
        "print(json.dumps([hf_tokens_per_s(m, ids[: min(len(ids), 4)], a['tokens'], False),\n"
        "                  hf_tokens_per_s(m, ids, a['tokens'], True)]))\n"
    )
    arg = json.dumps({"dir": str(model_dir), "ids": ids, "tokens": tokens})
    out = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True,
                         check=True)  # fmt: skip
    one, batch = json.loads(out.stdout.strip().splitlines()[-1])
    return float(one), float(batch)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", default="1,8,16,32")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--prompt", type=int, default=12, help="prompt tokens per request")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--max-len", type=int, default=96)
    ap.add_argument("--bundle", default=None, help="reuse a compiled bundle (with --model-dir)")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds per concurrency; the median of each figure is reported")  # fmt: skip
    ap.add_argument("--name", default="llm_serving")
    args = ap.parse_args()
    import torch

    from terrazzo.pipeline.hf_llm import compile_hf
    from terrazzo.runtime.llm_predict import predict_serving
    from terrazzo.runtime.openai_front import LLMService

    streams = [int(x) for x in args.streams.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="tz-llmbench-"))
    if args.bundle and args.model_dir:
        bundle, mdir = Path(args.bundle), Path(args.model_dir)
    else:
        mdir = tmp / "model"
        make_checkpoint(mdir, args.hidden, args.layers, args.vocab)
        (tmp / "fleet.yaml").write_text(FLEET)
        t0 = time.perf_counter()
        res = compile_hf(mdir, tmp / "fleet.yaml", "ttft=500ms,tbt=50ms", tmp / "m.tzb",
                         max_len=args.max_len, prompt_len=16, device_builds=False,
                         decode_batches="1,8,16,32", sign_key=False)  # fmt: skip
        bundle = res.path
        print(f"compiled in {time.perf_counter() - t0:.1f} s → {bundle}", flush=True)
    rows: list[dict[str, Any]] = []
    threads = torch.get_num_threads()
    single = LLMService(str(bundle), allow_unsigned=True, batching=False)
    try:
        base = run_streams(single.generator, prompts(4, args.prompt), args.tokens, False)
        greedy_ref = list(single.generator.stream_ids(prompts(1, args.prompt)[0],
                                                      _greedy(args.tokens)))  # fmt: skip
    finally:
        single.close()
    svc = LLMService(str(bundle), allow_unsigned=True)
    try:
        got = list(svc.generator.stream_ids(prompts(1, args.prompt)[0], _greedy(args.tokens)))
        same = got == greedy_ref
        run_streams(svc.generator, prompts(2, args.prompt), 4, True)  # warm
        cals = []
        for c in streams:
            ids = prompts(c, args.prompt)
            # measured on this host just before (the load other jobs put on it drifts)
            cal = svc.calibrate_serving()
            cals.append(cal.to_json())
            runs = [run_streams(svc.generator, ids, args.tokens, True) for _ in range(args.rounds)]
            b = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
            pred = predict_serving(cal, c, args.tokens)
            hf1, hfb = hf_fresh(mdir, ids, args.tokens)
            rows.append({
                "streams": c, "batched_tok_s": b["tokens_per_s"],
                "one_at_a_time_tok_s": base["tokens_per_s"],
                "speedup": b["tokens_per_s"] / base["tokens_per_s"],
                "ttft_p50_ms": b["ttft_p50_ms"], "tbt_p50_ms": b["tbt_p50_ms"],
                "tbt_p99_ms": b["tbt_p99_ms"], "hf_one_tok_s": hf1, "hf_batch_tok_s": hfb,
                "pred_tok_s": pred["tokens_per_s"], "pred_ttft_ms": 1e3 * pred["ttft_s"],
                "pred_tbt_ms": 1e3 * pred["tbt_s"], "tbt_mean_ms": b["tbt_mean_ms"],
                "tbt_err": pred["tbt_s"] * 1e3 / b["tbt_mean_ms"] - 1,
                "tbt_p50_err": pred["tbt_s"] * 1e3 / b["tbt_p50_ms"] - 1, "ttft_mean_ms": b["ttft_mean_ms"],
                "ttft_err": pred["ttft_s"] * 1e3 / b["ttft_mean_ms"] - 1,
                "tok_s_err": pred["tokens_per_s"] / b["tokens_per_s"] - 1,
                "load": float(__import__("os").getloadavg()[0]),
            })  # fmt: skip
            print(rows[-1], flush=True)
        stats = svc.batch.stats()
    finally:
        svc.close()
    print_table(rows, ["streams", "batched_tok_s", "one_at_a_time_tok_s", "speedup",
                       "ttft_p50_ms", "tbt_p50_ms", "tbt_p99_ms", "hf_one_tok_s",
                       "hf_batch_tok_s", "load"], title="LLM serving (tokens/s)")  # fmt: skip
    print_table(rows, ["streams", "pred_tok_s", "batched_tok_s", "tok_s_err", "pred_tbt_ms",
                       "tbt_mean_ms", "tbt_err", "tbt_p50_err", "pred_ttft_ms", "ttft_mean_ms",
                       "ttft_err", "load"],
                title="predicted (serving calibration on this host) vs measured")  # fmt: skip
    path = write_result(args.name, rows, {
        "model": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab,
                  "max_len": args.max_len, "prompt_tokens": args.prompt, "tokens": args.tokens},
        "one_at_a_time": base, "batched_greedy_equals_unbatched": same,
        "engine_stats": stats, "torch_threads": threads, "calibrations": cals,
    })  # fmt: skip
    mach = machine_info()
    print(f"cpu: {mach['cpu']} ({mach['cpu_count']} cores); load average now "
          f"{' / '.join(f'{x:.2f}' for x in mach['load_avg'])} (1 / 5 / 15 min)")  # fmt: skip
    print(f"greedy batched == unbatched: {same}; wrote {path}")
    return 0


def _greedy(n: int) -> Any:
    from terrazzo.runtime.llm_text import SamplingParams

    return SamplingParams(max_tokens=n, ignore_eos=True)


if __name__ == "__main__":
    raise SystemExit(main())
