"""Schedule search on three GPU kernels: the offline proposer vs TVM's dlight defaults vs
MetaSchedule samples, built here for CUDA sm_90 and timed on the GPU by ``gpu_run.py``.

The accelerator machine has no TVM compiler, so the search runs as one batch: every candidate
is built here, carried, checked numerically and timed there, and the fastest correct one wins.

- ``dlight``: ``ApplyDefaultSchedule(Matmul, GEMV, Reduction, GeneralReduction, Fallback)``,
  what ``terrazzo compile`` uses for GPU stages without a tuning record.
- ``offline``: the offline proposer's first round for a GPU target (its GPU seeds: shared
  memory staging, register tiles, thread binding), the same programs ``terrazzo tune`` proposes.
- ``metaschedule``: the first batch its tuner would measure: the evolutionary search over its
  CUDA design space (multi-level tiling, cooperative fetch; postprocessors incl.
  ``VerifyGPUCode``) with an untrained cost model, since no measurement can steer it from here.
  MetaSchedule at a small budget (one round of ``MS_SAMPLES`` trials); later rounds would need
  the GPU in the loop.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: name → (workload factory, args, what it stands for)
KERNELS: dict[str, tuple[str, tuple[int, ...], str]] = {
    "gemm": ("matmul", (2048, 2048, 2048), "C[2048,2048] = A[2048,2048]·B[2048,2048], fp32"),
    "attention_bmm": (
        "batch_matmul",
        (32, 512, 512, 64),
        "scores[32,512,512] = Q[32,512,64]·Kᵀ[32,64,512] (batch·heads 32, seq 512, head 64), fp32",
    ),
    "conv": ("conv2d_nhwc", (8, 64, 56, 64, 3), "NHWC conv 8×56×56×64 → 64, 3×3, pad 1, fp32"),
}
MS_SAMPLES = 12
H200_TARGET = {
    "kind": "cuda",
    "arch": "sm_90",
    "max_num_threads": 1024,
    "thread_warp_size": 32,
    "registers_per_block": 65536,
    "max_threads_per_block": 1024,
    "max_shared_memory_per_block": 49152,
}


def _target() -> Any:
    import tvm

    return tvm.target.Target(H200_TARGET, host={"kind": "llvm"})


def _func(name: str) -> Any:
    from terrazzo.codegen.tuning import workloads

    factory, args, _ = KERNELS[name]
    return getattr(workloads, factory)(*args).with_attr("tirx.noalias", True)


def _dlight(func: Any, tgt: Any) -> Any:
    import tvm
    from tvm.s_tir import dlight as dl

    mod = tvm.IRModule({"main": func})
    with tgt:
        return dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
            dl.gpu.Fallback(),
        )(mod)  # fmt: skip


def _hardware() -> Any:
    from terrazzo.codegen.tuning.proposer import HardwareSpec

    return HardwareSpec(description="NVIDIA H200 (sm_90)", cores=132, vector_bits=128,
                        peak_flops=66.9e12, mem_bw_bytes_per_s=4.8e12)  # fmt: skip


def _first_round(kernel: Any, tgt: Any, n: int = 8) -> tuple[Any, list[Any]]:
    """The offline proposer and its first round for ``kernel`` (its GPU seeds)."""
    from terrazzo.codegen.tuning.offline import OfflineProposer

    prop = OfflineProposer(seed=0)
    return prop, prop.propose(kernel, tgt, [], n, _hardware())


def _as_module(kernel: Any, program: Any) -> Any:
    import tvm

    from terrazzo.codegen.tuning.program import apply_program

    return tvm.IRModule({"main": apply_program(kernel.func, program)})


def _metaschedule(func: Any, tgt: Any, n: int, seed: int = 1) -> list[tuple[str, Any]]:
    """MetaSchedule's first batch of ``n`` candidates for ``func``: its evolutionary search over
    the CUDA design space (initial population, mutations, all postprocessors incl.
    ``VerifyGPUCode``) ranked by an untrained (random) cost model, exactly what ``tune_tir``
    sends to be measured in its first round."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    mod = tvm.IRModule({"main": func})
    ctx = ms.TuneContext(
        mod=mod, target=tgt, space_generator="post-order-apply",
        search_strategy="evolutionary", task_name="k", rand_state=seed, num_threads=2,
    )  # fmt: skip
    ctx.pre_tuning(
        max_trials=n, num_trials_per_iter=n, design_spaces=ctx.generate_design_space(),
        database=ms.database.MemoryDatabase(), cost_model=ms.cost_model.RandomModel(),
    )  # fmt: skip
    cands = ctx.generate_measure_candidates() or []
    return [(f"first batch #{i}", c.sch.mod) for i, c in enumerate(cands)]


def prepare(out: Path) -> dict[str, Any]:
    """Build every candidate of every kernel into ``out/kernels``; returns their index."""
    from terrazzo.codegen.tuning.kernel import analyse

    tgt = _target()
    kdir = out / "kernels"
    kdir.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {}
    for name, (_, _args, desc) in KERNELS.items():
        func = _func(name)
        kernel = analyse(name, func)
        cands: list[dict[str, Any]] = []
        mods: list[tuple[str, str, Any]] = [("dlight", "default", _dlight(func, tgt))]
        first = _first_round(kernel, tgt)[1]
        mods += [("offline", p.note, _as_module(kernel, p.program)) for p in first]
        samples = _metaschedule(func, tgt, MS_SAMPLES)
        mods += [("metaschedule", note, m) for note, m in samples]
        for j, (proposer, note, mod) in enumerate(mods):
            row: dict[str, Any] = {"proposer": proposer, "note": note}
            row.update(_build_candidate(mod, tgt, kdir, f"{name}_{j:02d}"))
            cands.append(row)
        index[name] = {
            "description": desc,
            "flops": float(kernel.flops),
            "shapes": [[int(x) for x in p.shape] for p in func.params],
            "candidates": cands,
            "metaschedule_candidates": len(samples),
        }
        built = sum("lib" in c for c in cands)
        print(f"  {name}: {built}/{len(cands)} candidates built", flush=True)
    return index


def _build_candidate(mod: Any, tgt: Any, kdir: Path, stem: str) -> dict[str, Any]:
    """Build one candidate module for CUDA (IEEE math fatbin); the row fields, or an error."""
    import tvm

    from terrazzo.codegen import nvcc_fatbin

    t0 = time.perf_counter()
    try:
        lib = tvm.compile(mod, target=tgt)
        src = str(lib.mod.imports[0].inspect_source(""))
        fatbin = nvcc_fatbin(src, "sm_90")
        if not isinstance(fatbin, bytes):
            raise RuntimeError(fatbin)
        lib.export_library(str(kdir / f"{stem}.so"))
        (kdir / f"{stem}.fatbin").write_bytes(fatbin)
        return {
            "lib": f"kernels/{stem}.so",
            "fatbin": f"kernels/{stem}.fatbin",
            "cuda_sha256": hashlib.sha256(src.encode()).hexdigest(),
            "build_s": round(time.perf_counter() - t0, 2),
        }
    except Exception as e:  # a candidate that does not build is a result too
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        return {"error": f"build: {msg}"}


def prepare_round2(out: Path, index: dict[str, Any], measured: dict[str, Any], n: int = 8) -> None:
    """The offline proposer's second round, from the first round's times on the GPU.

    The proposer is asked again with the first round as its history (the trials it proposed,
    each with the latency the GPU measured, or rejected); it answers with mutations of the
    fastest. The new candidates are appended to ``index`` (``"round": 2``).
    """
    from terrazzo.codegen.tuning.kernel import analyse
    from terrazzo.codegen.tuning.proposer import Trial

    tgt = _target()
    kdir = out / "kernels"
    for name in KERNELS:
        if name not in index or name not in measured:
            continue
        kernel = analyse(name, _func(name))
        prop, first = _first_round(kernel, tgt, n)
        times = {c["note"]: c.get("latency_s") for c in measured[name]["candidates"]
                 if c["proposer"] == "offline"}  # fmt: skip
        history = [
            Trial(
                i,
                "offline",
                p.program,
                times.get(p.note) is not None,
                times.get(p.note),
                "ok" if times.get(p.note) is not None else "run",
            )  # fmt: skip
            for i, p in enumerate(first)
        ]
        cands = index[name]["candidates"]
        for j, p in enumerate(prop.propose(kernel, tgt, history, n, _hardware())):
            row: dict[str, Any] = {"proposer": "offline", "round": 2, "note": p.note}
            if p.program is None:
                row["error"] = f"proposer: {p.error}"
            else:
                stem = f"{name}_r2_{j:02d}"
                row.update(_build_candidate(_as_module(kernel, p.program), tgt, kdir, stem))
            cands.append(row)
        built = sum(1 for c in cands if c.get("round") == 2 and "lib" in c)
        print(f"  {name}: round 2, {built} mutants of the fastest built", flush=True)


def run(art: Path, index: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """On the GPU: check each candidate against a float64 reference, time the correct ones."""
    import torch
    import tvm

    from terrazzo.bundle._runner import _FATBINS, _install_fatbin_callback

    dev = tvm.cuda(0)
    _install_fatbin_callback(None, None)
    out: dict[str, Any] = {}
    for name, k in index.items():
        shapes = k["shapes"]
        rng = np.random.default_rng(0)
        ins = [rng.standard_normal(s).astype("float32") for s in shapes[:-1]]
        ref = _reference(name, [torch.from_numpy(a).cuda().double() for a in ins])
        rows = []
        for c in k["candidates"]:
            row = dict(c)
            if "lib" not in c:
                rows.append(row)
                continue
            try:
                _FATBINS[c["cuda_sha256"]] = (art / c["fatbin"]).read_bytes()
                mod = tvm.runtime.load_module(str(art / c["lib"]))
                args = [tvm.runtime.tensor(a, dev) for a in ins]
                res = tvm.runtime.tensor(np.full(shapes[-1], np.nan, "float32"), dev)  # poisoned
                mod["main"](*args, res)
                got = torch.from_numpy(res.numpy()).cuda().double()
                rel = float(torch.linalg.vector_norm(got - ref) / torch.linalg.vector_norm(ref))
                row["rel_err"] = rel
                row["correct"] = bool(torch.isfinite(got).all()) and rel < 1e-4
                if row["correct"]:
                    t = mod.time_evaluator("main", dev, number=10, repeat=7, min_repeat_ms=20)
                    sec = float(np.median(t(*args, res).results))
                    row["latency_s"] = sec
                    row["gflops"] = k["flops"] / sec / 1e9
            except Exception as e:
                row["error"] = (
                    f"run: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
                )
            rows.append(row)
        best = {}
        for r in rows:
            if r["proposer"] == "offline" and r.get("round") == 2:
                r["proposer"] = "offline (2 rounds)"
        for p in ("dlight", "offline", "offline (2 rounds)", "metaschedule"):
            pool = (
                rows
                if p != "offline (2 rounds)"
                else [{**r, "proposer": p} for r in rows if r["proposer"] in ("offline", p)]
            )
            ok = [r for r in pool if r["proposer"] == p and "latency_s" in r]
            if ok:
                b = min(ok, key=lambda r: r["latency_s"])
                best[p] = {"latency_s": b["latency_s"], "gflops": b["gflops"], "note": b["note"],
                           "valid": len(ok), "tried": sum(r["proposer"] == p for r in pool)}  # fmt: skip
            else:
                best[p] = {"valid": 0, "tried": sum(r["proposer"] == p for r in pool)}
        torch_s = _torch_time(name, [torch.from_numpy(a).cuda() for a in ins])
        out[name] = {"description": k["description"], "flops": k["flops"], "best": best,
                     "torch_fp32_s": torch_s, "candidates": rows}  # fmt: skip
        log(f"  {name}: " + ", ".join(
            f"{p} {v.get('gflops', 0):.0f} GFLOP/s ({v['valid']}/{v['tried']} valid)" for p, v in best.items()
        ) + f"; torch fp32 {k['flops'] / torch_s / 1e9:.0f} GFLOP/s")  # fmt: skip
    return out


def _reference(name: str, ins: list[Any]) -> Any:
    import torch

    if name == "conv":
        x, w = ins  # NHWC, HWIO
        y = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1), padding=1)
        return y.permute(0, 2, 3, 1)
    return torch.matmul(ins[0], ins[1])


def time_cuda(fn: Callable[[], Any], iters: int = 20, warmup: int = 3) -> float:
    """Median seconds of ``fn`` on the GPU, timed with CUDA events around each call."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return float(np.median(ts))


def _torch_time(name: str, ins: list[Any]) -> float:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return time_cuda(lambda: _reference(name, ins))
