"""Self-contained HTML for TCO reports: matplotlib figures inlined as SVG, tables, no external assets."""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}td:not(.l){white-space:nowrap}.note{color:#555;font-size:.9em}.best{background:#e8f6e8}
figure{margin:1em 0}svg{max-width:100%;height:auto}
dl.assume{display:grid;grid-template-columns:max-content auto;gap:.2em 1em;font-size:.9em}
dl.assume dt{font-weight:600}dl.assume dd{margin:0}
.tag{display:inline-block;padding:0 .4em;border-radius:.3em;font-size:.8em;color:#fff}
.tag.predicted{background:#1f77b4}.tag.measured{background:#2ca02c}
"""

HOURS_PER_MONTH = 730.0  # 8760 / 12
HOURS_PER_YEAR = 8760.0


@dataclass(frozen=True, slots=True)
class Section:
    """One titled block of the page; ``body`` is already-escaped HTML."""

    title: str
    body: str


def figure_svg(fig: Any) -> str:
    """Render a matplotlib figure to an inline ``<svg>`` element and close it."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def new_figure(width_in: float = 7.5, height_in: float = 3.6, ncols: int = 1) -> tuple[Any, Any]:
    """A figure and axes on the non-interactive Agg backend (safe without a display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text: smaller files, searchable
    return plt.subplots(1, ncols, figsize=(width_in, height_in))


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], highlight: Sequence[bool] | None = None
) -> str:
    """An HTML table; the first column is left-aligned; floats are formatted compactly."""
    head = "".join(
        f'<th class="{"l" if i == 0 else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers)
    )
    body = []
    for r_i, r in enumerate(rows):
        cls = ' class="best"' if highlight and highlight[r_i] else ""
        cells = "".join(
            f'<td class="{"l" if i == 0 or _is_text(v) else ""}">{html.escape(fmt(v))}</td>'
            for i, v in enumerate(r)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _is_text(v: Any) -> bool:
    """Prose cells (names, sources) read better left-aligned; numbers stay right-aligned."""
    return isinstance(v, str) and len(v) > 12


def fmt(v: Any) -> str:
    """Compact human formatting for table cells."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 1e6:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:,.1f}"
        if a >= 0.01:
            return f"{v:.3g}"
        return f"{v:.3e}"
    return str(v)


def page(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """The whole HTML document."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if subtitle:
        parts.append(f'<p class="note">{html.escape(subtitle)}</p>')
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>{s.body}")
    parts.append("</body></html>")
    return "\n".join(parts)


def paragraph(text: str, note: bool = False) -> str:
    cls = ' class="note"' if note else ""
    return f"<p{cls}>{html.escape(text)}</p>"


def definition_list(items: Sequence[tuple[str, str]]) -> str:
    """A two-column list of (term, explanation), both escaped."""
    body = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items)
    return f'<dl class="assume">{body}</dl>'


def tag(kind: str) -> str:
    """A small coloured badge: ``predicted`` (cost model) or ``measured``."""
    return f'<span class="tag {html.escape(kind)}">{html.escape(kind)}</span>'


def place_labels(
    ax: Any, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], gid: str = "label"
) -> list[Any]:
    """Annotate points so that no two labels overlap (adjustText, leader lines to the points).

    Each label's SVG id is ``{gid}-{i}`` and the axes' ``{gid}-axes`` (the browser test reads
    their boxes). Returns the text artists.
    """
    from adjustText import adjust_text

    ax.set_gid(f"{gid}-axes")
    texts = [
        ax.text(x, y, lab, fontsize=7, gid=f"{gid}-{i}")
        for i, (x, y, lab) in enumerate(zip(xs, ys, labels, strict=True))
    ]
    if len(texts) > 1:
        adjust_text(
            texts,
            x=list(xs),
            y=list(ys),
            ax=ax,
            expand=(1.3, 1.6),
            arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.5},
        )
    return texts


def use_log(values: Sequence[float], span: float = 10.0) -> bool:
    """Whether an axis over ``values`` needs a log scale (all positive, max/min above ``span``)."""
    pos = [v for v in values if v > 0]
    return len(pos) == len(values) and len(pos) > 1 and max(pos) / min(pos) > span


def log_axis(axis: Any, set_scale: Any) -> None:
    """A log scale whose ticks read as plain numbers at 1, 2 and 5 per decade (no 3×10⁻¹ clutter)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    set_scale("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
