"""Single-kernel schedule search: trials each proposer needs to reach 90% of MetaSchedule's best.

Question: for matmul 256³/512³, a conv2d and a softmax, how fast does the offline proposer
get (GFLOP/s, fraction of the machine's measured peak from torch matmul 2048³), and after
how many trials does it reach 90% of MetaSchedule's best (same evaluator, same run)?

Kernel speed is also given as a fraction of the CPU's *measured fp32 FMA peak*
(``_peak.fma_peak_gflops``: register-resident vector FMAs, same threads, same run), the figure
the issue's "≥ 80% of peak" target is about; the torch-matmul figure is kept for comparison.

MetaSchedule at its usual long budget (the search target: ≥ 98% of its result within ≤ 64
measured trials), run once and kept:
``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/tuning_kernels.py --trials 64 --ms-trials 1000
--kernels mm512,conv_nhwc,softmax --name tuning_kernels_ms_long``.

Both searches' best schedules are then re-timed head to head, interleaved over 7 rounds
(``h2h_*`` columns): the figures the ≥ 98% target is judged on, since each search's own best
was timed at a different moment of a long, possibly loaded run. A finished long run's result
can be re-used instead of searching again: ``--ms-workdirs mm512=/tmp/tz-ms-…,…`` (the
MetaSchedule database directories a run prints and records as ``ms_work_dir``).

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/tuning_kernels.py [--trials N (24)]
[--ms-trials N (16)] [--kernels mm256,mm512,conv_nhwc,softmax] [--no-ms] [--name RESULT]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table, write_result  # noqa: E402
from _peak import fma_peak_gflops  # noqa: E402


def measure_peak_gflops() -> float:
    import torch

    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    torch.mm(a, b)
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        torch.mm(a, b)
        ts.append(time.perf_counter() - t0)
    return 2 * 2048**3 / sorted(ts)[len(ts) // 2] / 1e9


def _ms_trials(work_dir: str) -> int:
    """Measured records in a MetaSchedule database directory."""
    n = 0
    for p in Path(work_dir).glob("*tuning_record*.json"):
        n += sum(1 for line in p.read_text().splitlines() if line.strip())
    return n


def _head_to_head(ev: object, offline_ex: object, ms_ex: object, rounds: int = 7) -> dict:
    """Both searches' best kernels timed alternately; medians (ms) and offline's relative speed."""
    import statistics

    t_off: list[float] = []
    t_ms: list[float] = []
    for _ in range(rounds):
        t_off.append(ev.time_executable(offline_ex))  # type: ignore[attr-defined]
        t_ms.append(ev.time_executable(ms_ex))  # type: ignore[attr-defined]
    off, msm = statistics.median(t_off), statistics.median(t_ms)
    return {"h2h_offline_ms": off * 1e3, "h2h_ms_ms": msm * 1e3, "h2h_offline_over_ms": msm / off}


def main() -> None:
    import tvm

    from terrazzo.codegen import host_target
    from terrazzo.codegen.tuning import (
        KernelEvaluator,
        MeasureOptions,
        OfflineProposer,
        TuneOptions,
        analyse,
        apply_program,
        tune_kernel,
    )
    from terrazzo.codegen.tuning import workloads as W
    from terrazzo.codegen.tuning.measure import build
    from terrazzo.codegen.tuning.metaschedule import metaschedule_best, tune_kernel_metaschedule

    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--ms-trials", type=int, default=16)
    ap.add_argument("--kernels", default="mm256,mm512,conv_nhwc,softmax")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep rows of kernels not run now from the previous result file",
    )
    ap.add_argument("--no-ms", action="store_true")
    ap.add_argument(
        "--ms-workdirs",
        default="",
        help="kernel=DIR,...: take MetaSchedule's result from a finished run's database",
    )
    ap.add_argument("--name", default="tuning_kernels", help="result file name (results/NAME.json)")
    args = ap.parse_args()
    kernels = {
        "mm256": lambda: W.matmul(256, 256, 256),
        "mm512": lambda: W.matmul(512, 512, 512),
        "conv": lambda: W.conv2d(1, 64, 28, 64, 3),
        "conv_nhwc": lambda: W.conv2d_nhwc(1, 64, 28, 64, 3),
        "softmax": lambda: W.softmax(128, 1024),
    }
    target = tvm.target.Target(dict(host_target()))
    peak = measure_peak_gflops()
    threads = int(
        os.environ.get("TVM_NUM_THREADS")
        or os.environ.get("OMP_NUM_THREADS")
        or os.cpu_count()
        or 1
    )
    fma = fma_peak_gflops(threads)
    print(f"measured FMA peak ({threads} threads): {fma}", flush=True)
    mopts = MeasureOptions(cache_flush_bytes=8 << 20, min_repeats=5)
    workdirs = dict(kv.split("=", 1) for kv in args.ms_workdirs.split(",") if kv)
    rows = []
    for name in args.kernels.split(","):
        k = analyse(name, kernels[name]())
        ev = KernelEvaluator(k, target, mopts)
        res = tune_kernel(
            k,
            target,
            OfflineProposer(),
            TuneOptions(trials=args.trials, batch=4, measure=mopts),
            evaluator=ev,
        )
        ms = None
        ms_func = None
        if name in workdirs:
            ms_func = metaschedule_best(k, target, workdirs[name])
        elif not args.no_ms:
            ms = tune_kernel_metaschedule(k, target, args.ms_trials, evaluator=ev)
            ms_func = metaschedule_best(k, target, ms.work_dir)
        row = {
            "kernel": name,
            "gflop": k.flops / 1e9,
            "untuned_ms": (res.baseline_latency_s or 0) * 1e3,
            "offline_ms": (res.best_latency_s or 0) * 1e3,
            "offline_gflops": k.flops / res.best_latency_s / 1e9 if res.best_latency_s else 0.0,
            "offline_frac_peak": k.flops / res.best_latency_s / 1e9 / peak
            if res.best_latency_s
            else 0.0,
            "offline_frac_fma_peak": k.flops / res.best_latency_s / 1e9 / fma["gflops"]
            if res.best_latency_s
            else 0.0,
            "offline_trials": len(res.trials),
            "offline_wall_s": res.wall_s,
        }
        if ms is not None and ms.best_latency_s:
            goal = ms.best_latency_s / 0.9
            row.update(
                {
                    "ms_ms": ms.best_latency_s * 1e3,
                    "ms_gflops": k.flops / ms.best_latency_s / 1e9,
                    "ms_trials": ms.trials,
                    "ms_wall_s": ms.wall_s,
                    "ms_cost_model": ms.cost_model,
                    "offline_trials_to_90pct_ms": res.trials_to_reach(goal)
                    or f">{len(res.trials)}",
                    # ≥ 98% of MetaSchedule's result: offline latency ≤ MS latency / 0.98.
                    "offline_over_ms_speed": ms.best_latency_s / res.best_latency_s
                    if res.best_latency_s
                    else 0.0,
                    "offline_trials_to_98pct_ms": res.trials_to_reach(ms.best_latency_s / 0.98)
                    or f">{len(res.trials)}",
                }
            )
        if ms is not None:
            row["ms_work_dir"] = ms.work_dir
        elif name in workdirs:
            row["ms_work_dir"] = workdirs[name]
            row["ms_trials"] = _ms_trials(workdirs[name])
        if ms_func is not None and res.best_program is not None:
            row.update(
                _head_to_head(
                    ev,
                    build(apply_program(k.func, res.best_program), target),
                    build(ms_func, target),
                )
            )
        rows.append(row)
        print(row, flush=True)
    cols = [
        "kernel",
        "untuned_ms",
        "offline_ms",
        "offline_gflops",
        "offline_frac_peak",
        "offline_frac_fma_peak",
        "offline_trials",
        "ms_ms",
        "ms_trials",
        "offline_trials_to_90pct_ms",
        "offline_over_ms_speed",
        "offline_trials_to_98pct_ms",
        "h2h_offline_ms",
        "h2h_ms_ms",
        "h2h_offline_over_ms",
        "ms_wall_s",
        "offline_wall_s",
    ]
    if args.keep:
        from _common import earlier_rows

        extra, prev = earlier_rows(args.name, "kernel", rows)
        rows += [{**r, "earlier_run_peak_gflops": prev.get("peak_gflops")} for r in extra]
    os.environ.setdefault("COLUMNS", "220")
    print_table(
        rows,
        cols,
        title=f"Schedule search, single kernels (FMA peak {fma['gflops']:.1f} GFLOP/s on "
        f"{threads} threads; torch matmul 2048³ {peak:.1f}; both measured in this run)",
    )
    write_result(
        args.name,
        rows,
        {
            "peak_gflops": peak,
            "fma_peak": fma,
            "trials": args.trials,
            "ms_trials": args.ms_trials,
        },
    )


if __name__ == "__main__":
    main()
