"""Find the GPU kernel that goes wrong: every fused kernel of a Relax module, as codegen builds
it for CUDA (legalised, fused, dlight-scheduled), next to the same kernel unscheduled for the
CPU. ``gpu_run.py`` feeds both the same random inputs and names the kernels that disagree.

Used for the LLM decode step, whose per-op stages all match on the H200 while the whole stage
does not: the difference lives in a fused kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CUDA = {"kind": "cuda", "arch": "sm_90"}


def _fused_kernels(mod: Any, tgt: Any) -> Any:
    """The module after codegen's legalise-and-fuse steps, before any schedule."""
    import tvm
    from tvm import relax

    from terrazzo.codegen import prepare_build_module

    mod = prepare_build_module(mod, tgt)
    with tgt:
        return tvm.transform.Sequential(
            [
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
            ]
        )(mod)


def prepare(out: Path, mod: Any, name: str) -> dict[str, Any]:
    """Build each fused kernel of ``mod`` twice: dlight-scheduled for CUDA, plain for the CPU."""
    import gpu_kernels
    import tvm
    from tvm import tirx
    from tvm.s_tir import dlight as dl

    from terrazzo.codegen.tuning.measure import output_indices

    tgt = tvm.target.Target(CUDA, host={"kind": "llvm"})
    fused = _fused_kernels(mod, tgt)
    kdir = out / "kernels"
    kdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for gv, func in fused.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        f = func.with_attr("global_symbol", "main")
        row: dict[str, Any] = {
            "kernel": gv.name_hint,
            "params": [[str(p.dtype), [int(x) for x in p.shape]] for p in f.params],
            "outputs": output_indices(f),
        }
        try:
            with tgt:
                sched = dl.ApplyDefaultSchedule(
                    dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                    dl.gpu.GeneralReduction(), dl.gpu.Fallback(),
                )(tvm.IRModule({"main": f}))  # fmt: skip
            stem = f"{name}_{len(rows):03d}"
            row.update(gpu_kernels._build_candidate(sched, tgt, kdir, stem))
            cpu = tvm.compile(tvm.IRModule({"main": f}), target={"kind": "llvm"})
            cpu.export_library(str(kdir / f"{stem}_cpu.so"))
            row["cpu_lib"] = f"kernels/{stem}_cpu.so"
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
        rows.append(row)
    print(f"  {name}: {len(rows)} fused kernels built for cuda and cpu", flush=True)
    return {"kernels": rows}


def run(art: Path, entry: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Each kernel on the GPU and the CPU, same random inputs (ints in {0, 1}: valid indices)."""
    import tvm

    from terrazzo.bundle._runner import _FATBINS, _install_fatbin_callback

    _install_fatbin_callback(None, None)
    rng = np.random.default_rng(11)
    rows = []
    for k in entry["kernels"]:
        row = {key: k[key] for key in ("kernel", "params", "outputs")}
        if "lib" not in k:
            rows.append({**row, "error": k.get("error", "not built")})
            continue
        try:
            _FATBINS[k["cuda_sha256"]] = (art / k["fatbin"]).read_bytes()
            gpu = tvm.runtime.load_module(str(art / k["lib"]))
            cpu = tvm.runtime.load_module(str(art / k["cpu_lib"]))
            arrays = []
            for i, (dtype, shape) in enumerate(k["params"]):
                if i in k["outputs"]:
                    arrays.append(np.full(shape, np.nan if dtype.startswith("float") else 7, dtype))
                elif dtype.startswith("float"):
                    arrays.append(rng.standard_normal(shape).astype(dtype))
                elif dtype == "bool":
                    arrays.append(rng.integers(0, 2, shape).astype(bool))
                else:
                    arrays.append(rng.integers(0, 2, shape).astype(dtype))
            g_args = [tvm.runtime.tensor(a, tvm.cuda(0)) for a in arrays]
            c_args = [tvm.runtime.tensor(a, tvm.cpu(0)) for a in arrays]
            gpu["main"](*g_args)
            cpu["main"](*c_args)
            rel = 0.0
            for i in k["outputs"]:
                g, c = g_args[i].numpy().astype(np.float64), c_args[i].numpy().astype(np.float64)
                scale = max(float(np.nanmax(np.abs(c))) if c.size else 0.0, 1e-6)
                d = np.abs(g - c)
                bad = int((np.isnan(g) != np.isnan(c)).sum())
                rel = max(rel, float(np.nanmax(d)) / scale if d.size else 0.0, float(bad))
            row["rel_diff"] = rel
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
        rows.append(row)
    bad = [r for r in rows if r.get("rel_diff", 0.0) > 1e-4 or "error" in r]
    log(f"  {len(rows)} fused kernels, {len(bad)} differ or fail: {[r['kernel'] for r in bad]}")
    return {"kernels": rows, "differing": bad}
