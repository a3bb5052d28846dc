"""Turn the GPU check's raw results into the project's results files, tables and h200 profile.

    python benchmarks/gpu_report.py RESULTS/gpu_run.json [MORE/gpu_run.json ...] [--art .gpu-a]

Reads one or more ``gpu_run.json`` (runs are merged section by section, later files adding
models and kernels) and the ``predictions.json`` of the artefacts they ran, then:

- fits an ``h200`` calibration profile from the timed calibration ops (``costmodel.fit``),
  scores it on the held-out ops, and saves it as
  ``terrazzo/costmodel/data/calibration/h200.json`` with the date and how it was measured;
- writes ``benchmarks/results/gpu_numerics.json``, ``gpu_timing.json``, ``gpu_kernels.json``
  and ``gpu_serving.json`` (device, driver, CUDA, TVM versions, commit);
- prints the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import print_table, write_result  # noqa: E402

PROFILE_PATH = ROOT / "terrazzo" / "costmodel" / "data" / "calibration" / "h200.json"
FP32_TOL = 1e-4


def _merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in docs:
        for k, v in d.items():
            if isinstance(v, dict) and isinstance(out.get(k), dict) and "error" not in v:
                out[k] = {**out[k], **v}
            elif k not in out or (isinstance(v, dict | list) and "error" not in v):
                out[k] = v
    return out


def _device(run: dict[str, Any]) -> dict[str, Any]:
    env = run.get("environment", {})
    return {
        k: env.get(k)
        for k in (
            "gpu",
            "compute_version",
            "nvcc",
            "tvm",
            "tvm_ffi",
            "tvm_runtime_only",
            "python",
            "cpu",
            "cpu_count",
            "loadavg",
            "commit",
        )  # fmt: skip
    } | {"ceilings": run.get("ceilings")}


def _mape(pred: list[float], meas: list[float]) -> float:
    p, m = np.asarray(pred, float), np.asarray(meas, float)
    return float(np.mean(np.abs(p - m) / m) * 100) if len(m) else float("nan")


def numerics(run: dict[str, Any], preds: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, r in run.get("models", {}).items():
        src = preds.get("models", {}).get(name, {}).get("source", "")
        if "error" in r:
            rows.append({"model": name, "source": src, "error": r["error"]})
            continue
        nan = r.get("nan_input", {})
        rows.append(
            {
                "model": name,
                "source": src,
                "ran_on": ",".join(r["ran_on"]),
                "max_abs_diff": r.get("max_abs_diff"),
                "rel_l2": r.get("rel_l2"),
                "pass_fp32_1e-4": bool(r.get("shape_ok") and r.get("max_abs_diff", 1) <= FP32_TOL),
                "nan_inf_input_nonfinite_out": nan.get("output_nonfinite"),
                "out_size": nan.get("size"),
            }
        )
    return rows


def timing(run: dict[str, Any], stage_pred_after: dict[str, list[float]]) -> list[dict[str, Any]]:
    rows = []
    for name, r in run.get("models", {}).items():
        if "error" in r:
            continue
        after = stage_pred_after.get(name, [])
        for i, st in enumerate(r["stages"]):
            rows.append(
                {
                    "model": name,
                    "stage": st["index"],
                    "device": st["device"],
                    "on_device_ms": st["on_device_s"] * 1e3,
                    "host_to_host_ms": st["host_to_host_s"] * 1e3,
                    "predicted_ms": (st["predicted_s"] or 0) * 1e3,
                    "predicted_calibrated_ms": after[i] * 1e3 if i < len(after) else None,
                    "end_to_end_ms": r["end_to_end_s"] * 1e3,
                }
            )
    return rows


def fit_h200(run: dict[str, Any], date: str) -> tuple[Any, dict[str, Any]]:
    """The h200 profile from the timed ops, and its accuracy on the held-out ops."""
    from terrazzo.costmodel import CostModel, load_catalog
    from terrazzo.costmodel.fit import OpMeasurement, fit_profile

    ops = [o for o in run.get("ops", []) if isinstance(o, dict) and "measured_s" in o]
    launch = next((o["measured_s"] for o in ops if o["name"] == "launch"), 5e-6)
    ms = [
        OpMeasurement(
            o["name"],
            o["kind"],
            o["op_class"],
            int(o["flops"]),
            int(o["nbytes"]),
            float(o["measured_s"]),
            bool(o["held_out"]),
            int(o["param_bytes"]),
            int(o["bytes_read"]),
        )  # fmt: skip
        for o in ops
        if o["name"] != "launch"
    ]
    train = [m for m in ms if not m.held_out]
    test = [m for m in ms if m.held_out]
    cat = load_catalog()
    env = run.get("environment", {})
    meta = {
        "measured": date,
        "how": (
            "benchmarks/gpu_check.sh on a lent NVIDIA H200: every op of the calibration suite "
            "(terrazzo.pipeline.calibrate.suite) built by codegen's compile_module for cuda sm_90 "
            "(dlight default schedules, no tuning), weights as device arrays, timed by TVM's "
            "time_evaluator (20 calls × 7 repeats, median) with inputs on the device; fitted "
            "by terrazzo.costmodel.fit.fit_profile on the non-held-out ops"
        ),
        "gpu": env.get("gpu"),
        "nvcc": env.get("nvcc"),
        "tvm": env.get("tvm"),
        "commit": env.get("commit"),
        "train_ops": len(train),
        "held_out_ops": len(test),
    }
    prof = replace(fit_profile(train, cat["h200"], launch, applies_to=("h200",), meta=meta),
                   device_spec=None)  # fmt: skip
    prior = CostModel(cat)
    fitted = CostModel(cat, calibration=prof)

    def pred(cm: Any, xs: list[Any]) -> list[float]:
        return [cm.op_latency_s(m.as_op(), "h200") for m in xs]

    meas = [m.latency_s for m in test]
    acc = {
        "held_out_mape_prior_pct": _mape(pred(prior, test), meas),
        "held_out_mape_calibrated_pct": _mape(pred(fitted, test), meas),
        "train_mape_calibrated_pct": _mape(pred(fitted, train), [m.latency_s for m in train]),
        "ops_timed": len(ops),
    }
    prof = replace(prof, meta={**meta, **acc})
    return prof, acc


def _stage_op_latencies(preds: dict[str, Any], prof: Any) -> dict[str, list[list[float]]]:
    """Per model, per stage: the calibrated cost model's h200 latency of each of its ops."""
    import gpu_models

    from terrazzo import zoo
    from terrazzo.costmodel import CostModel, load_catalog
    from terrazzo.frontend import from_onnx

    cm = CostModel(load_catalog(), calibration=prof)
    out: dict[str, list[list[float]]] = {}
    tmp = Path("/tmp/terrazzo-gpu-report")
    for name, entry in preds.get("models", {}).items():
        try:
            path = (zoo.export_onnx(name, tmp) if entry["source"] == "zoo"
                    else gpu_models.export(name, tmp)[0])  # fmt: skip
            lat = cm.op_latencies_s(from_onnx(path), "h200")
            out[name] = [[lat.get(o, 0.0) for o in st["ops"]] for st in entry["stages"]]
        except Exception as e:  # one model's import must not lose the rest
            print(f"  {name}: no calibrated prediction ({e})")
    return out


def fit_stage_launch(
    run: dict[str, Any], preds: dict[str, Any], prof: Any
) -> tuple[Any, dict[str, list[float]], dict[str, Any]]:
    """Refit the per-op launch term on whole stages of the zoo models.

    A single op timed alone pays a whole VM call (the op-level fit's launch term, ~5 µs); ops
    inside a stage launch back to back, many fused away. The per-op term that best predicts
    the zoo models' measured stage times (least squared log error) replaces it; the three
    held-out transformers models score the result.
    """
    lats = _stage_op_latencies(preds, prof)
    l0 = prof.launch_overhead_s
    measured = {n: [st["on_device_s"] for st in r["stages"]]
                for n, r in run.get("models", {}).items() if "stages" in r}  # fmt: skip

    def predict(name: str, launch: float) -> list[float]:
        return [sum(x - l0 + launch for x in ops if x > 0) for ops in lats.get(name, [])]

    train = [n for n in measured if preds["models"].get(n, {}).get("source") == "zoo" and n in lats]
    test = [n for n in measured if n not in train and n in lats]
    grid = np.logspace(-8, -5, 121)
    err = [sum(float(np.log(p / m) ** 2) for n in train
               for p, m in zip(predict(n, g), measured[n], strict=True)) for g in grid]  # fmt: skip
    best = float(grid[int(np.argmin(err))])

    def mape_of(names: list[str], launch: float) -> float:
        pairs = [
            (p, m) for n in names for p, m in zip(predict(n, launch), measured[n], strict=True)
        ]
        return _mape([p for p, _ in pairs], [m for _, m in pairs])

    acc = {
        "stage_launch_s": best,
        "op_launch_s": l0,
        "models_train": train,
        "models_held_out": test,
        "model_mape_train_pct": mape_of(train, best),
        "model_mape_held_out_pct": mape_of(test, best),
        "model_mape_held_out_op_launch_pct": mape_of(test, l0),
    }
    stage_preds = {n: predict(n, best) for n in lats}
    return replace(prof, launch_overhead_s=best), stage_preds, acc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--art", action="append", default=[], help="artefact folders (predictions)")
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args(argv)
    run = _merge([json.loads(Path(p).read_text()) for p in args.runs])
    arts = args.art or [str(ROOT / ".gpu-a"), str(ROOT / ".gpu-b")]
    preds = _merge([json.loads((Path(a) / "predictions.json").read_text())
                    for a in arts if (Path(a) / "predictions.json").exists()])  # fmt: skip
    date = time.strftime("%Y-%m-%d", time.gmtime(run.get("finished_unix_s", time.time())))
    device = _device(run)
    extra = {"device": device, "gpu_run_date": date}

    num = numerics(run, preds)
    print_table(num, ["model", "source", "ran_on", "max_abs_diff", "rel_l2", "pass_fp32_1e-4",
                      "nan_inf_input_nonfinite_out"], "Numerics on the H200 vs onnxruntime (CPU)")  # fmt: skip
    write_result("gpu_numerics", num, {**extra, "tolerance_fp32": FP32_TOL})

    prof, acc = (None, {})
    after: dict[str, list[float]] = {}
    if not args.no_profile and run.get("ops"):
        prof, acc = fit_h200(run, date)
        prof, after, stage_acc = fit_stage_launch(run, preds, prof)
        acc = {**acc, **stage_acc}
        prof = replace(prof, meta={**prof.meta, **stage_acc})
        prof.save(PROFILE_PATH)
        print(f"h200 profile → {PROFILE_PATH.relative_to(ROOT)}: " + json.dumps(acc))
    tim = timing(run, after)
    stage_meas = [r["on_device_ms"] for r in tim]
    summary = {
        "stage_mape_prior_pct": _mape([r["predicted_ms"] for r in tim], stage_meas),
        "stage_mape_calibrated_pct": _mape(
            [r["predicted_calibrated_ms"] for r in tim if r["predicted_calibrated_ms"]],
            [r["on_device_ms"] for r in tim if r["predicted_calibrated_ms"]],
        ),
        "e2e_mape_prior_pct": _mape(
            [r["predicted_ms"] for r in tim], [r["end_to_end_ms"] for r in tim]
        ),
        **acc,
    }
    print_table(tim, ["model", "stage", "device", "on_device_ms", "host_to_host_ms", "predicted_ms",
                      "predicted_calibrated_ms", "end_to_end_ms"],
                "Per-stage time on the H200 vs the cost model")  # fmt: skip
    print(json.dumps(summary, indent=1))
    write_result("gpu_timing", tim, {**extra, "summary": summary})

    krows = []
    peak = 66.9e12
    ceil = (device.get("ceilings") or {}).get("matmul_fp32_tflops")
    for name, k in (run.get("kernels") or {}).items():
        if not isinstance(k, dict) or "best" not in k:
            continue
        for p, b in k["best"].items():
            g = b.get("gflops")
            krows.append(
                {
                    "kernel": name,
                    "proposer": p,
                    "gflops": g,
                    "frac_fp32_peak": g * 1e9 / peak if g else None,
                    "frac_measured_fp32": g * 1e9 / (ceil * 1e12) if g and ceil else None,
                    "valid": f"{b['valid']}/{b['tried']}",
                    "best": b.get("note"),
                    "torch_fp32_gflops": k["flops"] / k["torch_fp32_s"] / 1e9,
                }
            )
    if krows:
        print_table(krows, ["kernel", "proposer", "gflops", "frac_fp32_peak", "valid",
                            "torch_fp32_gflops", "best"],
                    "GPU kernels: best valid candidate per proposer (fp32, H200)")  # fmt: skip
        write_result("gpu_kernels", krows, {**extra, "fp32_peak_datasheet_tflops": 66.9,
                                            "raw": run.get("kernels")})  # fmt: skip

    raw = {Path(p).parent.name: json.loads(Path(p).read_text()) for p in args.runs}
    write_result("gpu_raw_runs", [], {**extra, "runs": raw})
    serving = {k: run.get(k) for k in ("mixed", "llm", "llm_rev") if run.get(k)}
    if serving:
        rows = []
        mx = serving.get("mixed") or {}
        if "stages" in mx:
            served = mx.get("served_stage_metrics") or {}
            for st in mx["stages"]:
                m = served.get(str(st["index"]))
                if m and m.get("count"):
                    rows.append({
                        "what": f"  stage {st['index']} on {st['device']} ({st['ran_on']})",
                        "in_process_ms": st["host_to_host_s"] * 1e3,
                        "served_ms": m["sum"] / m["count"] * 1e3,
                        "hop_overhead_ms": (m["sum"] / m["count"] - st["host_to_host_s"]) * 1e3,
                        "predicted_transfer_ms": sum(
                            t["latency_s"] for t in (preds.get("mixed") or {}).get("transfers", [])
                            if t["dst_stage"] == st["index"]) * 1e3,
                    })  # fmt: skip
            rows.append({
                "what": "bert-mixed (stage 0 h200, stage 1 cpu)",
                "in_process_ms": mx["end_to_end_s"] * 1e3,
                "served_ms": mx.get("served_latency_s", float("nan")) * 1e3,
                "served_matches_ort": (mx.get("served") or {}).get("max_abs_diff"),
                "hop_bytes": mx["stages"][0]["boundary_bytes_out"],
                "gpu_stage_copy_ms": (mx["stages"][0]["host_to_host_s"]
                                      - mx["stages"][0]["on_device_s"]) * 1e3,
            })  # fmt: skip
        for key, what in (("llm", "LLM: prefill cpu, decode h200"),
                          ("llm_rev", "LLM (TTFT bound): prefill h200, decode cpu")):  # fmt: skip
            lm = serving.get(key) or {}
            if "tokens_equal_reference" in lm:
                rows.append({
                    "what": what,
                    "served_ms": float(np.median(lm["request_latency_s"])) * 1e3,
                    "served_matches_ort": f"tokens equal: {lm['tokens_equal_reference']}",
                })  # fmt: skip
        print_table(rows, ["what", "in_process_ms", "served_ms", "hop_overhead_ms",
                           "predicted_transfer_ms", "served_matches_ort", "hop_bytes",
                           "gpu_stage_copy_ms"], "Served across the GPU and the CPU")  # fmt: skip
        write_result("gpu_serving", rows, {**extra, "raw": serving})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
