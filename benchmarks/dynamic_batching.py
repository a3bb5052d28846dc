"""Question: how much throughput does dynamic batching buy at concurrency 1/8/32, at what latency?

A small BERT encoder (``transformers.BertModel``, random weights, a tiny config) is exported to
ONNX with a dynamic batch dimension, compiled once (batch 1..64, every op on the CPU class, one
stage, with static builds at the ``--buckets`` batch sizes beside the symbolic build: CPU
schedules apply to static kernels only, and the symbolic build alone runs TVM's plain loop nests,
~20x slower here; ``--buckets none`` serves the symbolic build) and served twice behind the
gateway: without batching (one request = one execution)
and with the stage worker's dynamic batcher (``--max-batch-size 32``, ``--max-queue-delay-us
0``: whatever queued while the stage was busy runs as the next batch). A load process of
closed-loop ``tritonclient.grpc`` clients (one per concurrency slot, batch-1 requests) measures
throughput and p50/p99 latency; the stage worker's counters give executions per request.
Outputs of the batched server are checked against the bundle run in-process, request by request.

The planner splits this bundle into the encoder (stage 0) and six empty stages (dead shape
branches without outputs); only stage 0 is served, so the rows measure the encoder.

``cpu-in-gw`` rows run the encoder stage inside the gateway process (``stage_in_gateway``): no
worker hop, so what remains per request is the client hop, the gateway's Python and the
kernels. ``exec_ms_batch{N}`` (in-process execution of the served build) show what a batch
costs per row; ``exec_ms_symbolic_batch{N}`` the symbolic build of the same bundle.

``cpu_ms_per_request`` splits where the CPU time of a row went: the gateway process (this one:
gRPC server, gateway Python, the hop's client side), the stage worker process (the hop's
server side, batcher, kernels; ``kernel_ms_per_request`` is the worker's execution time alone)
and the load process (the ``tritonclient`` clients). On a 2-core host these compete for the
same cores: their sum per request bounds throughput.

``simulated`` rows serve the same bundle with a fixed 20 ms added to every *execution* (the
runner's ``execute_delay_s``, Triton's ``execute_delay_ms``): a device whose cost per execution
does not grow with the batch, as a launch-bound accelerator. They isolate what the scheduler
can gain; the ``cpu`` rows are what this host's CPU kernels gain.

``--tune-buckets TRIALS`` tunes every bucket's kernels before it is built (``compile
--tune-buckets``) into ``--tuning`` (default: the per-user database; kernels with a record for
this host and thread count are not tuned again). Without it the buckets run default schedules.
``batch_sizes`` per row is the stage's histogram of executed batch sizes: the batcher cuts
batches at bucket sizes (a 17-row batch would pay for the 32-row bucket).

Run: ``.venv/bin/python benchmarks/dynamic_batching.py [--duration-s 6] [--quick]
[--tune-buckets 8]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import print_table, write_result  # noqa: E402

SEQ = 16
MAX_BATCH = 64
BUCKETS = "1,2,4,8,16,32"  # the batcher merges at most 32 rows (--max-batch-size 32)
SLA_S = 0.5
CONFIG = {
    "vocab_size": 1000,
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 512,
    "max_position_embeddings": 128,
}


def build_bundle(
    d: Path, buckets: str | None = BUCKETS, tune_buckets: int = 0, tuning: str | None = None
) -> Path:
    """Export the encoder to ONNX (dynamic batch) and compile it as one CPU stage (with static
    builds at ``buckets``; None: the symbolic build only; ``tune_buckets`` trials per kernel
    tune each bucket into the ``tuning`` database first)."""
    import torch
    import transformers

    from terrazzo.frontend import from_onnx
    from terrazzo.pipeline import compile_model
    from terrazzo.placement import SLA, Fleet, build_plan, to_problem

    cfg = transformers.BertConfig(**CONFIG, attn_implementation="eager")
    torch.manual_seed(0)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = transformers.BertModel(cfg)

        def forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
            return self.m(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)

    ids = torch.randint(0, CONFIG["vocab_size"], (2, SEQ))
    onnx_path = d / "bert.onnx"
    batch = {0: "batch"}
    torch.onnx.export(Encoder().eval(), (ids, torch.ones_like(ids)), str(onnx_path),
                      input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state", "pooler_output"],
                      dynamic_axes={"input_ids": batch, "attention_mask": batch,
                                    "last_hidden_state": batch, "pooler_output": batch},
                      dynamo=False, opset_version=17)  # fmt: skip
    fleet = Fleet.from_dict({"devices": {"cpu": {"count": 1}}})
    sla = SLA(latency_s=SLA_S)
    shapes = {n: f"1..{MAX_BATCH}x{SEQ}" for n in ("input_ids", "attention_mask")}
    prob = to_problem(from_onnx(onnx_path, shapes=shapes), fleet, sla, 1.0)
    plan = build_plan(prob, np.zeros(len(prob.tasks), dtype=int), "all-cpu", 0.0)
    res = compile_model(onnx_path, fleet, sla, out_path=d / "bert.tzb", plan=plan,
                        shapes=shapes, include_reference=False, batch_buckets=buckets,
                        tune_buckets=tune_buckets if buckets else 0, tuning_db=tuning)  # fmt: skip
    return Path(res.path)


def _feeds(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(0, CONFIG["vocab_size"], (1, SEQ)).astype(np.int64),
        "attention_mask": np.ones((1, SEQ), np.int64),
    }


def load(port: int, concurrency: int, duration_s: float) -> dict[str, Any]:
    """Closed-loop clients (run in their own process): latencies of completed requests."""
    import tritonclient.grpc as tc

    cpu0 = time.process_time()
    stop_at = time.perf_counter() + duration_s
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = threading.Barrier(concurrency)

    def client(slot: int) -> None:
        c = tc.InferenceServerClient(f"127.0.0.1:{port}")
        feeds = _feeds(slot)
        inputs = []
        for name, a in feeds.items():
            t = tc.InferInput(name, list(a.shape), "INT64")
            t.set_data_from_numpy(a)
            inputs.append(t)
        c.infer("bert", inputs, client_timeout=30)  # warm-up, not counted
        start.wait(60)
        mine = []
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                c.infer("bert", inputs, client_timeout=30)
            except Exception:
                with lock:
                    errors[0] += 1
                continue
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)
        c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    t_begin = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_begin
    cpu = time.process_time() - cpu0  # the clients' CPU (warm-up and connects included)
    return {"latencies_s": lat, "errors": errors[0], "wall_s": wall, "cpu_s": cpu}


def _run_load(port: int, concurrency: int, duration_s: float) -> dict[str, Any]:
    code = (
        f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from benchmarks.dynamic_batching import load; "
        f"print(json.dumps(load({port}, {concurrency}, {duration_s})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=duration_s + 120
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (``/proc/<pid>/stat``)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _worker_pids(server: Any) -> list[int]:
    return [int(w["handle"].pid) for w in server.workers() if hasattr(w["handle"], "pid")]


def _stage0(server: Any) -> dict[str, Any]:
    inproc = getattr(server.gateway, "servicer", None)  # stage_in_gateway: its own counters
    if inproc is not None:
        return dict(inproc.stats.snapshot(), stage=0)
    return next(r for r in server.worker_stats.fetch() if r["stage"] == 0)


def _check_outputs(server: Any, bundle: Path) -> float:
    """Max |batched - in-process| over concurrent requests (they merge: 8 at once)."""
    import tritonclient.grpc as tc

    from terrazzo.bundle import open_bundle

    with open_bundle(bundle, allow_unsigned=True) as b:
        runners = b.load_stages()
        want = [b.run(_feeds(s), runners) for s in range(8)]

    def one(s: int) -> dict[str, np.ndarray]:
        c = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
        inputs = []
        for name, a in _feeds(s).items():
            t = tc.InferInput(name, list(a.shape), "INT64")
            t.set_data_from_numpy(a)
            inputs.append(t)
        r = c.infer("bert", inputs)
        c.close()
        return {n: r.as_numpy(n) for n in ("last_hidden_state", "pooler_output")}

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(one, range(8)))
    return max(
        float(np.max(np.abs(g[n] - w[n]))) for g, w in zip(got, want, strict=True) for n in g
    )


def _median_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (device, mode, concurrency): the round with the median throughput (the lower
    middle one for an even count), with every round's throughput beside it."""
    out = []
    keys = list(dict.fromkeys((r["device"], r["mode"], r["concurrency"]) for r in rows))
    for key in keys:
        same = sorted(
            (r for r in rows if (r["device"], r["mode"], r["concurrency"]) == key),
            key=lambda r: r["throughput_rps"],
        )
        pick = dict(same[(len(same) - 1) // 2])
        pick["rounds_rps"] = [round(r["throughput_rps"], 1) for r in same]
        out.append(pick)
    return out


def _paired_speedups(raw: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """Each batched row's ``speedup``: the median over rounds of batched / unbatched throughput
    of the same round (served back to back, so at about the same load); ``rounds_speedup``
    lists them. Comparing each mode's median round instead pairs rounds run at other loads."""
    for r in rows:
        if r["mode"] != "batched":
            continue
        ratios = []
        for b in raw:
            if (b["mode"], b["device"], b["concurrency"]) != ("batched", r["device"],
                                                              r["concurrency"]):  # fmt: skip
                continue
            un = next(
                u for u in raw
                if (u["mode"], u["device"], u["concurrency"], u.get("round", 0))
                == ("unbatched", b["device"], b["concurrency"], b.get("round", 0))
            )  # fmt: skip
            ratios.append(b["throughput_rps"] / un["throughput_rps"])
        r["speedup"] = float(np.median(ratios))
        r["rounds_speedup"] = [round(x, 2) for x in ratios]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=6.0, help="seconds per measured row")
    ap.add_argument("--quick", action="store_true", help="2 s per row, concurrency 1 and 32")
    ap.add_argument(
        "--buckets",
        default=BUCKETS,
        help=f"static batch builds (default {BUCKETS}; 'none': symbolic only)",
    )
    ap.add_argument(
        "--tune-buckets", type=int, default=0, metavar="TRIALS",
        help="tune each bucket's kernels before building it (default 0: default schedules)",
    )  # fmt: skip
    ap.add_argument(
        "--rounds", type=int, default=1,
        help="serve unbatched then batched this many times (fresh servers each time); the table "
        "shows each row's median round by throughput",
    )  # fmt: skip
    ap.add_argument("--tuning", default=None, help="tuning database (records.jsonl) for that")
    ap.add_argument(
        "--devices",
        default="cpu,cpu-in-gw,simulated",
        help="rows to run (cpu, cpu-in-gw, simulated)",
    )
    args = ap.parse_args()
    buckets = None if args.buckets == "none" else args.buckets
    import os

    duration = 2.0 if args.quick else args.duration_s
    concurrencies = (1, 32) if args.quick else (1, 8, 32)

    from terrazzo.runtime import BatchingOptions, ServingPlan, serve

    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"model": CONFIG, "seq": SEQ, "sla_s": SLA_S, "duration_s": duration,
                             "buckets": buckets, "tune_buckets": args.tune_buckets,
                             "load_avg_start": list(os.getloadavg())}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        bundle = build_bundle(Path(tmp), buckets, args.tune_buckets, args.tuning)
        extra["compile_s"] = time.perf_counter() - t0
        base = replace(ServingPlan.from_bundle(bundle, allow_unsigned=True), model_name="bert")
        # The planner emits the encoder as stage 0 plus empty stages for dead shape branches
        # (no outputs: nothing reads them). Serving them would add a gRPC hop per request and
        # stage each; they are left out so the rows measure the encoder.
        kept = tuple(s for s in base.stages if s.outputs)
        extra["stages_in_bundle"], extra["stages_served"] = len(base.stages), len(kept)
        base = replace(base, stages=kept)
        base.verify()
        from terrazzo.bundle import open_bundle

        with open_bundle(bundle, allow_unsigned=True) as b:  # in-process execution cost
            runners = b.load_stages()
            extra["bucket_sizes"] = list(runners[0].bucket_sizes)

            def exec_ms(rows_n: int, reps: int) -> float:
                f = {k: np.repeat(v, rows_n, axis=0) for k, v in _feeds(0).items()}
                b.run(f, runners)
                t1 = time.perf_counter()
                for _ in range(reps):
                    b.run(f, runners)
                return (time.perf_counter() - t1) / reps * 1e3

            for rows_n in (1, 2, 3, 4, 8, 16, 17, 32):
                extra[f"exec_ms_batch{rows_n}"] = exec_ms(rows_n, 20)
            extra["exec_ms_per_row"] = {
                n: extra[f"exec_ms_batch{n}"] / n for n in (1, 2, 4, 8, 16, 32)
            }
            buckets_of = [(r, r._buckets) for r in runners]
            for r, _ in buckets_of:
                r.attach_buckets([])  # the symbolic build of the same stage
            for rows_n in (1, 8, 32):
                extra[f"exec_ms_symbolic_batch{rows_n}"] = exec_ms(rows_n, 3)
            for r, bk in buckets_of:
                r.attach_buckets(bk)
            print(json.dumps({k: v for k, v in extra.items() if k.startswith("exec")}), flush=True)
        simulated = replace(
            base,
            stages=tuple(
                replace(s, runner=replace(s.runner, execute_delay_s=0.02)) for s in base.stages
            ),
        )
        batching = BatchingOptions(max_batch_size=32, max_queue_delay_us=0)
        wanted = args.devices.split(",")
        for rnd in range(args.rounds):  # interleaved: both modes in every round
            for device, plan in (("cpu", base), ("cpu-in-gw", base), ("simulated", simulated)):
                if device not in wanted:
                    continue
                for mode, opts in (("unbatched", None), ("batched", batching)):
                    in_gw = device == "cpu-in-gw"  # the stage in the gateway process: no hop
                    with serve(
                        plan, 0, allow_unsigned=True, batching=opts, stage_in_gateway=in_gw
                    ) as server:
                        if device == "cpu" and mode == "batched" and rnd == 0:
                            extra["max_abs_diff_batched_vs_unbatched"] = _check_outputs(
                                server, bundle
                            )
                        pids = _worker_pids(server)
                        for conc in concurrencies:
                            s0 = _stage0(server)
                            gw0, w0 = time.process_time(), sum(_proc_cpu_s(p) for p in pids)
                            res = _run_load(server.port, conc, duration)
                            gw1, w1 = time.process_time(), sum(_proc_cpu_s(p) for p in pids)
                            s1 = _stage0(server)
                            lat = np.asarray(res["latencies_s"])
                            reqs = s1["request_count"] - s0["request_count"]
                            execs = s1["execution_count"] - s0["execution_count"]
                            hist0 = {h["batch_size"]: h["count"] for h in s0["batch_stats"]}
                            hist = {
                                h["batch_size"]: h["count"] - hist0.get(h["batch_size"], 0)
                                for h in s1["batch_stats"]
                            }
                            p99 = float(np.percentile(lat, 99)) if lat.size else float("nan")
                            rows.append(
                                {
                                    "device": device,
                                    "mode": mode,
                                    "round": rnd,
                                    "concurrency": conc,
                                    "requests": int(lat.size),
                                    "errors": res["errors"],
                                    "throughput_rps": lat.size / res["wall_s"],
                                    "p50_ms": float(np.percentile(lat, 50)) * 1e3
                                    if lat.size
                                    else None,
                                    "p99_ms": p99 * 1e3,
                                    "p99_within_sla": bool(p99 <= SLA_S),
                                    "rows_per_execution": reqs / execs if execs else None,
                                    "executions": int(execs),
                                    "batch_sizes": {k: v for k, v in sorted(hist.items()) if v},
                                    "inferences": int(
                                        s1["inference_count"] - s0["inference_count"]
                                    ),
                                    "cpu_ms_per_request": {
                                        "gateway": (gw1 - gw0) / max(1, reqs) * 1e3,
                                        "worker": (w1 - w0) / max(1, reqs) * 1e3,
                                        "client": res["cpu_s"] / max(1, reqs) * 1e3,
                                    },
                                    "kernel_ms_per_request": (
                                        s1["compute_infer_s"] - s0["compute_infer_s"]
                                    )
                                    / max(1, reqs)
                                    * 1e3,
                                }
                            )
                            print(json.dumps(rows[-1]), flush=True)
    raw, rows = rows, _median_rows(rows)
    extra["rounds"] = raw
    _paired_speedups(raw, rows)
    for r in rows:  # flat columns for the table
        cpu = r["cpu_ms_per_request"]
        r["cpu_ms_gw/wk/cl"] = f"{cpu['gateway']:.2f}/{cpu['worker']:.2f}/{cpu['client']:.2f}"
        r["kernel_ms"] = r["kernel_ms_per_request"]
    cols = ["device", "mode", "concurrency", "requests", "errors", "throughput_rps", "p50_ms",
            "p99_ms", "p99_within_sla", "rows_per_execution", "speedup", "cpu_ms_gw/wk/cl",
            "kernel_ms", "rounds_rps", "rounds_speedup"]  # fmt: skip
    print_table(rows, cols, title="Dynamic batching: tiny BERT encoder, batch-1 requests")
    print(json.dumps({k: v for k, v in extra.items() if k != "model"}))
    from benchmarks._common import machine_info

    info = machine_info()
    print(f"cpu: {info['cpu']} ({info['cpu_count']} cpus); load average at start "
          f"{extra['load_avg_start'][0]:.2f}, at end {info['load_avg'][0]:.2f}")  # fmt: skip
    path = write_result("dynamic_batching", rows, extra)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
