"""Question: which modelling assumption decides the paper-2025 study's B200::Gaudi3 vs B200::B200 ordering?

Reruns `terrazzo tco study --profile paper-2025` with one assumption changed at a time and
tabulates, per variant: the cells (of 16) where B200::Gaudi3 >= B200::B200, where B200::B200
beats H100::H100, the range of B200::Gaudi3's TCO benefit over H100::H100, and the headline
cell (Llama 3 70B FP16 512/4096 interactive). Variants only swap module-level functions and
constants of the cost model for the duration of one run (restored afterwards); docs/paper-study.md
explains each one and its source.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from terrazzo.costmodel import llm  # noqa: E402
from terrazzo.costmodel.catalog import Catalog, DeviceSpec, load_catalog  # noqa: E402
from terrazzo.costmodel.efficiency import LINK_LATENCY_S, Efficiency, default_efficiency  # noqa: E402
from terrazzo.costmodel.llm_serving import load_efficiencies  # noqa: E402
from terrazzo.report import study  # noqa: E402
from terrazzo.report.study import StudyOptions, run_study  # noqa: E402

DEVICES = ("a40", "a100-80g", "gaudi3", "mi300x", "h100", "b200")
HEADLINE = ("llama3-70b", "fp16", 512, 4096, "interactive")


def allreduce_ring_tree(nbytes: float, tp: int, dev: DeviceSpec) -> float:
    """The all-reduce model before this change: NCCL ring or double-binary tree, 5 µs per step."""
    if tp <= 1:
        return 0.0
    bw, alpha = dev.scaleup_bw_bytes_per_s, LINK_LATENCY_S["scaleup"]
    ring = 2.0 * (tp - 1) / tp * nbytes / bw + 2.0 * (tp - 1) * alpha
    tree = 2.0 * nbytes / bw + 2.0 * math.ceil(math.log2(tp)) * alpha
    return min(ring, tree)


def allreduce_free(nbytes: float, tp: int, dev: DeviceSpec) -> float:
    return 0.0


@contextmanager
def patched(obj: Any, **attrs: Any) -> Iterator[None]:
    old = {k: getattr(obj, k) for k in attrs}
    try:
        for k, v in attrs.items():
            setattr(obj, k, v)
        yield
    finally:
        for k, v in old.items():
            setattr(obj, k, v)


def _with_efficiency(
    table: dict[str, tuple[float, float]],
) -> tuple[Callable[..., float], Callable[..., float]]:
    pre, dec = llm.prefill_latency_s, llm.decode_step_latency_s

    def prefill(cfg: Any, dev: DeviceSpec, *a: Any, **k: Any) -> float:
        if dev.name in table and "efficiency" not in k:
            k["efficiency"] = Efficiency(*table[dev.name])
        return pre(cfg, dev, *a, **k)

    def decode(cfg: Any, dev: DeviceSpec, *a: Any, **k: Any) -> float:
        if dev.name in table and "efficiency" not in k:
            k["efficiency"] = Efficiency(*table[dev.name])
        return dec(cfg, dev, *a, **k)

    return prefill, decode


def _catalog(profile: str, **changes: dict[str, Any]) -> Catalog:
    cat = load_catalog(profile)
    out = {}
    for name, spec in cat.items():
        ch = dict(changes.get(name, {}))
        if "peak_tflops" in ch:
            ch["peak_tflops"] = MappingProxyType({**spec.peak_tflops, **ch["peak_tflops"]})
        out[name] = replace(spec, **ch) if ch else spec
    return Catalog(out, cat.profile, cat.description)


def _no_opex(profile: str) -> Catalog:
    return _catalog(profile, **{n: {"operating_usd_per_hour": None} for n in DEVICES})


def summarise(res: Any) -> dict[str, Any]:
    cells = list(dict.fromkeys(r.cell for r in res.rows))
    g_ge_b, b_gt_h, ratios, hg_vs_bb = 0, 0, [], []
    for c in cells:
        bg, bb, hg = (res.row(*c, p) for p in ("b200::gaudi3", "b200::b200", "h100::gaudi3"))
        if bg.feasible and bb.feasible and bg.tokens_per_usd >= bb.tokens_per_usd:
            g_ge_b += 1
        if bb.feasible and (bb.tco_benefit or 0) > 1:
            b_gt_h += 1
        if bg.feasible and bg.tco_benefit:
            ratios.append(bg.tco_benefit)
        if hg.feasible and bb.feasible:
            hg_vs_bb.append(hg.tokens_per_usd / bb.tokens_per_usd)
    head = {p: res.row(*HEADLINE, p) for p in ("b200::gaudi3", "b200::b200")}
    inter = [c for c in cells if c[4] == "interactive"]
    inter_wins = sum(
        1 for c in inter
        if res.row(*c, "b200::gaudi3").feasible
        and res.row(*c, "b200::gaudi3").tokens_per_usd >= res.row(*c, "b200::b200").tokens_per_usd
    )  # fmt: skip
    return {
        "b200_gaudi3_ge_b200_b200": g_ge_b, "of": len(cells), "interactive_wins": inter_wins,
        "interactive_cells": len(inter), "b200_b200_beats_h100_h100": b_gt_h,
        "b200_gaudi3_vs_h100_min": min(ratios) if ratios else None,
        "b200_gaudi3_vs_h100_max": max(ratios) if ratios else None,
        "h100_gaudi3_over_b200_b200_median": sorted(hg_vs_bb)[len(hg_vs_bb) // 2] if hg_vs_bb else None,
        "headline_b200_gaudi3": head["b200::gaudi3"].tco_benefit,
        "headline_b200_b200": head["b200::b200"].tco_benefit,
        "headline_gaudi3_decode_batch": head["b200::gaudi3"].decode_batch,
        "headline_gaudi3_decode_tp": head["b200::gaudi3"].decode_tp,
        "headline_b200_decode_batch": head["b200::b200"].decode_batch,
        "headline_b200_decode_tp": head["b200::b200"].decode_tp,
    }  # fmt: skip


def tbt_breakdown(
    profile: str = "paper-2025", ar: Callable[..., float] | None = None
) -> list[dict[str, Any]]:
    """Where the 20 ms of the headline cell's TBT go, for a Gaudi3 and a B200 decode at TP8."""
    cat = load_catalog(profile)
    cfg = llm.PRESETS["llama3-70b"]
    out = []
    for name in ("gaudi3", "b200"):
        dev = cat[name]
        for batch in (64, 128, 256):
            tp, ctx = 8, 512 + 4096
            eff = default_efficiency(dev.kind, "llm_decode")
            weights = cfg.weight_bytes("fp16") / tp / (dev.mem_bw_bytes_per_s * eff.memory)
            kv = (
                llm.kv_cache_bytes(cfg, ctx, batch, "fp16")
                / tp
                / (dev.mem_bw_bytes_per_s * eff.memory)
            )
            act = batch * cfg.d_model * 2
            comm = 2 * cfg.layers * (ar or llm.allreduce_latency_s)(act, tp, dev)
            launch = cfg.layers * llm.DEFAULT_LAUNCH_OVERHEAD_S[dev.kind]
            out.append({"device": name, "batch": batch, "weights_ms": weights * 1e3, "kv_ms": kv * 1e3,
                        "allreduce_ms": comm * 1e3, "launch_ms": launch * 1e3,
                        "tbt_ms": (weights + kv + comm + launch) * 1e3})  # fmt: skip
    return out


def variants() -> list[tuple[str, str, Callable[[], Any]]]:
    """(name, what changes, context manager factory + catalog) for every variant."""
    fitted = {
        n: (e.compute, e.memory)
        for n, e in load_efficiencies().items()
        if n in ("h100", "b200", "gaudi3")
    }
    pre, dec = _with_efficiency(fitted)
    pre2, dec2 = _with_efficiency({k: v for k, v in fitted.items() if k != "h100"})
    no_launch = MappingProxyType({"cpu": 0.0, "gpu": 0.0, "accelerator": 0.0})
    same_launch = MappingProxyType({"cpu": 2e-6, "gpu": 5e-6, "accelerator": 5e-6})
    return [
        ("baseline", "as shipped", lambda: (patched(llm), "paper-2025", None)),
        ("allreduce: ring/tree 5 us/step (old)", "the all-reduce model before the one-shot fix",
         lambda: (patched(llm, allreduce_latency_s=allreduce_ring_tree), "paper-2025", None)),
        ("allreduce: free", "TP all-reduce costs nothing (upper bound of any comm fix)",
         lambda: (patched(llm, allreduce_latency_s=allreduce_free), "paper-2025", None)),
        ("launch: 0 (graphs)", "no per-layer launch term (CUDA graphs / HPU graphs)",
         lambda: (patched(llm, DEFAULT_LAUNCH_OVERHEAD_S=no_launch), "paper-2025", None)),
        ("launch: accel = gpu", "Gaudi's per-layer launch 15 us -> 5 us like GPUs",
         lambda: (patched(llm, DEFAULT_LAUNCH_OVERHEAD_S=same_launch), "paper-2025", None)),
        ("gaudi3 fp8 = 2x bf16", "hypothetical: Gaudi3 FP8 MME at twice BF16 (Intel lists equal rates)",
         lambda: (patched(llm), _catalog("paper-2025", gaudi3={"peak_tflops": {"fp8": 3356.0}}), "ds-g3fp8")),
        ("opex: TDP x $0.40/kWh", "the paper's stated power rule instead of Table 5's operating cost column",
         lambda: (patched(llm), _no_opex("paper-2025"), None)),
        ("no decode batch cap", "MAX_DECODE_BATCH 1024 -> unlimited",
         lambda: (patched(study, MAX_DECODE_BATCH=1 << 20), "paper-2025", None)),
        ("tbt 30 ms", "interactive TBT bound 20 -> 30 ms", lambda: (patched(llm), "paper-2025", 0.030)),
        ("tbt 40 ms", "interactive TBT bound 20 -> 40 ms (MLPerf Llama 2 70B interactive)",
         lambda: (patched(llm), "paper-2025", 0.040)),
        ("fitted eff. (B200, Gaudi3)", "B200/Gaudi3 compute & memory efficiency from benchmarks/llm_validation.py",
         lambda: (patched(llm, prefill_latency_s=pre2, decode_step_latency_s=dec2), "paper-2025", None)),
        ("fitted eff. (H100, B200, Gaudi3)", "the same plus H100's (2 MLPerf rows only)",
         lambda: (patched(llm, prefill_latency_s=pre, decode_step_latency_s=dec), "paper-2025", None)),
        ("datasheet profile", "vendor peaks (H100 989 dense FP16, Gaudi3 1835) and datasheet capex, TDP power",
         lambda: (patched(llm), "datasheet", None)),
    ]  # fmt: skip


def run_variant(factory: Callable[[], Any]) -> dict[str, Any]:
    ctx, cat_or_profile, extra = factory()
    ds = load_catalog("datasheet")
    tbt = extra if isinstance(extra, float) else 0.020
    if extra == "ds-g3fp8":  # the FP8 ratio is read from the datasheet entry
        ds = _catalog("datasheet", gaudi3={"peak_tflops": {"fp8": 3670.0}})
    cat = load_catalog(cat_or_profile) if isinstance(cat_or_profile, str) else cat_or_profile
    with ctx:
        res = run_study(
            cat, StudyOptions(devices=DEVICES, tbt_s=tbt), datasheet=ds, profile="paper-2025"
        )
    return summarise(res)


def main() -> int:
    argparse.ArgumentParser(description=__doc__).parse_args()
    rows = []
    hdr = f"{'variant':<38} {'G3>=BB':>7} {'inter':>6} {'BB>HH':>6} {'BG/HH range':>12} {'HG/BB':>6} {'headline BG / BB':>17} {'dec b G3/B200':>14}"
    print(hdr)
    for name, what, factory in variants():
        s = run_variant(factory)
        rows.append({"variant": name, "change": what, **s})
        rng = f"{s['b200_gaudi3_vs_h100_min']:.2f}-{s['b200_gaudi3_vs_h100_max']:.2f}"
        print(f"{name:<38} {s['b200_gaudi3_ge_b200_b200']:>4}/{s['of']:<2} {s['interactive_wins']:>3}/{s['interactive_cells']:<2} "
              f"{s['b200_b200_beats_h100_h100']:>3}/16 {rng:>12} {s['h100_gaudi3_over_b200_b200_median']:>6.2f} "
              f"{s['headline_b200_gaudi3']:>8.2f} / {s['headline_b200_b200']:<6.2f} "
              f"{s['headline_gaudi3_decode_batch']:>5}/{s['headline_b200_decode_batch']:<5}")  # fmt: skip
    print("\nTBT at TP8, Llama 3 70B FP16, 4608-token context (paper-2025 profile), ms:")
    breakdown = {"shipped": tbt_breakdown(), "old_allreduce": tbt_breakdown(ar=allreduce_ring_tree)}
    for label, bd in breakdown.items():
        for b in bd:
            print(f"  {label:<13} {b['device']:<7} batch {b['batch']:>4}: weights {b['weights_ms']:.2f} + KV {b['kv_ms']:.2f} "
                  f"+ all-reduce {b['allreduce_ms']:.2f} + launch {b['launch_ms']:.2f} = {b['tbt_ms']:.2f}")  # fmt: skip
    p = write_result("paper_study_toggles", rows, {"tbt_breakdown": breakdown})
    print(f"\nwrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
