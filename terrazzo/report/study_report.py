"""Renders a fleet study (``terrazzo tco study``) as HTML with plots and as a terminal summary."""

from __future__ import annotations

import math
from typing import Any

from terrazzo.report import html as H
from terrazzo.report.study import StudyResult, headline

NAMED_PAIRS = ("b200::gaudi3", "h100::gaudi3", "b200::b200")


def _cell_label(c: tuple[Any, ...]) -> str:
    model, prec, isl, osl, sla = c
    return f"{model.removeprefix('llama3-')} {prec} {isl}/{osl} {sla[:5]}"


def study_html(result: StudyResult) -> str:
    """A self-contained HTML page: headline table, per-cell bars, P×D heatmaps, every row."""
    head = headline(result, NAMED_PAIRS)
    sections = [
        H.Section("Headline: best pair per cell", _headline_table(head)),
        H.Section("TCO benefit of the best and the paper's named pairs", H.figure_svg(_bars(head))),
        H.Section("TCO benefit of every prefill::decode pair", H.figure_svg(_heatmaps(result))),
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
    import matplotlib.pyplot as plt
    import numpy as np

    cells = list(dict.fromkeys(r.cell for r in result.rows))
    devs = list(dict.fromkeys(r.prefill for r in result.rows))
    n = len(cells)
    cols = 4 if n >= 4 else n
    nrows = math.ceil(n / cols)
    side = max(2.6, 0.18 * len(devs) + 1.2)
    fig, axes = plt.subplots(nrows, cols, figsize=(side * cols, side * nrows), squeeze=False)
    idx = {d: i for i, d in enumerate(devs)}
    for k, c in enumerate(cells):
        ax = axes[k // cols][k % cols]
        m = np.full((len(devs), len(devs)), np.nan)
        for r in result.rows:
            if r.cell == c and r.tco_benefit is not None:
                m[idx[r.prefill], idx[r.decode]] = r.tco_benefit
        im = ax.imshow(m, cmap="viridis", vmin=0)
        ax.set_title(_cell_label(c), fontsize=7)
        ax.set_xticks(range(len(devs)), devs, rotation=90, fontsize=5)
        ax.set_yticks(range(len(devs)), devs, fontsize=5)
        if k % cols == 0:
            ax.set_ylabel("prefill", fontsize=6)
        ax.set_xlabel("decode", fontsize=6)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
    for k in range(n, nrows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    return fig


def _price_table(result: StudyResult) -> str:
    rows = [[d, usd] for d, usd in sorted(result.device_usd_per_hour.items(), key=lambda kv: kv[1])]
    o = result.options.tco
    note = H.paragraph(
        f"{o.pricing} pricing: {o.years:g} years at {o.interest_rate:.0%} interest, power at TDP × "
        f"${o.usd_per_kwh}/kWh unless the profile gives an operating cost per hour.",
        note=True,
    )
    return H.table(["device", "USD/hour"], rows) + note


def _assumptions(result: StudyResult) -> str:
    from terrazzo.report.phases import describe

    items = [f"{k}: {v}" for k, v in describe().items()] + list(result.notes)
    return "<ul>" + "".join(f"<li>{H.html.escape(i)}</li>" for i in items) + "</ul>"


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
