"""How the fleet study's answer moves with prices and traffic, and what its best pairs cost per month and in energy.

Reads a ``StudyResult``; ``study_report`` renders the tables. A pair's USD/hour is one prefill
instance (``prefill_tp`` devices) plus ``decode_instances_per_prefill`` decode instances
(``decode_tp`` devices each), so a price change is re-priced exactly without re-running the study.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from terrazzo.report.html import HOURS_PER_MONTH, HOURS_PER_YEAR
from terrazzo.report.study import StudyResult, StudyRow

PRICE_FACTORS = (0.7, 1.3)
TRAFFIC_FACTORS = (0.5, 1.0, 2.0, 3.0)


def _usd(r: StudyRow, price: Mapping[str, float]) -> float:
    return (
        r.prefill_tp * price[r.prefill]
        + r.decode_instances_per_prefill * r.decode_tp * price[r.decode]
    )


def _best(rows: list[StudyRow], price: Mapping[str, float]) -> StudyRow | None:
    ok = [r for r in rows if r.feasible and r.tokens_per_s > 0]
    return max(ok, key=lambda r: r.tokens_per_s / _usd(r, price), default=None)


def price_sensitivity(result: StudyResult) -> list[dict[str, Any]]:
    """For each device class priced ×0.7 and ×1.3 alone: the cells whose best pair changes."""
    base = dict(result.device_usd_per_hour)
    by_cell: dict[tuple[Any, ...], list[StudyRow]] = {}
    for r in result.rows:
        by_cell.setdefault(r.cell, []).append(r)
    list_best = {c: _best(rows, base) for c, rows in by_cell.items()}
    out = []
    for d in sorted(base):
        for f in PRICE_FACTORS:
            price = {**base, d: base[d] * f}
            changed = []
            for c, rows in by_cell.items():
                b, b0 = _best(rows, price), list_best[c]
                if b is not None and b0 is not None and b.pair != b0.pair:
                    changed.append(f"{_label(c)}: {b0.pair} → {b.pair}")
            new_best: dict[str, int] = {}
            for ch in changed:
                new_best[ch.rsplit(" → ", 1)[1]] = new_best.get(ch.rsplit(" → ", 1)[1], 0) + 1
            summary = ", ".join(
                f"{p} in {n}" for p, n in sorted(new_best.items(), key=lambda kv: -kv[1])
            )
            out.append({"device": d, "factor": f, "cells_changed": len(changed), "changes": changed,
                        "new_best": summary, "cells": len(by_cell)})  # fmt: skip
    return out


def traffic_sensitivity(result: StudyResult) -> list[dict[str, Any]]:
    """Tokens per USD of each cell's best pair with whole instances, at 0.5×–3× of one balanced unit.

    The study assumes fractional decode instances (unlimited hardware); a real fleet buys whole
    ones. Traffic is counted in units of what one prefill instance of the pair serves, so
    ``factor`` 1 needs one prefill and ⌈k⌉ decode instances. Values are relative to the
    fractional figure (1.0 = no loss from rounding).
    """
    price = result.device_usd_per_hour
    out = []
    for b in sorted(result.best_per_cell(), key=lambda r: r.cell):
        rel = {}
        for f in TRAFFIC_FACTORS:
            n_p = math.ceil(f - 1e-9)
            n_d = math.ceil(f * b.decode_instances_per_prefill - 1e-9)
            usd = n_p * b.prefill_tp * price[b.prefill] + n_d * b.decode_tp * price[b.decode]
            frac = f * _usd(b, price)
            rel[f] = frac / usd if usd else 0.0
        out.append({"cell": _label(b.cell), "pair": b.pair, "relative_tokens_per_usd": rel})
    return out


def totals_and_energy(
    result: StudyResult, tdp_w: Mapping[str, float], usd_per_kwh: float
) -> list[dict[str, Any]]:
    """Per cell's best pair: USD per month and year of one balanced unit, kWh per 1M tokens at TDP."""
    price = result.device_usd_per_hour
    out = []
    for b in sorted(result.best_per_cell(), key=lambda r: r.cell):
        usd_h = _usd(b, price)
        power_w = None
        if b.prefill in tdp_w and b.decode in tdp_w:
            power_w = (
                b.prefill_tp * tdp_w[b.prefill]
                + b.decode_instances_per_prefill * b.decode_tp * tdp_w[b.decode]
            )
        kwh_per_m = None if power_w is None else power_w / 1000 / 3600 * 1e6 / b.tokens_per_s
        out.append({
            "cell": _label(b.cell), "pair": b.pair, "tokens_per_s": b.tokens_per_s, "usd_per_hour": usd_h,
            "usd_per_month": usd_h * HOURS_PER_MONTH, "usd_per_year": usd_h * HOURS_PER_YEAR,
            "usd_per_million_tokens": usd_h / (3600 * b.tokens_per_s) * 1e6,
            "kwh_per_million_tokens": kwh_per_m,
            "energy_usd_per_million_tokens": None if kwh_per_m is None else kwh_per_m * usd_per_kwh,
        })  # fmt: skip
    return out


def _label(c: tuple[Any, ...]) -> str:
    model, prec, isl, osl, sla = c
    return f"{model.removeprefix('llama3-')} {prec} {isl}/{osl} {sla}"
