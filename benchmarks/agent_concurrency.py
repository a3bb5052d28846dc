"""Agent programs: concurrent + pipelined execution vs the same nodes run one after another in one process.

Program: ``examples/agents/voice_program.yaml`` — speech-to-text, then two independent
branches: (a) the LLM (tiny-llama, 64 tokens) streamed into a chunked text-to-speech model,
(b) an account lookup (two tool calls that wait on the network, 25 ms + 15 ms of sleep: a
stand-in for real APIs, labelled as such). Both sides run the same compiled stages, in this
process, with the same runners:

- **sequential**: ``LocalAgent(plan)`` — stages in plan order, one after another, and the
  TTS voices each chunk after decoding ends (``overlap=False``), the way a LangGraph-style
  loop runs its nodes;
- **concurrent**: ``LocalAgent(plan, concurrent=True)`` — every stage starts when its inputs
  exist (thread pool, as the gateway does with workers), and each 16-token chunk is voiced
  while the next is decoded (``overlap=True``).

Outputs are checked equal. Latency: median over ``--requests`` single conversations.
Throughput: ``--conversations`` (8) at once — sequential runs them one after another,
concurrent submits all 8 to one pool.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/agent_concurrency.py [--requests 15]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import print_table, write_result  # noqa: E402

SPEC = ROOT / "examples" / "agents" / "voice_program.yaml"
FLEET = {"devices": {"cpu": {"count": 8}, "h100": {"count": 2}}, "pricing": {"mode": "cloud"}}


def _with_overlap(plan: Any, overlap: bool) -> Any:
    """The plan with every streamed decode stage's ``overlap`` set (False: voice after decoding)."""
    from terrazzo.runtime.plan import RunnerSpec

    stages = []
    for st in plan.stages:
        spec = st.runner
        inner = spec.kwargs.get("factory", spec.factory)
        if str(inner).endswith(":llm_decode_stream"):
            kw = dict(spec.kwargs)
            kw["kwargs"] = {**kw["kwargs"], "overlap": overlap}
            spec = RunnerSpec(spec.factory, kw)
        stages.append(replace(st, runner=spec))
    return replace(plan, stages=tuple(stages))


def _audio(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 1600)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=15)
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--name", default="agent_concurrency")
    args = ap.parse_args()

    from terrazzo.pipeline import compile_agent
    from terrazzo.placement import Fleet
    from terrazzo.runtime.agent_plan import LocalAgent, agent_serving_plan

    with tempfile.TemporaryDirectory() as tmp:
        res = compile_agent(SPEC, Fleet.model_validate(FLEET), "5s", Path(tmp) / "voice.tzb",
                            device_builds=False)  # fmt: skip
        plan = agent_serving_plan(res.path)
        seq = LocalAgent(_with_overlap(plan, False))
        con = LocalAgent(_with_overlap(plan, True), concurrent=True, max_workers=32)
        outs = ("speech", "screen", "planner")
        for seed in range(3):  # warm up, and the same answers both ways
            a, b = seq({"audio": _audio(seed)}), con({"audio": _audio(seed)})
            for o in outs:
                if a[o].dtype == object:
                    assert list(a[o]) == list(b[o]), o
                else:
                    np.testing.assert_allclose(a[o], b[o], rtol=1e-5, atol=1e-6)
        assert a["speech"].shape == (1, 1600 * 4), a["speech"].shape  # 64 tokens = 4 chunks
        lat: dict[str, list[float]] = {"sequential": [], "concurrent": []}
        for i in range(args.requests):  # interleaved
            for name, agent in (("sequential", seq), ("concurrent", con)):
                t0 = time.perf_counter()
                agent({"audio": _audio(100 + i)})
                lat[name].append(time.perf_counter() - t0)
        n = args.conversations
        thr: dict[str, float] = {}
        t0 = time.perf_counter()
        for c in range(n):
            seq({"audio": _audio(200 + c)})
        thr["sequential"] = n / (time.perf_counter() - t0)
        outer = ThreadPoolExecutor(max_workers=n)
        t0 = time.perf_counter()
        list(outer.map(lambda c: con({"audio": _audio(200 + c)}), range(n)))
        thr["concurrent"] = n / (time.perf_counter() - t0)
        outer.shutdown()
        con.close()
    rows = [
        {"mode": m, "latency_p50_ms": 1e3 * statistics.median(lat[m]),
         "latency_min_ms": 1e3 * min(lat[m]), f"conv_per_s_at_{n}": thr[m]}
        for m in ("sequential", "concurrent")
    ]  # fmt: skip
    lat_x = statistics.median(lat["sequential"]) / statistics.median(lat["concurrent"])
    thr_x = thr["concurrent"] / thr["sequential"]
    print_table(rows, list(rows[0]), title=f"voice_program, load {os.getloadavg()[0]:.1f}")
    print(f"latency speed-up {lat_x:.2f}x (target >= 2x); throughput at {n} conversations "
          f"{thr_x:.2f}x (target >= 3x)")  # fmt: skip
    path = write_result(args.name, rows, {"latency_speedup": lat_x, "throughput_speedup": thr_x,
                        "requests": args.requests, "conversations": n,
                        "load_avg": os.getloadavg()})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
