"""Question: do architectures nobody in the project wrote import, compile and match onnxruntime?

The held-out suite of ``_suite_models.py`` (CNN with depthwise/SE blocks, ViT, BERT, RoBERTa,
GPT-2, T5, Whisper encoder, LSTM, GRU, multi-input/multi-output, fp16, int8 QDQ, int8
QOperator, and with ``--big`` a > 2 GB model with external data), random weights, nothing
downloaded. Each model runs in a fresh process (so its peak RSS is its own): the ONNX file as
the exporter wrote it (dynamic batch/sequence axes) → ``from_onnx`` with no shapes given →
``build_cpu`` once → batch (or sequence) 1, 3 and 8, compared with onnxruntime; then, where
the model is a torch module, ``from_torch`` (torch.export, the varying dimension declared
``1..8``) → the same sizes against torch. A model the dynamic import refuses is retried with
static shapes, one build per size, and the table says so. Tolerances: fp32 1e-4 (relative to
the output's largest magnitude, at least absolute 1e-4), fp16 1e-2, int8: two quantization
steps of the output (what one rounding either side can give).

    .venv/bin/python benchmarks/model_suite.py [--only bert,gpt2] [--big] [--no-torch]
        [--latency] [--name model_suite]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_result  # noqa: E402

SIZES = (1, 3, 8)


def _tolerance(ref: Any, kind: str, out_scale: float) -> float:
    import numpy as np

    if kind == "int8":
        return 2.0 * out_scale
    if kind == "fp16":
        return 1e-2 * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
    return 1e-4 * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)


def _output_scale(path: Path) -> float:
    """Scale of the DequantizeLinear that writes a graph output (int8 models), else 0."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    vals = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    outs = {o.name for o in m.graph.output}
    best = 0.0
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and n.output[0] in outs and n.input[1] in vals:
            best = max(best, float(vals[n.input[1]].max()))
    return best


def _compare(got: dict[str, Any], want: list[Any], names: tuple[str, ...], kind: str,
             scale: float) -> tuple[float, bool]:  # fmt: skip
    import numpy as np

    worst, ok = 0.0, True
    for name, ref in zip(names, want, strict=True):
        g = np.asarray(got[name])
        if g.shape != ref.shape:
            return float("inf"), False
        d = (
            float(np.max(np.abs(g.astype(np.float64) - ref.astype(np.float64))))
            if ref.size
            else 0.0
        )
        if np.isnan(d):
            d = float("inf")
        worst = max(worst, d)
        ok = ok and d <= _tolerance(ref, kind, scale)
    return worst, ok


def _one_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[-1][:220]


def _run_model(name: str, folder: str, torch_path: bool, latency: bool) -> dict[str, Any]:
    """Everything for one model (runs in its own process)."""
    import resource

    import _suite_models as sm
    import numpy as np
    import onnxruntime as ort
    import torch

    from terrazzo.frontend import build_cpu, from_onnx, from_torch

    torch.set_num_threads(1)
    m = next(x for x in sm.models() if x.name == name)
    row: dict[str, Any] = {"model": name, "family": m.family}
    path = sm.export_onnx(m, Path(folder))
    kind = "int8" if m.derive else ("fp16" if "fp16" in name else "fp32")
    scale = _output_scale(path) if kind == "int8" else 0.0
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    torch.manual_seed(123)
    feeds = {n: {k: v.numpy() for k, v in m.inputs(n).items()} for n in SIZES}
    refs = {n: sess.run(list(m.outputs), feeds[n]) for n in SIZES}

    # ONNX, dynamic axes as exported
    t0 = time.perf_counter()
    mode = "dynamic"
    fns: dict[int, Any] = {}
    try:
        fn = build_cpu(from_onnx(path))
        fns = dict.fromkeys(SIZES, fn)
    except Exception as e:  # noqa: BLE001 - a refusal is a result
        row["dynamic_refused"] = _one_line(e)
        axis = 1 if m.varies == "seq" else 0
        shapes = {}
        for k, v in feeds[3].items():
            dims: list[Any] = list(v.shape)
            if dims:
                dims[axis] = (1, 8)
            shapes[k] = tuple(dims)
        try:  # only the varying dimension symbolic, the other open ones fixed
            fn = build_cpu(from_onnx(path, shapes=shapes))
            fns = dict.fromkeys(SIZES, fn)
            mode = f"dynamic {m.varies} only"
        except Exception:  # noqa: BLE001
            mode = "static per size"
    if not fns:
        try:
            for n in SIZES:
                shapes = {k: v.shape for k, v in feeds[n].items()}
                fns[n] = build_cpu(from_onnx(path, shapes=shapes))
        except Exception as e2:  # noqa: BLE001
            row["static_refused"] = _one_line(e2)
            fns = {}
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    row["onnx_mode"] = mode if fns else "refused"
    row["import_ok"] = bool(fns)
    diffs, oks = [], []
    for n in SIZES:
        if n not in fns:
            break
        try:
            got = fns[n](feeds[n])
            d, ok = _compare(got, refs[n], m.outputs, kind, scale)
        except Exception as e:  # noqa: BLE001
            row.setdefault("run_error", _one_line(e))
            d, ok = float("inf"), False
        diffs.append(d)
        oks.append(ok)
    row["max_diff_vs_ort"] = max(diffs) if diffs else None
    row["onnx_pass"] = bool(oks) and all(oks) and len(oks) == len(SIZES)
    if latency and row["onnx_pass"]:
        row.update(_latency(fns[1], sess, feeds[1], m.outputs))

    if torch_path and m.torch_export:
        row.update(_torch_path(m, sm, from_torch, build_cpu, kind))
    row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    del np
    return row


def _torch_path(m: Any, sm: Any, from_torch: Any, build_cpu: Any, kind: str) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    module = m.build().eval()
    ex = m.inputs(3)
    axis = 1 if m.varies == "seq" else 0
    shapes = {}
    for k, v in ex.items():
        dims: list[Any] = list(v.shape)
        dims[axis] = (1, 8)
        shapes[k] = tuple(dims)
    arg_names = list(ex)
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        graph = from_torch(module, tuple(ex.values()), shapes=_rename(module, shapes, arg_names))
        fn = build_cpu(graph)
    except Exception as e:  # noqa: BLE001
        res["torch_export"] = "refused: " + _one_line(e)
        return res
    res["torch_compile_s"] = round(time.perf_counter() - t0, 2)
    worst, ok_all = 0.0, True
    for n in SIZES:
        torch.manual_seed(7)
        feed = m.inputs(n)
        with torch.no_grad():
            want = module(*feed.values())
        want = [w.numpy() for w in (want if isinstance(want, tuple) else (want,))]
        got = fn({g: v.numpy() for g, v in zip(graph.inputs, feed.values(), strict=True)})
        names = tuple(got)
        d, ok = _compare(got, want, names, kind, 0.0)
        worst, ok_all = max(worst, d), ok_all and ok
    res["torch_export"] = "pass" if ok_all else "wrong"
    res["torch_max_diff"] = worst
    return res


def _rename(module: Any, shapes: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Shapes keyed by forward()'s parameter names (``*args`` wrappers take ``args_N``)."""
    import inspect

    params = list(inspect.signature(module.forward).parameters.values())
    return {p.name: shapes[n] for p, n in zip(params, names, strict=False)}


def _latency(fn: Any, sess: Any, feed: dict[str, Any], outputs: tuple[str, ...]) -> dict[str, Any]:
    """Median of interleaved single runs at size 1 (untuned Terrazzo build, 1 thread each)."""
    import statistics

    tz, rt = [], []
    for _ in range(30):
        t = time.perf_counter()
        fn(feed)
        tz.append(time.perf_counter() - t)
        t = time.perf_counter()
        sess.run(list(outputs), feed)
        rt.append(time.perf_counter() - t)
    a, b = statistics.median(tz) * 1e3, statistics.median(rt) * 1e3
    return {"terrazzo_ms": round(a, 3), "ort_ms": round(b, 3), "ratio": round(a / b, 2)}


def _child(conn: Any, *args: Any) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        conn.send(_run_model(*args))
    except BaseException as e:  # noqa: BLE001
        conn.send({"model": args[0], "error": _one_line(e)})


def run_suite(names: list[str], folder: str, torch_path: bool, latency: bool,
              timeout_s: float = 900.0) -> list[dict[str, Any]]:  # fmt: skip
    """One fresh process per model; returns the rows."""
    ctx = mp.get_context("spawn")
    rows = []
    for name in names:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_child, args=(child, name, folder, torch_path, latency))
        t0 = time.perf_counter()
        p.start()
        row = parent.recv() if parent.poll(timeout_s) else {"model": name, "error": "timeout"}
        p.join(10)
        if p.is_alive():
            p.kill()
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {row}", flush=True)
        rows.append(row)
    return rows


def main() -> int:
    import _suite_models as sm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated model names")
    ap.add_argument("--big", action="store_true", help="include the > 2 GB external-data model")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch.export path")
    ap.add_argument("--latency", action="store_true", help="untuned latency vs onnxruntime")
    ap.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "terrazzo-suite"))
    ap.add_argument("--name", default="model_suite", help="result file stem")
    args = ap.parse_args()
    names = [m.name for m in sm.models() if args.big or not m.slow]
    if args.only:
        names = [n for n in args.only.split(",") if n]
    rows = run_suite(names, args.folder, not args.no_torch, args.latency)
    cols = ["model", "family", "import_ok", "onnx_mode", "compile_s", "max_diff_vs_ort",
            "onnx_pass", "torch_export", "torch_max_diff", "peak_rss_mib"]  # fmt: skip
    if args.latency:
        cols += ["terrazzo_ms", "ort_ms", "ratio"]
    print_table(rows, cols, title=f"Held-out model suite (sizes {SIZES}, vs onnxruntime)")
    refused = [
        r for r in rows if r.get("dynamic_refused") or r.get("static_refused") or r.get("error")
    ]
    for r in refused:
        print(f"  {r['model']}: {r.get('dynamic_refused') or r.get('error')}"
              f"{' | static: ' + r['static_refused'] if r.get('static_refused') else ''}")  # fmt: skip
    passed = sum(bool(r.get("onnx_pass")) for r in rows)
    dyn = sum(bool(r.get("onnx_pass")) and r.get("onnx_mode") == "dynamic" for r in rows)
    path = write_result(args.name, rows, extra={
        "summary": {"models": len(rows), "onnx_pass": passed, "onnx_pass_dynamic": dyn,
                    "torch_pass": sum(r.get("torch_export") == "pass" for r in rows)},
        "sizes": list(SIZES), "options": vars(args)})  # fmt: skip
    print(f"{passed}/{len(rows)} models match onnxruntime at sizes {SIZES} "
          f"({dyn} with one dynamic build); wrote {path}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
