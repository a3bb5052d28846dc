"""Re-tune while serving: tune a served stage's hottest kernels in the background, verify, swap in.

``retune_stage`` runs in a child process at the lowest CPU priority (``nice 19``) with one
TVM thread, so the serving workers keep the machine. There it builds the stage as served now
(the tuning database as it is), tunes the ``max_kernels`` hottest kernels with the offline
proposer (``terrazzo.codegen.tuning.tune_module``: each candidate is checked against the
unscheduled kernel before it is timed), rebuilds with the new records, and checks the new
build against the current one: outputs equal on the same random inputs, and faster on
interleaved timing. Only then are the records saved to the tuning database and the new
library written. ``AdaptRuntime.swap_runner`` then hot-swaps the stage onto it (new workers,
flip at request boundaries, old workers drained).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class RetuneResult:
    """What one background re-tune found."""

    kernels_tuned: int
    records_added: int
    current_s: float
    retuned_s: float
    verified: bool
    library: str | None  # the new build, written only when verified and faster
    detail: str

    @property
    def speedup(self) -> float:
        return self.current_s / self.retuned_s if self.retuned_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "kernels_tuned": self.kernels_tuned,
            "records_added": self.records_added,
            "current_s": self.current_s,
            "retuned_s": self.retuned_s,
            "speedup": round(self.speedup, 3),
            "verified": self.verified,
            "library": self.library,
            "detail": self.detail,
        }


def _time(fn: Any, args: list[Any], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(*args)
        out.append(time.perf_counter() - t0)
    return out


def _param_specs(mod: Any) -> list[tuple[str, list[int], str]]:
    """(name, shape, dtype) of ``main``'s parameters; a symbolic dimension becomes 1."""
    out = []
    for p in mod["main"].params:
        ty = p.ty  # this TVM's Var: .name and .ty (a relax.TensorType with a shape)
        dims = [int(d.value) if hasattr(d, "value") else 1 for d in ty.shape.values]
        out.append((str(p.name), dims, str(ty.dtype)))
    return out


def _caller(vm: Any, n_inputs: int) -> Any:
    """``main`` as ``f(*params)``: a library with a weight preparation (``lift_weights``)
    prepares the weights (params after the first ``n_inputs``) once, as ``StageRunner`` does."""
    main = vm["main"]
    try:  # codegen's WEIGHT_PREP_FUNCTION
        has_prep = bool(vm.module.implements_function("main_transform_params"))
    except Exception:
        has_prep = False
    if not has_prep:  # main takes the raw weights
        return main
    prep_fn = vm["main_transform_params"]
    prepared: dict[int, list[Any]] = {}

    def call(*args: Any) -> Any:
        key = id(args[n_inputs]) if len(args) > n_inputs else 0
        if key not in prepared:
            got = prep_fn(list(args[n_inputs:]))
            prepared[key] = [got] if hasattr(got, "numpy") else list(got)
        return main(*args[:n_inputs], *prepared[key])

    return call


def _child(
    mod_json: str,
    target: dict[str, Any],
    db_path: str,
    out_path: str,
    inputs: list[tuple[str, list[int], str]] | None,
    trials: int,
    max_kernels: int,
    min_speedup: float,
    lift_weights: bool = False,
    n_inputs: int | None = None,
) -> dict[str, Any]:
    os.nice(19)  # lowest priority: serving comes first
    import numpy as np
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from terrazzo.codegen import compile_module
    from terrazzo.codegen.tuning import OfflineProposer, TuneOptions, TuningDatabase, tune_module

    mod = tvm.ir.load_json(mod_json)
    if inputs is None:
        inputs = _param_specs(mod)
    n_in = len(inputs) if n_inputs is None else n_inputs
    db = TuningDatabase(db_path)
    before = len(db)
    current = compile_module(mod, target, db if before else None, lift_weights=lift_weights)
    tgt = tvm.target.Target(dict(target))
    results = tune_module(
        mod, tgt, lambda: OfflineProposer(seed=0), TuneOptions(trials=trials), db,
        max_kernels=max_kernels,
    )  # fmt: skip
    added = len(db) - before
    retuned = compile_module(mod, target, db, lift_weights=lift_weights)
    rng = np.random.default_rng(0)

    def arg(shape: list[int], dtype: str) -> Any:
        if np.dtype(dtype).kind in "iub":  # token ids, positions, lengths: small and in range
            return tvm.runtime.tensor(np.zeros(shape, dtype))
        return tvm.runtime.tensor(rng.standard_normal(shape).astype(dtype))

    args = [arg(list(shape), dtype) for _, shape, dtype in inputs]
    dev = tvm.cpu()
    vm_cur = VirtualMachine(current, dev)
    vm_new = VirtualMachine(retuned, dev)
    run_cur, run_new = _caller(vm_cur, n_in), _caller(vm_new, n_in)

    def flat(res: Any) -> list[Any]:
        return [res.numpy()] if hasattr(res, "numpy") else [r.numpy() for r in res]

    ref = flat(run_cur(*args))
    got = flat(run_new(*args))
    verified = len(ref) == len(got) and all(
        a.shape == b.shape and np.allclose(a, b, rtol=1e-4, atol=1e-5)
        for a, b in zip(ref, got, strict=True)
    )
    cur_t: list[float] = []
    new_t: list[float] = []
    for _ in range(5):  # interleaved: load changes hit both builds alike
        cur_t += _time(run_cur, args, 5)
        new_t += _time(run_new, args, 5)
    cur_s, new_s = float(np.median(cur_t)), float(np.median(new_t))
    library = None
    if not verified:
        detail = "re-tuned build disagrees with the current build: discarded"
    elif new_s * min_speedup > cur_s:
        detail = f"re-tuned build not faster ({cur_s * 1e6:.1f} -> {new_s * 1e6:.1f} us): kept"
    else:
        retuned.export_library(out_path)
        db.save()
        library = out_path
        detail = f"{cur_s / new_s:.2f}x faster: records saved, new build written"
    return {
        "kernels_tuned": len(results),
        "records_added": added if library else 0,
        "current_s": cur_s,
        "retuned_s": new_s,
        "verified": verified,
        "library": library,
        "detail": detail,
    }


def retune_stage(
    mod: Any,
    target: Mapping[str, Any],
    db_path: str | Path,
    out_path: str | Path,
    inputs: Sequence[tuple[str, Sequence[int], str]] | None,
    *,
    trials: int = 8,
    max_kernels: int = 2,
    min_speedup: float = 1.02,
    timeout_s: float = 600.0,
    lift_weights: bool = False,
    n_inputs: int | None = None,
) -> RetuneResult:
    """Re-tune one stage module in a low-priority child process (see the module docstring).

    Args:
        mod: the stage's Relax IRModule (what it was built from), or its TVM JSON text.
        target: dict form of the build target.
        db_path: the tuning database (JSONL); updated only when the new build is kept.
        out_path: where the new library goes when it is kept.
        inputs: (name, shape, dtype) of ``main``'s parameters, for verification and timing
            (None: read from the module, a symbolic dimension taken as 1).
        trials, max_kernels: tuning budget (hottest kernels first).
        min_speedup: the new build must be this much faster to be kept.
        lift_weights: build as bundle stages are (``compile_module(lift_weights=True)``): the
            parameters after the first ``n_inputs`` are weights, prepared once.
    """
    if isinstance(mod, str):
        mod_json = mod
    else:
        import tvm

        mod_json = tvm.ir.save_json(mod)
    ctx = mp.get_context("spawn")  # a fresh interpreter: TVM's thread pool set up for 1 thread
    env_before = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = "1"
    try:
        with ctx.Pool(1) as pool:
            job = pool.apply_async(
                _child,
                (
                    mod_json,
                    dict(target),
                    str(db_path),
                    str(out_path),
                    None if inputs is None else [(n, list(s), d) for n, s, d in inputs],
                    trials,
                    max_kernels,
                    min_speedup,
                    lift_weights,
                    n_inputs,
                ),
            )
            got = job.get(timeout_s)
    finally:
        if env_before is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = env_before
    return RetuneResult(**json.loads(json.dumps(got)))
