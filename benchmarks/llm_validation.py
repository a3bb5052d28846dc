"""Question: how close is `terrazzo llm estimate` to published, measured LLM inference throughput?

Predicts every row of benchmarks/data/llm_public_results.csv (MLPerf Inference results and
vendor-published tables, each with its source URL) and reports the error per row, the median
absolute error per scenario and accelerator, and whether the ranking of accelerators is right.

The model has two physically meaningful parameters per device class — the achievable fraction
of peak FLOP/s (``compute``) and of HBM bandwidth (``memory``) — fitted by least squares on
log(predicted / measured). Nothing is fitted per row. Held-out error is reported two ways:
``by-model`` (fit on the Llama 2 rows, predict the Llama 3.1 rows) and ``leave-one-out`` (fit a
class on all its other rows, predict the one left out; classes left without rows use the
per-kind prior). ``--write-efficiency`` stores the all-rows fit in
terrazzo/costmodel/data/llm_efficiency.yaml, which `terrazzo llm estimate` reads.

MLPerf Llama 2 70B rows use 271 input / 271 output tokens per request: the mean output per
sample is 32,124 tokens/s / 118.5 samples/s = 271 (H200 x8, v4.1; the tokens/s from the row's
source, the samples/s from alpha-one-index.github.io's MLPerf v4.1 table); no source we found
gives the mean prompt length of the OpenOrca subset (both are capped at 1,024, AMD's v4.1 blog),
so it is taken equal to the output. This is the weakest input of the table and is flagged per
row (``lengths_note = mlperf-openorca``).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import yaml  # noqa: E402
from _common import write_result  # noqa: E402

from terrazzo.costmodel import llm  # noqa: E402
from terrazzo.costmodel.catalog import DeviceSpec, load_catalog  # noqa: E402
from terrazzo.costmodel.llm_serving import (  # noqa: E402
    ServingEfficiency,
    efficiency_for,
    estimate_serving,
    load_efficiencies,
)
from terrazzo.errors import CostModelError  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "llm_public_results.csv"
EFF_FILE = (
    Path(__file__).resolve().parent.parent
    / "terrazzo"
    / "costmodel"
    / "data"
    / "llm_efficiency.yaml"
)
TARGET = 0.25
# Physically plausible ranges the fit may not leave: serving GEMMs reach 15-90 % of dense tensor
# peak; decode's weight and KV streams reach 50-95 % of HBM bandwidth (STREAM-like kernels; Azure
# measured 92 % on GB200). A class the model can only match outside them is a model error to
# report, not to absorb.
COMPUTE_RANGE = (0.15, 0.90)
MEMORY_RANGE = (0.50, 0.95)

Row = dict[str, Any]


def load_rows(path: Path = DATA) -> list[Row]:
    """The table, with numeric columns parsed (empty = None)."""
    rows: list[Row] = []
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            row: Row = dict(r)
            for k in ("count", "isl", "osl", "batch", "tp"):
                row[k] = int(r[k]) if r[k] else None
            for k in ("tokens_per_s", "ttft_ms_limit", "tpot_ms_limit"):
                row[k] = float(r[k]) if r[k] else None
            rows.append(row)
    return rows


def predict(row: Row, dev: DeviceSpec, eff: ServingEfficiency) -> float:
    """Predicted output tokens/s of the row's configuration (its TP/batch when published)."""
    est = estimate_serving(
        llm.PRESETS[row["model"]], dev, row["count"], row["precision"], row["isl"], row["osl"],
        row["scenario"],
        ttft_s=None if row["ttft_ms_limit"] is None else row["ttft_ms_limit"] / 1e3,
        tbt_s=None if row["tpot_ms_limit"] is None else row["tpot_ms_limit"] / 1e3,
        tp=row["tp"], batch=row["batch"], efficiency=eff,
    )  # fmt: skip
    return est.tokens_per_s


def _loss(rows: Iterable[Row], dev: DeviceSpec, eff: ServingEfficiency) -> float:
    total = 0.0
    for r in rows:
        try:
            total += math.log(predict(r, dev, eff) / r["tokens_per_s"]) ** 2
        except CostModelError:
            total += 100.0  # infeasible at these efficiencies
    return total


def fit_class(rows: list[Row], dev: DeviceSpec) -> ServingEfficiency:
    """Least-squares log error over a coarse grid, then a fine grid around its best point."""

    def grid(cs: Iterable[float], ms: Iterable[float]) -> tuple[float, float, float]:
        best = (math.inf, 0.5, 0.7)
        for c in cs:
            for m in ms:
                loss = _loss(rows, dev, ServingEfficiency(c, m, "fitted"))
                if loss < best[0]:
                    best = (loss, c, m)
        return best

    (c_lo, c_hi), (m_lo, m_hi) = COMPUTE_RANGE, MEMORY_RANGE
    coarse_c = [c_lo + i * 0.05 for i in range(int(round((c_hi - c_lo) / 0.05)) + 1)]
    coarse_m = [m_lo + i * 0.05 for i in range(int(round((m_hi - m_lo) / 0.05)) + 1)]
    _, c0, m0 = grid(coarse_c, coarse_m)
    fine_c = [round(c0 + d / 100, 2) for d in range(-4, 5) if c_lo <= c0 + d / 100 <= c_hi + 1e-9]
    fine_m = [round(m0 + d / 100, 2) for d in range(-4, 5) if m_lo <= m0 + d / 100 <= m_hi + 1e-9]
    _, c, m = grid(fine_c, fine_m)
    return ServingEfficiency(c, m, "fitted")


def fit_all(rows: list[Row], catalog: Mapping[str, DeviceSpec]) -> dict[str, ServingEfficiency]:
    by_class: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_class[r["accelerator"]].append(r)
    return {name: fit_class(rs, catalog[name]) for name, rs in sorted(by_class.items())}


def _eff(table: Mapping[str, ServingEfficiency], dev: DeviceSpec, priors: Mapping[str, ServingEfficiency]) -> ServingEfficiency:  # fmt: skip
    return table[dev.name] if dev.name in table else efficiency_for(dev, priors)


def evaluate(rows: list[Row], catalog: Mapping[str, DeviceSpec], eff_of: Callable[[Row], ServingEfficiency]) -> list[Row]:  # fmt: skip
    out = []
    for r in rows:
        dev = catalog[r["accelerator"]]
        eff = eff_of(r)
        try:
            pred = predict(r, dev, eff)
            err = pred / r["tokens_per_s"] - 1.0
        except CostModelError as e:
            pred, err = float("nan"), float("nan")
            r = {**r, "error_reason": str(e)}
        out.append({**r, "predicted": pred, "error": err, "eff_compute": eff.compute, "eff_memory": eff.memory,
                    "eff_source": eff.source})  # fmt: skip
    return out


def medians(rows: list[Row]) -> dict[str, Any]:
    """Median |error| per scenario (FP8 and all precisions) and per accelerator."""

    def med(rs: list[Row]) -> float | None:
        errs = [abs(r["error"]) for r in rs if not math.isnan(r["error"])]
        return statistics.median(errs) if errs else None

    out: dict[str, Any] = {"all": med(rows)}
    for sc in ("offline", "server", "interactive"):
        out[f"{sc}"] = med([r for r in rows if r["scenario"] == sc])
        out[f"{sc}_fp8"] = med([r for r in rows if r["scenario"] == sc and r["precision"] == "fp8"])
    out["fp8_offline_and_server"] = med([r for r in rows if r["precision"] == "fp8" and r["scenario"] in ("offline", "server")])  # fmt: skip
    out["per_accelerator"] = {a: med([r for r in rows if r["accelerator"] == a]) for a in sorted({r["accelerator"] for r in rows})}  # fmt: skip
    return out


def ranking(rows: list[Row]) -> dict[str, Any]:
    """Pairs of different accelerators on the same benchmark (model, scenario, lengths, source kind):
    is the per-device order of the prediction the measured order?"""
    groups: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r["kind"], r["model"], r["scenario"], r["isl"], r["osl"])].append(r)
    pairs, right, wrong = 0, 0, []
    for rs in groups.values():
        for i, a in enumerate(rs):
            for b in rs[i + 1 :]:
                if (
                    a["accelerator"] == b["accelerator"]
                    or math.isnan(a["error"])
                    or math.isnan(b["error"])
                ):
                    continue
                ma, mb = a["tokens_per_s"] / a["count"], b["tokens_per_s"] / b["count"]
                pa, pb = a["predicted"] / a["count"], b["predicted"] / b["count"]
                pairs += 1
                if (ma > mb) == (pa > pb):
                    right += 1
                else:
                    wrong.append(f"{a['id']} vs {b['id']}")
    return {
        "pairs": pairs,
        "right": right,
        "all_right": pairs > 0 and right == pairs,
        "wrong": wrong,
    }


def write_efficiency(table: Mapping[str, ServingEfficiency], rows: list[Row]) -> None:
    raw = yaml.safe_load(EFF_FILE.read_text())
    header = [line for line in EFF_FILE.read_text().splitlines() if line.startswith("#")]
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r["accelerator"]] += 1
    raw["classes"] = {
        n: {"compute": e.compute, "memory": e.memory, "rows": counts[n]}
        for n, e in sorted(table.items())
    }
    EFF_FILE.write_text("\n".join(header) + "\n" + yaml.safe_dump(raw, sort_keys=False))


def _print(title: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    print(
        f"{'id':<34} {'acc':>7} {'n':>2} {'prec':>4} {'scen':>7} {'isl/osl':>10} {'measured':>9} {'predicted':>9} {'err':>7}"
    )
    for r in rows:
        err = "  n/a" if math.isnan(r["error"]) else f"{r['error']:+7.1%}"
        print(f"{r['id']:<34} {r['accelerator']:>7} {r['count']:>2} {r['precision']:>4} {r['scenario']:>7} "
              f"{r['isl']:>4}/{r['osl']:<5} {r['tokens_per_s']:>9,.0f} {r['predicted']:>9,.0f} {err}")  # fmt: skip


def _fmt_med(m: dict[str, Any]) -> str:
    keys = ("fp8_offline_and_server", "offline_fp8", "server_fp8", "offline", "server", "all")
    return ", ".join(f"{k} {m[k]:.1%}" for k in keys if m.get(k) is not None)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--write-efficiency", action="store_true", help="store the all-rows fit in the package data"
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = load_rows()
    missing = [r["id"] for r in rows if not r["source_url"].startswith("http")]
    if missing:
        raise SystemExit(f"rows without a source URL: {missing}")
    catalog = load_catalog("datasheet")
    priors = {k: v for k, v in load_efficiencies(EFF_FILE).items() if k.startswith("kind:")}

    fitted = fit_all(rows, catalog)
    in_sample = evaluate(rows, catalog, lambda r: _eff(fitted, catalog[r["accelerator"]], priors))

    train = [r for r in rows if r["model"].startswith("llama2")]
    test = [r for r in rows if not r["model"].startswith("llama2")]
    fit_l2 = fit_all(train, catalog)
    by_model = evaluate(test, catalog, lambda r: _eff(fit_l2, catalog[r["accelerator"]], priors))

    loo: list[Row] = []
    for r in rows:
        others = [o for o in rows if o["accelerator"] == r["accelerator"] and o["id"] != r["id"]]
        dev = catalog[r["accelerator"]]
        eff = fit_class(others, dev) if others else efficiency_for(dev, priors)
        loo.extend(evaluate([r], catalog, lambda _r, eff=eff: eff))

    _print("In-sample (per-class fit on all rows)", in_sample)
    _print("Held-out by model (fit on Llama 2 rows, predict Llama 3.1 rows)", by_model)
    _print("Held-out leave-one-out (class refit without the row)", loo)
    summary = {
        "target_median_abs_error": TARGET,
        "in_sample": medians(in_sample), "by_model": medians(by_model), "leave_one_out": medians(loo),
        "ranking_in_sample": ranking(in_sample), "ranking_leave_one_out": ranking(loo),
        "fitted": {n: {"compute": e.compute, "memory": e.memory} for n, e in fitted.items()},
        "fitted_llama2_only": {n: {"compute": e.compute, "memory": e.memory} for n, e in fit_l2.items()},
        "rows": len(rows), "seconds": time.perf_counter() - t0,
    }  # fmt: skip
    print(
        "\nFitted efficiencies (compute = fraction of peak FLOP/s, memory = fraction of HBM bandwidth):"
    )
    for n, e in fitted.items():
        print(f"  {n:<8} compute {e.compute:.2f}  memory {e.memory:.2f}")
    for label, key in (
        ("in-sample", "in_sample"),
        ("held-out by model", "by_model"),
        ("leave-one-out", "leave_one_out"),
    ):
        print(f"median |error| {label}: {_fmt_med(summary[key])}")
        print("    per accelerator: " + ", ".join(f"{a} {v:.1%}" for a, v in summary[key]["per_accelerator"].items() if v is not None))  # fmt: skip
    for key in ("ranking_in_sample", "ranking_leave_one_out"):
        rk = summary[key]
        print(
            f"{key}: {rk['right']}/{rk['pairs']} pairs ordered right"
            + (f"; wrong: {rk['wrong']}" if rk["wrong"] else "")
        )
    ok = (summary["in_sample"]["fp8_offline_and_server"] or 1.0) <= TARGET
    print(
        f"target (median |error| <= {TARGET:.0%}, FP8 offline+server, in-sample): {'met' if ok else 'NOT met'}"
    )
    if args.write_efficiency:
        write_efficiency(fitted, rows)
        print(f"wrote {EFF_FILE}")
    path = write_result("llm_validation", [{k: v for k, v in r.items()} for r in loo], extra={
        "summary": summary, "in_sample_rows": in_sample, "by_model_rows": by_model})  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
