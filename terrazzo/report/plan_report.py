"""TCO report of a placement plan (from ``terrazzo plan --json`` or a ``.tzb`` bundle) against its baselines.

Numbers: USD/hour and USD per 1M requests per fleet option, latency vs cost with the Pareto
front, a per-stage timeline of one request, and device utilisation at the planned traffic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from terrazzo.errors import TerrazzoError
from terrazzo.report import html as H

BASELINE_SOLVERS = ("homogeneous", "heft", "melange")


@dataclass(frozen=True, slots=True)
class FleetOption:
    """One way to serve the workload: the chosen plan or a baseline."""

    name: str
    solver: str
    usd_per_hour: float
    usd_per_million_requests: float
    latency_s: float
    throughput_rps: float | None
    energy_j_per_request: float
    devices: Mapping[str, int]
    meets_sla: bool
    pareto: bool = False


@dataclass(frozen=True, slots=True)
class TimelineItem:
    """One stage (or transfer) of one request on the time axis."""

    label: str
    device: str
    start_s: float
    end_s: float
    kind: str  # "stage" | "transfer"


@dataclass(frozen=True, slots=True)
class PlanReport:
    """Everything the HTML, JSON and terminal forms show."""

    title: str
    chosen: str
    options: tuple[FleetOption, ...]
    timeline: tuple[TimelineItem, ...]
    utilisation: Mapping[str, float]
    sla_latency_s: float
    rps: float
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "chosen": self.chosen,
            "sla_latency_s": self.sla_latency_s,
            "rps": self.rps,
            "options": [dict(asdict(o), devices=dict(o.devices)) for o in self.options],
            "timeline": [asdict(t) for t in self.timeline],
            "utilisation": dict(self.utilisation),
            "notes": list(self.notes),
        }


def load_plans(path: str | Path) -> tuple[Any, dict[str, Any], str, list[str]]:
    """Read the chosen plan and any baselines stored beside it.

    Accepts a ``Plan.to_json()`` file, a JSON object ``{"plan": ..., "baselines": {name: plan}}``,
    or a ``.tzb`` bundle (its ``plan.json`` member).

    Returns:
        (chosen Plan, baselines by name, title, notes).

    Raises:
        TerrazzoError: the file is missing or holds no plan.
    """
    from terrazzo.placement import Plan

    p = Path(path)
    if not p.is_file():
        raise TerrazzoError(f"{p} does not exist")
    notes: list[str] = []
    if p.suffix == ".tzb":
        from terrazzo.bundle import open_bundle

        # plan.json only: no code loads, so an unsigned bundle is described too
        with open_bundle(p, allow_unsigned=True) as b:
            data, name, stages = b.plan_json, b.name, b.stages
        if not data:
            raise TerrazzoError(
                f"bundle {p} carries no plan.json; rebuild it with terrazzo compile"
            )
        title = f"{name} ({p.name})"
        notes.append(f"bundle {p.name}: {len(stages)} stages, targets " + ", ".join(
            sorted({str(s.target.get('kind', '?')) for s in stages})))  # fmt: skip
    else:
        try:
            data = json.loads(p.read_text())
        except ValueError as e:
            raise TerrazzoError(f"{p}: not JSON ({e})") from None
        title = p.stem
    if not isinstance(data, dict):
        raise TerrazzoError(f"{p}: expected a plan object, found {type(data).__name__}")
    baselines: dict[str, Any] = {}
    if "plan" in data and isinstance(data["plan"], dict):
        for name, bp in (data.get("baselines") or {}).items():
            baselines[name] = Plan.from_json(bp)
        data = data["plan"]
    try:
        chosen = Plan.from_json(data)
    except (KeyError, TypeError, ValueError) as e:
        raise TerrazzoError(f"{p}: not a plan (missing or bad field {e})") from None
    return chosen, baselines, title, notes


def solve_baselines(problem: Any, skip: str = "") -> tuple[dict[str, Any], list[str]]:
    """Solve ``problem`` with each baseline solver; infeasible ones become notes."""
    from terrazzo.placement import solve

    out: dict[str, Any] = {}
    notes: list[str] = []
    for s in BASELINE_SOLVERS:
        if s == skip:
            continue
        try:
            out[s] = solve(problem, s)
        except TerrazzoError as e:
            notes.append(f"baseline {s}: {e}")
    return out, notes


def build_report(
    chosen: Any, baselines: Mapping[str, Any], title: str, notes: list[str] | None = None
) -> PlanReport:
    """Turn plans into report data (options with the Pareto front, timeline, utilisation)."""
    plans = {f"chosen ({chosen.solver})": chosen, **baselines}
    opts = []
    for name, pl in plans.items():
        tp = pl.throughput_rps if math.isfinite(pl.throughput_rps) else None
        opts.append(
            FleetOption(
                name=name, solver=pl.solver, usd_per_hour=pl.usd_per_hour,
                usd_per_million_requests=pl.usd_per_request * 1e6, latency_s=pl.latency_s, throughput_rps=tp,
                energy_j_per_request=pl.energy_j_per_request, devices=dict(pl.devices),
                meets_sla=pl.latency_s <= pl.sla.latency_s * (1 + 1e-6),
            )
        )  # fmt: skip
    front = pareto_front([(o.latency_s, o.usd_per_hour) for o in opts])
    opts = [FleetOption(**{**asdict(o), "pareto": i in front}) for i, o in enumerate(opts)]
    return PlanReport(
        title=title,
        chosen=opts[0].name,
        options=tuple(opts),
        timeline=tuple(timeline(chosen)),
        utilisation=utilisation(chosen),
        sla_latency_s=chosen.sla.latency_s,
        rps=chosen.rps,
        notes=tuple((notes or []) + list(chosen.notes)),
    )


def pareto_front(points: list[tuple[float, float]]) -> set[int]:
    """Indices of points no other point beats on both coordinates (lower is better)."""
    front = set()
    for i, (a, b) in enumerate(points):
        dominated = any(
            (c <= a and d <= b) and (c < a or d < b) for j, (c, d) in enumerate(points) if j != i
        )
        if not dominated:
            front.add(i)
    return front


def timeline(plan: Any) -> list[TimelineItem]:
    """Earliest start of each stage of one request: after its inputs' stages and transfers."""
    end: dict[int, float] = {}
    items: list[TimelineItem] = []
    incoming: dict[int, list[Any]] = {}
    for t in plan.transfers:
        incoming.setdefault(t.dst_stage, []).append(t)
    for s in sorted(plan.stages, key=lambda s: s.index):
        start = 0.0
        for t in incoming.get(s.index, []):
            t0 = end.get(t.src_stage, 0.0)
            if t.latency_s > 0:
                items.append(TimelineItem(f"{t.src_op}→{t.dst_op}", f"{t.src_device}→{t.dst_device}", t0,
                                          t0 + t.latency_s, "transfer"))  # fmt: skip
            start = max(start, t0 + t.latency_s)
        end[s.index] = start + s.latency_s
        label = f"stage {s.index}: " + (", ".join(s.ops[:3]) + (" …" if len(s.ops) > 3 else ""))
        items.append(TimelineItem(label, s.device, start, end[s.index], "stage"))
    return items


def utilisation(plan: Any) -> dict[str, float]:
    """Busy fraction of each device class at the plan's traffic (busy s/request × rps / devices)."""
    busy: dict[str, float] = {}
    for s in plan.stages:
        busy[s.device] = busy.get(s.device, 0.0) + s.latency_s * s.traffic_share
    out = {}
    for d, b in busy.items():
        n = plan.devices.get(d) or max(
            (s.replicas for s in plan.stages if s.device == d), default=1
        )
        out[d] = b * plan.rps / n if n else 0.0
    return out


# -- rendering ---------------------------------------------------------------------------------
def report_html(rep: PlanReport) -> str:
    """Self-contained HTML page of the report."""
    sections = [
        H.Section("Fleet options", _options_table(rep)),
        H.Section("Cost by fleet option", H.figure_svg(_cost_bars(rep))),
        H.Section("Latency vs cost (Pareto front)", H.figure_svg(_pareto(rep))),
        H.Section("One request, stage by stage (chosen plan)", H.figure_svg(_timeline_fig(rep))),
        H.Section("Device utilisation (chosen plan)", H.figure_svg(_util_fig(rep))),
    ]
    if rep.notes:
        sections.append(
            H.Section(
                "Notes",
                "<ul>" + "".join(f"<li>{H.html.escape(n)}</li>" for n in rep.notes) + "</ul>",
            )
        )
    sub = f"SLA {rep.sla_latency_s * 1e3:.4g} ms end to end at {rep.rps:g} requests/s."
    return H.page(f"Terrazzo TCO report — {rep.title}", sections, sub)


def _options_table(rep: PlanReport) -> str:
    headers = ["option", "USD/hour", "USD per 1M requests", "latency ms", "meets SLA", "Pareto", "energy J/req",
               "devices"]  # fmt: skip
    rows = [[o.name, o.usd_per_hour, o.usd_per_million_requests, o.latency_s * 1e3, o.meets_sla, o.pareto,
             o.energy_j_per_request, ", ".join(f"{k}×{v}" for k, v in o.devices.items())] for o in rep.options]  # fmt: skip
    return H.table(headers, rows, [o.name == rep.chosen for o in rep.options])


def _cost_bars(rep: PlanReport) -> Any:
    fig, (a1, a2) = H.new_figure(9, 3.2, ncols=2)
    names = [o.name for o in rep.options]
    colors = ["tab:green" if n == rep.chosen else "tab:gray" for n in names]
    a1.bar(names, [o.usd_per_hour for o in rep.options], color=colors)
    a1.set_ylabel("USD / hour")
    a2.bar(names, [o.usd_per_million_requests for o in rep.options], color=colors)
    a2.set_ylabel("USD per 1M requests")
    for a in (a1, a2):
        a.tick_params(axis="x", rotation=30, labelsize=7)
    fig.tight_layout()
    return fig


def _pareto(rep: PlanReport) -> Any:
    fig, ax = H.new_figure(6, 3.6)
    for o in rep.options:
        ax.scatter(
            o.latency_s * 1e3,
            o.usd_per_hour,
            color="tab:green" if o.name == rep.chosen else "tab:blue",
        )
        ax.annotate(
            o.name,
            (o.latency_s * 1e3, o.usd_per_hour),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    front = sorted((o.latency_s * 1e3, o.usd_per_hour) for o in rep.options if o.pareto)
    if len(front) > 1:
        ax.step(
            [p[0] for p in front],
            [p[1] for p in front],
            where="post",
            color="tab:orange",
            label="Pareto front",
        )
        ax.legend(fontsize=7)
    ax.axvline(rep.sla_latency_s * 1e3, color="r", ls="--", lw=0.8)
    ax.set_xlabel("latency per request, ms (red: SLA)")
    ax.set_ylabel("USD / hour")
    return fig


def _timeline_fig(rep: PlanReport) -> Any:
    fig, ax = H.new_figure(8, 0.4 * max(3, len(rep.timeline)) + 0.8)
    for i, t in enumerate(rep.timeline):
        ax.barh(i, (t.end_s - t.start_s) * 1e3, left=t.start_s * 1e3,
                color="tab:purple" if t.kind == "transfer" else "tab:green")  # fmt: skip
    ax.set_yticks(
        range(len(rep.timeline)), [f"{t.label} [{t.device}]" for t in rep.timeline], fontsize=7
    )
    ax.invert_yaxis()
    ax.set_xlabel("ms since the request arrived")
    return fig


def _util_fig(rep: PlanReport) -> Any:
    fig, ax = H.new_figure(6, 2.8)
    names = list(rep.utilisation)
    ax.bar(names, [100 * rep.utilisation[n] for n in names], color="tab:blue")
    ax.set_ylabel("busy %")
    ax.set_ylim(0, 100)
    return fig


def print_report_summary(rep: PlanReport, console: Any = None) -> None:
    """A rich table of the fleet options on the terminal."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=120)
    t = Table(title=f"TCO — {rep.title} (SLA {rep.sla_latency_s * 1e3:.4g} ms, {rep.rps:g} req/s)")
    for c in ("option", "USD/h", "USD/1M req", "latency ms", "SLA", "Pareto"):
        t.add_column(c, justify="left" if c == "option" else "right", no_wrap=True)
    for o in rep.options:
        style = "bold green" if o.name == rep.chosen else None
        t.add_row(o.name, H.fmt(o.usd_per_hour), H.fmt(o.usd_per_million_requests), H.fmt(o.latency_s * 1e3),
                  H.fmt(o.meets_sla), H.fmt(o.pareto), style=style)  # fmt: skip
    console.print(t)
    best_base = min(
        (o for o in rep.options[1:] if o.meets_sla), key=lambda o: o.usd_per_hour, default=None
    )
    if best_base is not None and rep.options[0].usd_per_hour > 0:
        saving = 1 - rep.options[0].usd_per_hour / best_base.usd_per_hour
        console.print(
            f"chosen plan vs best baseline ({best_base.name}): {saving:+.1%} USD/hour saved"
        )
