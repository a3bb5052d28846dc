"""Report of an LLM-scale P::D plan (``terrazzo llm plan``) against its baselines: terminal, JSON and HTML.

Reads ``placement.LLMPlan`` values: the pipeline planner's plan, the best single-class P::D
plan and the Mélange-style replica mix, all under the same traffic and TTFT/TBT bounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from terrazzo.report import html as H
from terrazzo.report.sensitivity import PRICE_FACTORS, totals


def llm_report_json(plans: Mapping[str, Any], traffic: Any, model: str) -> dict[str, Any]:
    """Every plan with its totals, and the chosen plan's ratios to each baseline (tokens/s per USD)."""
    chosen = next(iter(plans.values()))
    out: dict[str, Any] = {
        "model": model,
        "traffic": {
            "rps": traffic.rps,
            "isl": traffic.isl,
            "osl": traffic.osl,
            "ttft_ms": traffic.ttft_s * 1e3,
            "tbt_ms": traffic.tbt_s * 1e3,
            "utilisation": traffic.utilisation,
        },  # fmt: skip
        "plans": {n: {**p.to_json(), **totals(p.usd_per_hour)} for n, p in plans.items()},
        "ratios": {
            n: chosen.tokens_per_s_per_usd_hour / p.tokens_per_s_per_usd_hour
            for n, p in list(plans.items())[1:]
        },
    }
    return out


def print_llm_plan(plans: Mapping[str, Any], traffic: Any, model: str) -> None:
    """A rich table of the plans and the chosen plan's stages."""
    from rich.console import Console
    from rich.table import Table

    con = Console(width=120)
    t = Table(title=f"{model}: {traffic.rps:g} req/s, {traffic.isl}/{traffic.osl} tokens, "
                    f"TTFT ≤ {traffic.ttft_s * 1e3:g} ms, TBT ≤ {traffic.tbt_s * 1e3:g} ms")  # fmt: skip
    for c in (
        "plan",
        "USD/h",
        "USD/month",
        "tok/s per USD/h",
        "TTFT ms",
        "TBT ms",
        "gap",
        "stages / mix",
    ):
        t.add_column(c, justify="left" if c in ("plan", "stages / mix") else "right")
    for name, p in plans.items():
        t.add_row(name, H.fmt(p.usd_per_hour), H.fmt(p.usd_per_hour * H.HOURS_PER_MONTH),
                  H.fmt(p.tokens_per_s_per_usd_hour), H.fmt(p.ttft_s * 1e3), H.fmt(p.tbt_s * 1e3),
                  f"{p.gap:.2%}", _layout(p))  # fmt: skip
    con.print(t)
    chosen = next(iter(plans.values()))
    for name, p in list(plans.items())[1:]:
        r = chosen.tokens_per_s_per_usd_hour / p.tokens_per_s_per_usd_hour
        con.print(f"{next(iter(plans))} vs {name}: ×{r:.2f} tokens/s per USD")


def llm_plan_html(plans: Mapping[str, Any], traffic: Any, model: str) -> str:
    """A self-contained page: plans, stages of the chosen plan, sensitivity, assumptions."""
    chosen_name, chosen = next(iter(plans.items()))
    rows = [[n, p.usd_per_hour, p.usd_per_hour * H.HOURS_PER_MONTH, p.usd_per_hour * H.HOURS_PER_YEAR,
             p.tokens_per_s, p.tokens_per_s_per_usd_hour,
             chosen.tokens_per_s_per_usd_hour / p.tokens_per_s_per_usd_hour, p.ttft_s * 1e3, p.tbt_s * 1e3,
             f"{p.gap:.2%}", _layout(p)] for n, p in plans.items()]  # fmt: skip
    head = ["plan", "USD/hour", "USD/month", "USD/year", "tokens/s", "tokens/s per USD/h",
            "chosen ×", "TTFT ms", "TBT ms", "certified gap", "stages / mix"]  # fmt: skip
    options = H.tag("predicted") + H.table(head, rows, [n == chosen_name for n in plans])
    st = [[s.phase, s.device, s.tp, f"{s.first_layer}–{s.end_layer - 1}", s.replicas, s.step_s * 1e3,
           s.usd_per_hour] for s in chosen.stages]  # fmt: skip
    stages = H.table(["phase", "device", "TP", "layers", "replicas", "step ms", "USD/hour"], st)
    sens = []
    for f in PRICE_FACTORS:
        sens.append([f"all prices ×{f:g}", chosen.usd_per_hour * f,
                     chosen.tokens_per_s_per_usd_hour / f])  # fmt: skip
    assumptions = H.definition_list([
        ("Numbers", "predicted by the operator-level roofline model of each layer, not measured"),
        ("Latency", "TTFT and TBT of the plan at its batch, steady state, no queueing (read as p99 bounds)"),
        ("Traffic", f"{traffic.rps:g} requests/s of {traffic.isl} prompt and {traffic.osl} output tokens; "
                    f"utilisation target {traffic.utilisation:.0%}"),
        ("Gap", "certified: (USD/hour − proven lower bound) / USD/hour over the plan space (contiguous "
                "layer stages, TP within a chassis, batch grid); see docs/llm-planner.md"),
        ("Totals", "730 h a month, 8,760 h a year"),
    ])  # fmt: skip
    sections = [
        H.Section("Plans", options),
        H.Section("Stages of the chosen plan", stages),
        H.Section(
            "Sensitivity to prices (±30%)",
            H.table(["scenario", "USD/hour", "tokens/s per USD/h"], sens)
            + H.paragraph(
                "Every plan's bill scales alike when all prices move together; "
                "per-class moves need a re-plan.",
                note=True,
            ),
        ),  # fmt: skip
        H.Section("Assumptions", assumptions),
        H.Section(
            "Notes",
            "<ul>" + "".join(f"<li>{H.html.escape(n)}</li>" for n in chosen.notes) + "</ul>",
        ),
    ]
    sub = (f"{traffic.rps:g} req/s, {traffic.isl}/{traffic.osl} tokens, TTFT ≤ {traffic.ttft_s * 1e3:g} ms, "
           f"TBT ≤ {traffic.tbt_s * 1e3:g} ms")  # fmt: skip
    return H.page(f"Terrazzo LLM plan — {model}", sections, sub)


def _layout(p: Any) -> str:
    if p.mix:  # keys are "<class>x<tp>": whole-model replicas of TP groups
        return ", ".join(
            f"{k.rsplit('x', 1)[0]} TP{k.rsplit('x', 1)[1]} ×{v}" for k, v in p.mix.items()
        )
    return " → ".join(f"{s.phase[0]}:{s.device}×{s.tp}×{s.replicas} L{s.first_layer}-{s.end_layer - 1}"
                      for s in p.stages)  # fmt: skip
