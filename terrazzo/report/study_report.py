"""Renders a fleet study (``terrazzo tco study``) as HTML with plots and as a terminal summary."""

from __future__ import annotations

import math
from typing import Any

from terrazzo.errors import TerrazzoError
from terrazzo.report import html as H
from terrazzo.report import study_sensitivity as SS
from terrazzo.report.study import StudyResult, headline

NAMED_PAIRS = ("b200::gaudi3", "h100::gaudi3", "b200::b200")


def _cell_label(c: tuple[Any, ...]) -> str:
    model, prec, isl, osl, sla = c
    return f"{model.removeprefix('llama3-')} {prec} {isl}/{osl} {sla}"


def study_html(result: StudyResult) -> str:
    """A self-contained HTML page: headline table, per-cell bars, P×D heatmaps, every row."""
    head = headline(result, NAMED_PAIRS)
    sections = [
        H.Section("Headline: best pair per cell", _headline_table(head)),
        H.Section("TCO benefit of the best and the paper's named pairs", H.figure_svg(_bars(head))),
        H.Section("TCO benefit of every prefill::decode pair", H.figure_svg(_heatmaps(result))),
        H.Section(
            "Monthly and yearly totals, energy (best pair of each cell)", _totals_html(result)
        ),
        H.Section("Sensitivity to prices (±30%)", _price_sens_html(result)),
        H.Section("Sensitivity to traffic (0.5×–3×)", _traffic_sens_html(result)),
        H.Section("Device prices", _price_table(result)),
        H.Section("Assumptions", _assumptions(result)),
        H.Section("All rows", _rows_table(result)),
    ]
    sub = (
        f"profile {result.profile}; interactive SLA TTFT ≤ {result.options.ttft_s * 1e3:.0f} ms, "
        f"TBT ≤ {result.options.tbt_s * 1e3:.0f} ms; offline maximises tokens/s per USD; "
        f"TCO benefit = tokens per USD relative to {result.rows[0].baseline if result.rows else 'h100::h100'}."
    )
    return H.page("Terrazzo fleet study (arXiv 2507.19635 setup)", sections, sub)


def _headline_table(head: list[dict[str, Any]]) -> str:
    headers = ["cell", "best pair", "best benefit", "tokens/USD", *NAMED_PAIRS]
    rows = [
        [_cell_label((h["model"], h["precision"], h["isl"], h["osl"], h["sla"])), h["best_pair"],
         h["best_tco_benefit"], h["best_tokens_per_usd"], *(h[p] for p in NAMED_PAIRS)]
        for h in head
    ]  # fmt: skip
    return H.table(headers, rows)


def _bars(head: list[dict[str, Any]]) -> Any:
    import numpy as np

    fig, ax = H.new_figure(10, 3.8)
    labels = [_cell_label((h["model"], h["precision"], h["isl"], h["osl"], h["sla"])) for h in head]
    x = np.arange(len(head))
    series = [("best", [h["best_tco_benefit"] for h in head])] + [
        (p, [h[p] for h in head]) for p in NAMED_PAIRS
    ]
    w = 0.8 / len(series)
    for i, (name, vals) in enumerate(series):
        ax.bar(x + i * w, [v if v is not None else 0 for v in vals], w, label=name)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(x + 0.4 - w / 2, labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("TCO benefit vs h100::h100")
    ax.legend(fontsize=7, ncol=4)
    return fig


def _heatmaps(result: StudyResult) -> Any:
    """One panel per cell, every panel on one colour scale, values printed, infeasible hatched.

    SVG ids (``gid``) name the parts the browser test looks for: ``heat-cell-K-I-J`` (the value
    text of panel K, prefill I, decode J), ``heat-infeasible-K-I-J``, ``heat-colorbar`` and
    ``heat-legend``.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch, Rectangle

    cells = list(dict.fromkeys(r.cell for r in result.rows))
    devs = list(dict.fromkeys(r.prefill for r in result.rows))
    n, nd = len(cells), len(devs)
    cols = 4 if n >= 4 else max(n, 1)
    nrows = max(1, math.ceil(n / cols))
    side = max(2.8, 0.42 * nd + 1.0)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(side * cols + 1.2, side * nrows + 0.8), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    idx = {d: i for i, d in enumerate(devs)}
    vals = [r.tco_benefit for r in result.rows if r.feasible and r.tco_benefit is not None]
    norm = Normalize(vmin=0.0, vmax=max(vals) if vals else 1.0)
    cmap = plt.get_cmap("viridis")
    best = {(b.cell, b.pair) for b in result.best_per_cell()}
    fontsize = max(4.0, min(7.0, 40.0 / nd))
    im = None
    for k, c in enumerate(cells):
        ax = axes[k // cols][k % cols]
        m = np.full((nd, nd), np.nan)
        infeasible: list[tuple[int, int]] = []
        for r in result.rows:
            if r.cell != c:
                continue
            i, j = idx[r.prefill], idx[r.decode]
            if r.feasible and r.tco_benefit is not None:
                m[i, j] = r.tco_benefit
            else:
                infeasible.append((i, j))
        im = ax.imshow(m, cmap=cmap, norm=norm)
        for i, j in infeasible:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.92", edgecolor="0.6",
                                   hatch="///", lw=0.0, gid=f"heat-infeasible-{k}-{i}-{j}"))  # fmt: skip
        for i in range(nd):
            for j in range(nd):
                v = m[i, j]
                if np.isnan(v):
                    continue
                dark = sum(cmap(norm(v))[:3]) / 3 < 0.5
                pair = f"{devs[i]}::{devs[j]}"
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=fontsize,
                        color="white" if dark else "black",
                        fontweight="bold" if (c, pair) in best else "normal",
                        gid=f"heat-cell-{k}-{i}-{j}")  # fmt: skip
                if (c, pair) in best:
                    ax.add_patch(
                        Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.2)
                    )
        ax.set_title(_cell_label(c), fontsize=7)
        ax.set_xticks(range(nd), devs, rotation=90, fontsize=5.5)
        ax.set_yticks(range(nd), devs, fontsize=5.5)
        if k % cols == 0:
            ax.set_ylabel("prefill", fontsize=6)
        ax.set_xlabel("decode", fontsize=6)
    for k in range(n, nrows * cols):
        axes[k // cols][k % cols].axis("off")
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01)
        cb.set_label("TCO benefit vs h100::h100 (one scale for every panel)", fontsize=7)
        cb.ax.tick_params(labelsize=6)
        cb.ax.set_gid("heat-colorbar")
    leg = fig.legend(
        handles=[
            Patch(facecolor="0.92", edgecolor="0.6", hatch="///", label="infeasible (SLA or memory)"),
            Patch(facecolor="none", edgecolor="red", label="best pair of the cell"),
        ],
        loc="outside upper center", ncols=2, fontsize=7, frameon=False,
    )  # fmt: skip
    leg.set_gid("heat-legend")
    return fig


def _catalog(result: StudyResult) -> Any:
    from terrazzo.costmodel import load_catalog

    try:
        return load_catalog(result.profile)
    except TerrazzoError:
        return {}


def _totals_html(result: StudyResult) -> str:
    cat = _catalog(result)
    tdp = {d: float(cat[d].tdp_w) for d in result.device_usd_per_hour if d in cat}
    kwh_usd = result.options.tco.usd_per_kwh
    t = SS.totals_and_energy(result, tdp, kwh_usd)
    rows = [[r["cell"], r["pair"], r["tokens_per_s"], r["usd_per_hour"], r["usd_per_month"], r["usd_per_year"],
             r["usd_per_million_tokens"], r["kwh_per_million_tokens"], r["energy_usd_per_million_tokens"]]
            for r in t]  # fmt: skip
    return H.tag("predicted") + H.table(
        ["cell", "best pair", "tokens/s", "USD/hour", "USD/month (730 h)", "USD/year (8,760 h)",
         "USD per 1M tokens", "kWh per 1M tokens", "energy USD per 1M tokens"], rows,
    ) + H.paragraph(
        "One balanced unit: one prefill instance and the decode instances it keeps busy. Energy at TDP "
        f"(an upper bound) and ${kwh_usd:.2f}/kWh; under capex pricing it is already part of USD/hour.",
        note=True,
    )  # fmt: skip


def _price_sens_html(result: StudyResult) -> str:
    sens = SS.price_sensitivity(result)
    rows = [[r["device"], f"×{r['factor']:g}", f"{r['cells_changed']} of {r['cells']}",
             r["new_best"] or "—"] for r in sens]  # fmt: skip
    return H.table(["device", "price", "cells whose best pair changes", "new best pair (cells)"], rows,
                   [r["cells_changed"] > 0 for r in sens]) + H.paragraph(
        "Each device class re-priced alone; every other price at its list value. Highlighted rows change "
        "the answer.", note=True)  # fmt: skip


def _traffic_sens_html(result: StudyResult) -> str:
    sens = SS.traffic_sensitivity(result)
    heads = [f"{f:g}×" for f in SS.TRAFFIC_FACTORS]
    rows = [
        [r["cell"], r["pair"], *(r["relative_tokens_per_usd"][f] for f in SS.TRAFFIC_FACTORS)]
        for r in sens
    ]
    return H.table(["cell", "best pair", *heads], rows) + H.paragraph(
        "Tokens per USD with whole instances relative to the study's fractional figure (1.0 = no loss). "
        "Traffic is counted in units of what one prefill instance serves.", note=True)  # fmt: skip


def _price_table(result: StudyResult) -> str:
    cat = _catalog(result)
    rows = []
    for d, usd in sorted(result.device_usd_per_hour.items(), key=lambda kv: kv[1]):
        spec = cat[d] if d in cat else None
        if spec is None:
            rows.append([d, usd, None, None, None, None, ""])
            continue
        src = spec.sources.get("capex_usd", "") if result.options.tco.pricing == "capex" else \
            spec.sources.get("cloud_usd_per_hour", "")  # fmt: skip
        rows.append(
            [
                d,
                usd,
                spec.capex_usd,
                spec.cloud_usd_per_hour,
                spec.cloud_price_date or None,
                spec.tdp_w,
                src,
            ]
        )
    o = result.options.tco
    note = H.paragraph(
        f"{o.pricing} pricing: {o.years:g} years at {o.interest_rate:.0%} interest, power at TDP × "
        f"${o.usd_per_kwh}/kWh unless the profile gives an operating cost per hour.",
        note=True,
    )
    return H.table(["device", "USD/hour used", "capex USD", "cloud USD/hour", "cloud price date", "TDP W",
                    f"source ({o.pricing})"], rows) + note  # fmt: skip


def _assumptions(result: StudyResult) -> str:
    from terrazzo.report.phases import describe

    o = result.options
    top = [
        ("Numbers", "predicted by the LLM phase model (roofline with fitted efficiencies); none is "
                    "measured here. The model's error against published measurements is in "
                    "benchmarks/results/llm_validation.json."),
        ("Latency", f"TTFT ≤ {o.ttft_s * 1e3:.0f} ms and TBT ≤ {o.tbt_s * 1e3:.0f} ms are checked against the "
                    "model's per-request latency at the chosen batch (no queueing), read as a p99 "
                    "bound; use terrazzo tco simulate for queueing under a trace."),
        ("Prices", f"profile {result.profile!r}, {o.tco.pricing} pricing ({o.tco.years:g} years at "
                   f"{o.tco.interest_rate:.0%}, power at ${o.tco.usd_per_kwh}/kWh); source and date per "
                   "device in Device prices."),
        ("Utilisation", "instances are busy 100% of the time (the paper's assumption); decode "
                        "instances are fractional (unlimited hardware) except in the traffic table."),
        ("Totals", "a month is 730 h and a year 8,760 h."),
    ]  # fmt: skip
    items = [f"{k}: {v}" for k, v in describe().items()] + list(result.notes)
    return (
        H.definition_list(top)
        + "<ul>"
        + "".join(f"<li>{H.html.escape(i)}</li>" for i in items)
        + "</ul>"
    )


def _rows_table(result: StudyResult) -> str:
    headers = ["cell", "pair", "feasible", "tokens/s", "USD/h", "tokens/USD", "benefit", "TP p/d", "batch p/d",
               "TTFT ms", "TBT ms", "reason"]  # fmt: skip
    rows = []
    for r in result.rows:
        rows.append([
            _cell_label(r.cell), r.pair, r.feasible, r.tokens_per_s, r.usd_per_hour, r.tokens_per_usd,
            r.tco_benefit, f"{r.prefill_tp}/{r.decode_tp}", f"{r.prefill_batch}/{r.decode_batch}",
            r.ttft_s * 1e3, r.tbt_s * 1e3, r.reason,
        ])  # fmt: skip
    best = {(b.cell, b.pair) for b in result.best_per_cell()}
    return H.table(headers, rows, [(r.cell, r.pair) in best for r in result.rows])


def print_study_summary(result: StudyResult, console: Any = None) -> None:
    """A rich table of the headline rows on the terminal."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=120)
    t = Table(
        title=f"Fleet study — profile {result.profile} (TCO benefit vs {result.rows[0].baseline})"
    )
    for h in ("cell", "best pair", "best", *NAMED_PAIRS):
        left = h in ("cell", "best pair")
        t.add_column(h, justify="left" if left else "right", no_wrap=True)
    for row in headline(result, NAMED_PAIRS):
        cells = [
            _cell_label((row["model"], row["precision"], row["isl"], row["osl"], row["sla"])),
            str(row["best_pair"]),
        ]
        cells += [H.fmt(row["best_tco_benefit"]), *(H.fmt(row[p]) for p in NAMED_PAIRS)]
        t.add_row(*cells)
    console.print(t)
