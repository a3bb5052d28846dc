"""TCO report of a placement plan (from ``terrazzo plan --json`` or a ``.tzb`` bundle) against its baselines.

Numbers: USD/hour and USD per 1M requests per fleet option, latency vs cost with the Pareto
front, a per-stage timeline of one request, and device utilisation at the planned traffic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from terrazzo.errors import TerrazzoError
from terrazzo.report import html as H
from terrazzo.report import sensitivity as S

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
    assumptions: tuple[tuple[str, str], ...] = ()
    prices: tuple[Mapping[str, Any], ...] = ()
    price_sensitivity: tuple[Mapping[str, Any], ...] = ()
    traffic_sensitivity: tuple[Mapping[str, Any], ...] = ()
    energy: Mapping[str, float | None] = field(default_factory=dict)
    latency_source: str = "predicted"

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "chosen": self.chosen,
            "sla_latency_s": self.sla_latency_s,
            "rps": self.rps,
            "latency_source": self.latency_source,
            "options": [
                dict(asdict(o), devices=dict(o.devices), **S.totals(o.usd_per_hour))
                for o in self.options
            ],
            "timeline": [asdict(t) for t in self.timeline],
            "utilisation": dict(self.utilisation),
            "assumptions": dict(self.assumptions),
            "prices": [dict(p) for p in self.prices],
            "price_sensitivity": [dict(r) for r in self.price_sensitivity],
            "traffic_sensitivity": [dict(r) for r in self.traffic_sensitivity],
            "energy": dict(self.energy),
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
    chosen: Any,
    baselines: Mapping[str, Any],
    title: str,
    notes: list[str] | None = None,
    *,
    profile: str = "datasheet",
    pricing: str = "",
    fleet_counts: Mapping[str, float] | None = None,
) -> PlanReport:
    """Turn plans into report data: options with the Pareto front, timeline, utilisation,
    assumptions, price and traffic sensitivity, monthly/yearly totals and energy.

    Args:
        chosen: the plan the report is about.
        baselines: other plans by name (solved with the baseline solvers).
        title: page title.
        notes: extra lines for the Notes section.
        profile: catalog profile the plans were priced with (price sources, TDP).
        pricing: the fleet's pricing mode (``cloud``/``capex``), when known.
        fleet_counts: devices available per class, to flag traffic the fleet cannot carry.
    """
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
    costs = [S.plan_cost(name, pl) for name, pl in plans.items()]
    prices, tdp, usd_per_kwh = _catalog_facts(
        profile, {d for pl in plans.values() for d in pl.devices}
    )
    measured = any("measured" in n.lower() or "calibrat" in n.lower() for n in chosen.notes)
    return PlanReport(
        title=title,
        chosen=opts[0].name,
        options=tuple(opts),
        timeline=tuple(timeline(chosen)),
        utilisation=utilisation(chosen),
        sla_latency_s=chosen.sla.latency_s,
        rps=chosen.rps,
        notes=tuple((notes or []) + list(chosen.notes)),
        assumptions=tuple(_assumptions(chosen, profile, pricing, measured)),
        prices=tuple(prices),
        price_sensitivity=tuple(S.price_sensitivity(costs)),
        traffic_sensitivity=tuple(S.traffic_sensitivity(costs, fleet_counts)),
        energy=S.energy(chosen, tdp, usd_per_kwh),
        latency_source="measured" if measured else "predicted",
    )


def _catalog_facts(
    profile: str, devices: set[str]
) -> tuple[list[dict[str, Any]], dict[str, float], float]:
    """Price source and date and TDP of each device class the plans use, from the catalog."""
    from terrazzo.costmodel import load_catalog
    from terrazzo.costmodel.tco import TCOOptions

    usd_per_kwh = TCOOptions().usd_per_kwh
    try:
        cat = load_catalog(profile)
    except TerrazzoError:
        return [], {}, usd_per_kwh
    rows, tdp = [], {}
    for d in sorted(devices):
        if d not in cat:
            continue
        spec = cat[d]
        tdp[d] = float(spec.tdp_w)
        rows.append({
            "device": d, "cloud_usd_per_hour": spec.cloud_usd_per_hour, "provider": spec.cloud_provider,
            "price_date": spec.cloud_price_date, "capex_usd": spec.capex_usd, "tdp_w": spec.tdp_w,
            "source": spec.sources.get("cloud_usd_per_hour", spec.sources.get("capex_usd", "")),
        })  # fmt: skip
    return rows, tdp, usd_per_kwh


def _assumptions(plan: Any, profile: str, pricing: str, measured: bool) -> list[tuple[str, str]]:
    from terrazzo.costmodel.efficiency import RUNTIME_HOP_LATENCY_S

    src = (
        "measured / calibrated latencies (see Notes)"
        if measured
        else "predicted by the analytical cost model (roofline with per-class efficiencies), not measured"
    )
    return [
        ("Latency", f"{src}; the mean latency of one request on an unloaded system (no queueing), "
                    "not a p99. Check p99 under load with `terrazzo tco simulate` or measure with "
                    "`terrazzo run`."),
        ("SLA", f"end-to-end latency ≤ {plan.sla.latency_s * 1e3:.4g} ms"
                + (f", TTFT ≤ {plan.sla.ttft_s * 1e3:.4g} ms" if plan.sla.ttft_s else "")
                + (f", TBT ≤ {plan.sla.tbt_s * 1e3:.4g} ms" if plan.sla.tbt_s else "")),
        ("Traffic", f"{plan.rps:g} requests/s, steady"),
        ("Utilisation target", f"{plan.target_utilisation:.0%}: devices = ⌈busy s/request × "
                               "requests/s ÷ target⌉ per class"),
        ("Prices", f"catalog profile {profile!r}"
                   + (f", {pricing} pricing" if pricing else "")
                   + "; source and date of each price in the table below"),
        ("Stage hops", f"each class change is a runtime hop between stage workers: "
                       f"{RUNTIME_HOP_LATENCY_S * 1e3:.2g} ms (measured, benchmarks/serving_overhead) "
                       "plus link latency and bytes / bandwidth, and its host CPU time"),
        ("Totals", "a month is 730 h and a year 8,760 h of an always-on fleet"),
        ("Sensitivity", "the placement is held fixed; prices and traffic change the device "
                        "count and the bill, not which ops run where"),
    ]  # fmt: skip


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
        H.Section("Monthly and yearly totals", _totals_table(rep)),
        H.Section("Assumptions", _assumptions_html(rep)),
        H.Section("Cost by fleet option", H.figure_svg(_cost_bars(rep))),
        H.Section("Latency vs cost (Pareto front)", H.figure_svg(_pareto(rep))),
        H.Section("Sensitivity to prices (±30%)", _price_sens_html(rep)),
        H.Section("Sensitivity to traffic (0.5×–3×)", _traffic_sens_html(rep)),
        H.Section("Energy (chosen plan)", _energy_html(rep)),
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
    headers = ["option", "USD/hour", "USD/month", "USD per 1M requests", "mean latency ms", "meets SLA",
               "Pareto", "energy J/req", "devices"]  # fmt: skip
    rows = [[o.name, o.usd_per_hour, o.usd_per_hour * H.HOURS_PER_MONTH, o.usd_per_million_requests,
             o.latency_s * 1e3, o.meets_sla, o.pareto, o.energy_j_per_request,
             ", ".join(f"{k}×{v}" for k, v in o.devices.items())] for o in rep.options]  # fmt: skip
    source = (
        "measured or calibrated"
        if rep.latency_source == "measured"
        else "predicted by the cost model"
    )
    text = f"Highlighted: the chosen plan. Every figure on this page is {source} (see Assumptions)."
    ok = [o for o in rep.options if o.meets_sla]
    best = min(ok, key=lambda o: o.usd_per_hour, default=None)
    if best is not None and best.name != rep.chosen and rep.options[0].usd_per_hour > 0:
        saving = 1 - best.usd_per_hour / rep.options[0].usd_per_hour
        text += f" The chosen plan is not the cheapest that meets the SLA: {best.name} costs {saving:.0%} less."
    legend = H.paragraph(text, note=True)
    return (
        H.tag(rep.latency_source)
        + H.table(headers, rows, [o.name == rep.chosen for o in rep.options])
        + legend
    )


def _totals_table(rep: PlanReport) -> str:
    rows = []
    for o in rep.options:
        t = S.totals(o.usd_per_hour)
        rows.append([o.name, t["usd_per_hour"], t["usd_per_month"], t["usd_per_year"], o.meets_sla])
    return H.table(["option", "USD/hour", "USD/month (730 h)", "USD/year (8,760 h)", "meets SLA"], rows,
                   [o.name == rep.chosen for o in rep.options])  # fmt: skip


def _assumptions_html(rep: PlanReport) -> str:
    out = H.definition_list(rep.assumptions)
    if rep.prices:
        rows = [[p["device"], p["cloud_usd_per_hour"], p["provider"], p["price_date"], p["capex_usd"],
                 p["tdp_w"], p["source"]] for p in rep.prices]  # fmt: skip
        out += H.table(["device", "cloud USD/hour", "provider", "price date", "capex USD", "TDP W", "price source"],
                       rows)  # fmt: skip
    return out


def _price_sens_html(rep: PlanReport) -> str:
    if not rep.price_sensitivity:
        return H.paragraph("no price data", note=True)
    sens = rep.price_sensitivity
    rows = [[r["scenario"], r["chosen_usd_per_hour"], f"{r['chosen_change']:+.0%}", r["cheapest_option"],
             r["cheapest_unchanged"], r["chosen_still_cheapest"]] for r in sens]  # fmt: skip
    flips = [r["scenario"] for r in sens if not r["cheapest_unchanged"]]
    note = (
        "The cheapest SLA-meeting option is the same in every scenario."
        if not flips
        else "The cheapest SLA-meeting option changes under: "
        + ", ".join(flips)
        + " (highlighted)."
    )
    headers = ["scenario", "chosen USD/hour", "change", "cheapest SLA-meeting option",
               "same as at list prices", "chosen is cheapest"]  # fmt: skip
    return H.table(headers, rows, [not r["cheapest_unchanged"] for r in sens]) + H.paragraph(
        note, note=True
    )


def _traffic_sens_html(rep: PlanReport) -> str:
    rows = [[f"{r['factor']:g}×", r["option"], r["rps"], ", ".join(f"{k}×{v}" for k, v in r["devices"].items()),
             r["usd_per_hour"], r["usd_per_hour"] * H.HOURS_PER_MONTH, r["usd_per_million_requests"],
             ", ".join(r["exceeds_fleet"]) or "—"] for r in rep.traffic_sensitivity]  # fmt: skip
    return H.table(
        ["traffic", "option", "requests/s", "devices", "USD/hour", "USD/month", "USD per 1M requests",
         "exceeds fleet"], rows, [r["option"] == rep.chosen and r["factor"] == 1.0 for r in rep.traffic_sensitivity],
    ) + H.paragraph("Devices are re-counted for the traffic at the utilisation target; latency does not change "
                    "in this model (no queueing): check p99 at high traffic with terrazzo tco simulate.", note=True)  # fmt: skip


def _energy_html(rep: PlanReport) -> str:
    e = rep.energy
    if not e:
        return H.paragraph("no energy figures", note=True)
    rows = [
        ["kWh per 1M requests (busy, at TDP)", e["kwh_per_million_requests"]],
        ["kWh per month, busy at the planned traffic", e["busy_kwh_per_month"]],
        ["USD per month of that energy", e["busy_usd_per_month"]],
        [
            "kWh per month, every provisioned device at TDP (upper bound)",
            e["provisioned_kwh_per_month"],
        ],
        ["USD per month of that energy", e["provisioned_usd_per_month"]],
    ]
    return H.table(["energy", "value"], rows) + H.paragraph(
        f"Electricity at ${e['usd_per_kwh']:.2f}/kWh (TCOOptions.usd_per_kwh). Under cloud pricing the "
        "rental already includes power: these figures say what it is worth, not an extra bill.",
        note=True,
    )


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
    fig, ax = H.new_figure(7.5, 4.2)
    xs = [o.latency_s * 1e3 for o in rep.options]
    ys = [o.usd_per_hour for o in rep.options]
    sla_ms = rep.sla_latency_s * 1e3
    for o, x, y in zip(rep.options, xs, ys, strict=True):
        chosen = o.name == rep.chosen
        ax.scatter(x, y, s=40 if chosen else 25, marker="o" if o.meets_sla else "x", zorder=3,
                   color="tab:green" if chosen else ("tab:blue" if o.meets_sla else "tab:red"))  # fmt: skip
    front = sorted((x, y) for o, x, y in zip(rep.options, xs, ys, strict=True) if o.pareto)
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:orange",
                label="Pareto front", zorder=2)  # fmt: skip
    ax.axvline(sla_ms, color="r", ls="--", lw=0.8, label=f"SLA {sla_ms:.4g} ms")
    if H.use_log([*xs, sla_ms]):
        H.log_axis(ax.xaxis, ax.set_xscale)
    if H.use_log(ys):
        H.log_axis(ax.yaxis, ax.set_yscale)
    # the SLA line and every point inside the axes with a margin, not squeezed to one edge
    lo, hi = min([*xs, sla_ms]), max([*xs, sla_ms])
    if ax.get_xscale() == "log":
        ax.set_xlim(lo / 1.6, hi * 1.6)
    else:
        pad = 0.12 * (hi - lo or hi or 1.0)
        ax.set_xlim(max(0.0, lo - pad), hi + pad)
    ax.scatter([], [], marker="x", color="tab:red", label="misses SLA")
    ax.legend(fontsize=7, loc="best")
    ax.set_xlabel("mean latency per request, ms" + (" (log)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel("USD / hour" + (" (log)" if ax.get_yscale() == "log" else ""))
    ax.grid(True, which="major", lw=0.3, alpha=0.5)
    # options at the same point (baselines that found the same plan) share one label
    groups: dict[tuple[float, float], list[str]] = {}
    for o, x, y in zip(rep.options, xs, ys, strict=True):
        groups.setdefault((round(x, 9), round(y, 9)), []).append(o.name)
    pts = list(groups)
    H.place_labels(ax, [p[0] for p in pts], [p[1] for p in pts], [" = ".join(groups[p]) for p in pts],
                   gid="pareto-label")  # fmt: skip
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
