"""Where one call of a bundle's stage spends its time: each VM call instruction, timed alone.

The question: of the time ``open_bundle(p).run`` takes, how much is each compiled kernel, how
much the VM's own builtins (allocation, shape checks) and dispatch, and how much the run
path around the compiled function? This TVM's Relax VM has no profiler, so the VM's
instrument hook records every call instruction of one run (the function and its arguments);
each is then timed alone, in a loop, with those arguments (kernels write their outputs into
the buffers they were given, so re-running them is harmless). Reported per instruction: the
median of ``--repeat`` batches of ``--number`` calls, in µs, next to the whole compiled
function (inputs already TVM tensors) and the bundle call. The sum of the instructions
below the whole function is the VM's dispatch cost.

    TVM_NUM_THREADS=1 python benchmarks/vm_profile.py BUNDLE.tzb [--number 200] [--repeat 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_table, write_result  # noqa: E402


def _per_call_us(call: Callable[[], Any], number: int, repeat: int) -> float:
    for _ in range(max(3, number // 10)):
        call()
    batches = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(number):
            call()
        batches.append((time.perf_counter_ns() - t0) / number / 1e3)
    return statistics.median(batches)


def profile_bundle(path: str, number: int, repeat: int) -> list[dict[str, Any]]:
    """One row per VM call instruction of stage 0's ``main``, then the totals."""
    import numpy as np

    import terrazzo
    from terrazzo.bundle import random_inputs

    bundle = terrazzo.open_bundle(path, allow_unsigned=True)
    feeds = random_inputs(bundle.inputs)
    runner = bundle.runners()[0]
    args = [np.ascontiguousarray(feeds[s.name]) for s in runner.inputs]
    import tvm

    dev_args = [tvm.runtime.tensor(a, runner._dev) for a in args]
    fn, weights = runner._fn, runner._weights
    whole_us = _per_call_us(lambda: fn(*dev_args, *weights), number, repeat)
    bundle_us = _per_call_us(lambda: bundle.run(feeds), number, repeat)

    recorded: list[tuple[str, Any, tuple[Any, ...]]] = []

    def instrument(func: Any, symbol: str, before: bool, ret: Any, *call_args: Any) -> int:
        if before:
            recorded.append((str(symbol), func, tuple(call_args)))
        return 0

    runner._vm.set_instrument(instrument)
    keep = fn(*dev_args, *weights)  # noqa: F841  (its buffers stay alive while timing)
    runner._vm.set_instrument(lambda *a: 0)
    rows = []
    for i, (symbol, func, call_args) in enumerate(recorded):
        us = _per_call_us(lambda f=func, a=call_args: f(*a), number, repeat)
        shapes = ["x".join(str(int(d)) for d in a.shape) for a in call_args if hasattr(a, "shape")]
        rows.append({"#": i, "call": symbol[:60], "us": us, "tensors": " ".join(shapes)[:60]})
    total = sum(r["us"] for r in rows)
    rows.append({"#": "", "call": "sum of the calls above", "us": total, "tensors": ""})
    rows.append({"#": "", "call": "whole compiled function", "us": whole_us, "tensors": ""})
    rows.append({"#": "", "call": "open_bundle(p).run", "us": bundle_us, "tensors": ""})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--number", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--name", default="", help="write results/vm_profile_NAME.json")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    rows = profile_bundle(args.bundle, args.number, args.repeat)
    load1 = os.getloadavg()[0]
    mi = machine_info()
    threads = os.environ.get("TVM_NUM_THREADS", "default")
    print_table(
        rows,
        ["#", "call", "us", "tensors"],
        title=f"VM call instructions of {Path(args.bundle).name}, each timed alone — {mi['cpu']}, "
        f"TVM_NUM_THREADS={threads}, load {load0:.2f}–{load1:.2f}",
    )
    if args.name:
        path = write_result(
            f"vm_profile_{args.name}",
            rows,
            {"bundle": Path(args.bundle).name, "threads": threads, "load": [load0, load1]},
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
