"""Planner at LLM scale: operator-level Llama graphs over a ≥ 8-class fleet, vs two baselines.

Question: at Llama-70B/405B scale (≥ 1,000 ops per phase), how much cheaper (output tokens/s
per USD/hour) is the layer-granular P::D pipeline plan than the best single-class P::D plan
and a Mélange-style mix of whole-model replicas under the same SLA and traffic, how long
does it take on this CPU and what gap does it certify?

Writes ``benchmarks/results/llm_scale_planner.json`` through ``_common.write_result``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table, write_result  # noqa: E402

from terrazzo.costmodel.llm import get_preset  # noqa: E402
from terrazzo.placement import (  # noqa: E402
    LLMTraffic,
    build_llm_graphs,
    llm_fleet_default,
    plan_llm,
    plan_llm_melange,
    plan_llm_single_class,
)

# (model, isl, osl, rps, TTFT s, TBT s): an interactive, a server and a long-prompt cell
CELLS = (
    ("llama3-70b", 1024, 256, 200.0, 2.0, 0.05),
    ("llama3-70b", 1024, 256, 200.0, 1.0, 0.025),
    ("llama3-70b", 4096, 512, 50.0, 4.0, 0.05),
    ("llama3.1-405b", 1024, 256, 50.0, 4.0, 0.1),
)


def main() -> None:
    full = llm_fleet_default()
    # the same fleet without MI300X: at catalog prices it dominates every class on both phases
    no_mi300x = tuple(d for d in full if d != "mi300x")
    rows = []
    for (model, isl, osl, rps, ttft, tbt), (fname, fleet) in [
        (c, f) for f in (("full", full), ("no-mi300x", no_mi300x)) for c in CELLS
    ]:
        g = build_llm_graphs(get_preset(model), isl, osl)
        tr = LLMTraffic(rps=rps, isl=isl, osl=osl, ttft_s=ttft, tbt_s=tbt)
        p = plan_llm(g, tr, fleet)
        s = plan_llm_single_class(g, tr, fleet)
        m = plan_llm_melange(g, tr, fleet)
        stages = " | ".join(
            f"{x.phase[0]}:{x.device}x{x.tp}[{x.first_layer},{x.end_layer})×{x.replicas}"
            for x in p.stages
        )
        rows.append({
            "fleet": fname, "model": model, "isl": isl, "osl": osl, "rps": rps, "ttft_ms": ttft * 1e3,
            "tbt_ms": tbt * 1e3, "ops": g.num_ops, "classes": len(fleet),
            "solve_s": p.solve_time_s, "gap": p.gap,
            "plan_tok_s_per_usd_h": p.tokens_per_s_per_usd_hour,
            "single_pd_tok_s_per_usd_h": s.tokens_per_s_per_usd_hour,
            "melange_tok_s_per_usd_h": m.tokens_per_s_per_usd_hour,
            "vs_single_pd": p.tokens_per_s_per_usd_hour / s.tokens_per_s_per_usd_hour,
            "vs_melange": p.tokens_per_s_per_usd_hour / m.tokens_per_s_per_usd_hour,
            "plan_usd_h": p.usd_per_hour, "bound_usd_h": p.lower_bound_usd_per_hour,
            "single_pd_usd_h": s.usd_per_hour, "melange_usd_h": m.usd_per_hour,
            "plan_stages": stages,
            "single_pd_stages": " | ".join(f"{x.phase[0]}:{x.device}x{x.tp}×{x.replicas}"
                                           for x in s.stages),
            "melange_mix": dict(m.mix),
            "ttft_pred_ms": p.ttft_s * 1e3, "tbt_pred_ms": p.tbt_s * 1e3,
        })  # fmt: skip
    short = [{"fleet": r["fleet"], "model": r["model"].replace("llama", "L"),
              "isl/osl": f"{r['isl']}/{r['osl']}", "rps": r["rps"],
              "ttft/tbt ms": f"{r['ttft_ms']:g}/{r['tbt_ms']:g}", "ops": r["ops"],
              "cls": r["classes"], "solve s": r["solve_s"], "gap": r["gap"],
              "plan": r["plan_tok_s_per_usd_h"], "1-class PD": r["single_pd_tok_s_per_usd_h"],
              "melange": r["melange_tok_s_per_usd_h"], "×PD": r["vs_single_pd"],
              "×mel": r["vs_melange"]} for r in rows]  # fmt: skip
    print_table(short, list(short[0]), title="tokens/s per USD/h: planner vs baselines")
    for r in rows:
        print(f"{r['fleet']:9} {r['model']:13} tbt {r['tbt_ms']:g} ms  plan: {r['plan_stages']}")
        print(f"{'':23} 1-class: {r['single_pd_stages']}  mélange: {r['melange_mix']}")
    path = write_result("llm_scale_planner", rows, {"fleets": {"full": list(full),
                                                    "no-mi300x": list(no_mi300x)},
                                                    "target_ratio": 1.25,
                                                    "gap_target": 0.01, "time_budget_s": 2.0})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
