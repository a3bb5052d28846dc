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
  while the next is decoded (``overlap=True``). The bundle is compiled with
  ``batch_sizes=(1, 2, 4, 8)``: concurrent conversations share decode steps in one
  continuous-batching engine (``runtime.llm_batch``) and their speech-to-text and TTS calls
  merge into batched executions (``runtime.batcher``). The sequential side runs the batch-1
  builds (``batching=False``): one conversation's nodes one after another.

Outputs are checked equal (greedy), for single conversations and for the 8 run at once.
Latency: median over ``--requests`` single conversations. Throughput: ``--conversations``
(8) at once — sequential runs them one after another, concurrent submits all 8 to one pool.
Profile: each stage of one sequential conversation timed alone (the critical-path bound of
the latency), and process CPU seconds per conversation in each throughput run (how much of
the work overlaps on this machine's cores).

Run: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/agent_concurrency.py [--requests 15]``.
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
BATCHES = (1, 2, 4, 8)


_BATCHED = (":llm_decode_stream", ":llm_decode", ":model_stage")


def _set(kwargs: dict[str, Any], overlap: bool, batching: bool) -> dict[str, Any]:
    """A runner's kwargs with ``overlap``/``batching`` set, through trampolines and wrappers."""
    factory, inner = str(kwargs.get("factory", "")), kwargs.get("kwargs")
    if not isinstance(inner, dict):
        return kwargs
    inner = _set(inner, overlap, batching)
    if factory.endswith(_BATCHED):
        inner = {**inner, "batching": batching}
    if factory.endswith(":llm_decode_stream"):
        inner = {**inner, "overlap": overlap}
    return {**kwargs, "kwargs": inner}


def _with_modes(plan: Any, overlap: bool, batching: bool) -> Any:
    """The plan with streamed decode stages' ``overlap`` (False: voice after decoding) and the
    model/decode stages' ``batching`` (False: the batch-1 builds, each call alone) set."""
    from terrazzo.runtime.plan import RunnerSpec

    stages = []
    for st in plan.stages:
        spec = st.runner
        spec = RunnerSpec(spec.factory, _set(dict(spec.kwargs), overlap, batching))
        stages.append(replace(st, runner=spec))
    return replace(plan, stages=tuple(stages))


def _same(a: dict[str, Any], b: dict[str, Any], outs: tuple[str, ...]) -> None:
    for o in outs:
        if a[o].dtype == object or a[o].dtype.kind == "i":
            assert list(a[o].reshape(-1)) == list(b[o].reshape(-1)), o
        else:
            np.testing.assert_allclose(a[o], b[o], rtol=1e-5, atol=1e-6)


def _profile(plan: Any, audio: np.ndarray, repeat: int = 5) -> dict[str, float]:
    """Median wall seconds of each stage of one sequential conversation, run alone."""
    from terrazzo.runtime.agent_plan import LocalAgent

    agent = LocalAgent(plan)
    times: dict[str, list[float]] = {}
    for _ in range(repeat + 1):
        env = {"audio": audio}
        for st, runner in zip(agent.plan.stages, agent.runners, strict=True):
            t0 = time.perf_counter()
            env.update(runner({v: env[v] for v in st.inputs}))
            times.setdefault(",".join(st.outputs[:1]), []).append(time.perf_counter() - t0)
    return {k: statistics.median(v[1:]) for k, v in times.items()}


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _audio(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 1600)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=15)
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bundle", type=Path, default=None,
                    help="reuse this compiled bundle (compiled there when missing)")  # fmt: skip
    ap.add_argument("--name", default="agent_concurrency")
    args = ap.parse_args()

    from terrazzo.pipeline import compile_agent
    from terrazzo.placement import Fleet
    from terrazzo.runtime.agent_plan import LocalAgent, agent_serving_plan

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or Path(tmp) / "voice.tzb"
        if not bundle.exists():
            compile_agent(SPEC, Fleet.model_validate(FLEET), "5s", bundle, device_builds=False,
                          batch_sizes=BATCHES)  # fmt: skip
        plan = agent_serving_plan(bundle)
        seq_plan = _with_modes(plan, overlap=False, batching=False)
        seq = LocalAgent(seq_plan)
        con = LocalAgent(_with_modes(plan, overlap=True, batching=True), concurrent=True,
                         max_workers=64)  # fmt: skip
        outs = ("speech", "screen", "planner")
        for seed in range(3):  # warm up, and the same answers both ways
            a, b = seq({"audio": _audio(seed)}), con({"audio": _audio(seed)})
            _same(a, b, outs)
        assert a["speech"].shape == (1, 1600 * 4), a["speech"].shape  # 64 tokens = 4 chunks
        stage_s = _profile(seq_plan, _audio(0))
        lat: dict[str, list[float]] = {"sequential": [], "concurrent": []}
        for i in range(args.requests):  # interleaved
            for name, agent in (("sequential", seq), ("concurrent", con)):
                t0 = time.perf_counter()
                agent({"audio": _audio(100 + i)})
                lat[name].append(time.perf_counter() - t0)
        n = args.conversations
        thr: dict[str, list[float]] = {"sequential": [], "concurrent": []}
        cpu: dict[str, list[float]] = {"sequential": [], "concurrent": []}
        outer = ThreadPoolExecutor(max_workers=n)
        for r in range(args.rounds):  # interleaved rounds; the median rate is reported
            for name in ("sequential", "concurrent"):
                c0, t0 = _cpu_s(), time.perf_counter()
                if name == "sequential":
                    got = [seq({"audio": _audio(200 + c)}) for c in range(n)]
                else:
                    got = list(outer.map(lambda c: con({"audio": _audio(200 + c)}), range(n)))
                wall = time.perf_counter() - t0
                thr[name].append(n / wall)
                cpu[name].append((_cpu_s() - c0) / n)
                if r == 0 and name == "sequential":
                    ref = got
                elif r == 0:  # the 8 conversations decoded together answer as if alone
                    for a, b in zip(ref, got, strict=True):
                        _same(a, b, outs)
        outer.shutdown()
        engine = next(r.engine for r in con.runners if getattr(r, "engine", None) is not None)
        engine_stats = engine.stats()
        con.close()
    rows = [
        {"mode": m, "latency_p50_ms": 1e3 * statistics.median(lat[m]),
         "latency_min_ms": 1e3 * min(lat[m]), f"conv_per_s_at_{n}": statistics.median(thr[m]),
         "cpu_ms_per_conv": 1e3 * statistics.median(cpu[m])}
        for m in ("sequential", "concurrent")
    ]  # fmt: skip
    lat_x = statistics.median(lat["sequential"]) / statistics.median(lat["concurrent"])
    thr_x = statistics.median(thr["concurrent"]) / statistics.median(thr["sequential"])
    load_end = os.getloadavg()
    title = f"voice_program, load avg {load_start[0]:.1f} at start, {load_end[0]:.1f} at end"
    print_table(rows, list(rows[0]), title=title)
    prof = [{"stage": k, "ms": 1e3 * v} for k, v in stage_s.items()]
    print_table(prof, ["stage", "ms"], title="one sequential conversation, each stage alone")
    tools = sum(v for k, v in stage_s.items() if k in ("crm", "card"))
    llm = sum(v for k, v in stage_s.items() if k.startswith("planner"))
    first = stage_s.get("stt", 0.0)
    bound = first + tools  # the tool branch is two waits in a row: no runtime shortens it
    seq_ms = 1e3 * statistics.median(lat["sequential"])
    print(f"critical path: stt {1e3 * first:.1f} ms, then the tool branch {1e3 * tools:.1f} ms "
          f"(LLM branch {1e3 * llm:.1f} ms unpipelined, in parallel): a conversation takes at "
          f"least {1e3 * bound:.1f} ms, so the latency speed-up cannot exceed "
          f"{seq_ms / (1e3 * bound):.2f}x on this program")  # fmt: skip
    per_step = {b: v["mean_s"] * 1e3 for b, v in engine_stats.get("per_bucket", {}).items()}
    print(
        f"decode engine: {engine_stats['steps']} steps, mean ms per step by batch size {per_step}"
    )
    print(f"latency speed-up {lat_x:.2f}x (target >= 2x); throughput at {n} conversations "
          f"{thr_x:.2f}x (target >= 3x)")  # fmt: skip
    path = write_result(args.name, rows, {"latency_speedup": lat_x, "throughput_speedup": thr_x,
                        "requests": args.requests, "conversations": n, "rounds": args.rounds,
                        "batch_sizes": list(BATCHES), "stage_ms": {k: 1e3 * v for k, v in stage_s.items()},
                        "latency_bound_speedup": seq_ms / (1e3 * bound),
                        "engine": engine_stats,
                        "load_avg_start": list(load_start), "load_avg": list(load_end)})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
