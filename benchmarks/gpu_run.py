"""The GPU check itself, run on the accelerator machine by ``gpu_check.sh`` (runtime-only TVM).

Reads what ``gpu_prepare.py`` built (``--art``, default ``.gpu``) and writes one JSON document
(``--results``/gpu_run.json): device and versions, measured ceilings, per-model numerics and
timings, the mixed cpu+h200 bundle served by ``terrazzo serve`` and queried with the stock
``tritonclient``, the LLM agent's tokens, calibration-op timings and kernel candidates' timings.

Imports only what a runtime-only install has: numpy, the TVM runtime, terrazzo's bundle and
runtime packages, tritonclient (carried) and torch (for the ceilings only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

RESULT: dict[str, Any] = {}
#: where RESULT is written after every section (a run cut short keeps what it measured)
RESULT_PATH: list[Path] = []


def log(msg: str) -> None:
    print(msg, flush=True)


def median(xs: list[float]) -> float:
    return float(np.median(np.asarray(xs, dtype=float))) if xs else float("nan")


def section(name: str):  # type: ignore[no-untyped-def]
    """Decorator: run a section, record its error (one line + traceback) instead of stopping."""

    def wrap(fn):  # type: ignore[no-untyped-def]
        def run(*a, **k):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            log(f"== {name}")
            try:
                RESULT[name] = fn(*a, **k)
            except Exception as e:
                log(traceback.format_exc())
                RESULT[name] = {
                    "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                }
            RESULT.setdefault("section_s", {})[name] = round(time.perf_counter() - t0, 2)
            for path in RESULT_PATH:
                path.write_text(json.dumps(RESULT, indent=1, default=str) + "\n")

        return run

    return wrap


def _sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"({e})"


@section("environment")
def environment(art: Path) -> dict[str, Any]:
    import tvm
    import tvm_ffi

    from terrazzo.bundle._runner import _cuda_present

    dev = tvm.cuda(0)
    smi = _sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
               "--format=csv,noheader"])  # fmt: skip
    nvcc = _sh(["nvcc", "--version"])
    m = re.search(r"release ([\d.]+)", nvcc)
    heavy = [
        m for m in ("tvm.relax", "tvm.s_tir", "pydantic", "onnx", "transformers")
        if m in sys.modules
    ]  # fmt: skip
    env = {
        "gpu": smi,
        "cuda_present": _cuda_present(),
        "compute_version": dev.compute_version if dev.exist else None,
        "multi_processor_count": dev.multi_processor_count if dev.exist else None,
        "nvcc": m.group(1) if m else None,
        "tvm": tvm.__version__,
        "tvm_runtime_only": bool(tvm.base._RUNTIME_ONLY),
        "tvm_libs_loaded": sorted(tvm.base._LOADED_LIBS),
        "tvm_ffi": getattr(tvm_ffi, "__version__", None),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            platform.processor(),
        ),  # fmt: skip
        "cpu_count": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "compiler_modules_imported": heavy,
        "commit": (art / "repo" / "COMMIT").read_text().strip()
        if (art / "repo" / "COMMIT").exists()
        else None,
    }
    log(json.dumps(env, indent=1))
    return env


@section("ceilings")
def ceilings() -> dict[str, Any]:
    """Measured copy bandwidth and matmul rates through torch (cuBLAS), the bars to compare with."""
    import torch

    out: dict[str, Any] = {"torch": torch.__version__}
    dev = torch.device("cuda")

    from gpu_kernels import time_cuda as bench

    n = 1 << 28  # 1 GiB of fp32
    x = torch.rand(n, device=dev)
    y = torch.empty_like(x)
    t = bench(lambda: y.copy_(x))
    out["copy_gb_per_s"] = 2 * n * 4 / t / 1e9
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32"), (torch.float32, "tf32")):
        torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
        k = 8192
        a = torch.randn(k, k, device=dev, dtype=dtype)
        b = torch.randn(k, k, device=dev, dtype=dtype)
        t = bench(lambda: a @ b, iters=5)  # noqa: B023
        out[f"matmul_{name}_tflops"] = 2 * k**3 / t / 1e12
    torch.backends.cuda.matmul.allow_tf32 = False
    log(json.dumps(out, indent=1))
    return out


def _inputs(npz: Any) -> dict[str, np.ndarray]:
    return {k[3:]: npz[k] for k in npz.files if k.startswith("in:")}


def _compare(got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return {"shape_ok": False, "got_shape": list(got.shape), "ref_shape": list(ref.shape)}
    diff = np.abs(got - ref)
    return {
        "shape_ok": True,
        "max_abs_diff": float(np.nanmax(diff)) if diff.size else 0.0,
        "rel_l2": float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)),
        "nan_mismatch": int((np.isnan(got) != np.isnan(ref)).sum()),
        "finite": bool(np.isfinite(got).all()),
    }


def _time_calls(fn, inputs, warmup: int = 5, iters: int = 50) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(warmup):
        fn(inputs)
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(inputs)
        ts.append(time.perf_counter() - t0)
    return ts


def _run_bundle(art: Path, entry: dict[str, Any], nan_check: bool = False) -> dict[str, Any]:
    from terrazzo.bundle import open_bundle, run_pipeline

    npz = np.load(art / entry["refs"])
    inputs, ref = _inputs(npz), npz["ref"]
    b = open_bundle(art / entry["bundle"])
    runners = b.load_stages()
    outputs = tuple(o.name for o in b.outputs)
    out = run_pipeline(runners, inputs, outputs)
    row: dict[str, Any] = {
        "stages": [],
        "ran_on": [r.ran_on for r in runners],
        **_compare(out[outputs[0]], ref),
    }
    env = dict(inputs)
    for r, pred in zip(runners, entry["stages"], strict=True):
        ins = {s.name: env[s.name] for s in r.inputs}
        env.update(r(ins))
        host = _time_calls(r, ins)
        dev = r.time_on_device_s(ins)
        row["stages"].append(
            {
                "index": r.index,
                "device": r.device,
                "ran_on": r.ran_on,
                "host_to_host_s": median(host),
                "on_device_s": median(dev),
                "on_device_spread": [min(dev), max(dev)],
                "predicted_s": pred.get("predicted_s"),
                "boundary_bytes_out": int(sum(np.asarray(env[s.name]).nbytes for s in r.outputs)),
            }
        )
    e2e = _time_calls(lambda x: run_pipeline(runners, x, outputs), inputs)
    row["end_to_end_s"] = median(e2e)
    row["end_to_end_p90_s"] = float(np.percentile(e2e, 90))
    row["predicted_latency_s"] = entry.get("predicted_latency_s")
    if nan_check:
        bad = {k: v.copy() for k, v in inputs.items()}
        k0 = next(iter(bad))
        if bad[k0].dtype.kind == "f":
            bad[k0].flat[0] = np.nan
            bad[k0].flat[-1] = np.inf
            got = run_pipeline(runners, bad, outputs)[outputs[0]]
            row["nan_input"] = {
                "output_nan": int(np.isnan(got).sum()),
                "output_nonfinite": int((~np.isfinite(got)).sum()),
                "size": int(got.size),
            }
    return row


@section("models")
def models(art: Path, preds: dict[str, Any]) -> dict[str, Any]:
    rows = {}
    for name, entry in preds.get("models", {}).items():
        try:
            row = _run_bundle(art, entry, nan_check=True)
        except Exception as e:
            log(traceback.format_exc())
            row = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        rows[name] = row
        if "error" not in row:
            log(f"  {name:16s} on {row['ran_on']} max|diff| {row.get('max_abs_diff', float('nan')):.2e} "
                f"e2e {row['end_to_end_s'] * 1e3:.3f} ms, on-device "
                f"{sum(s['on_device_s'] for s in row['stages']) * 1e3:.3f} ms, predicted "
                f"{(row['predicted_latency_s'] or 0) * 1e3:.3f} ms")  # fmt: skip
        else:
            log(f"  {name}: {row['error']}")
    return rows


class Served:
    """``terrazzo serve BUNDLE`` in a subprocess on ports the OS picks, its output kept."""

    def __init__(self, bundle: Path, logfile: Path) -> None:
        self.port = self.metrics = 0
        self.model = ""
        self.logfile = logfile
        self._fh = logfile.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "terrazzo.cli", "serve", str(bundle), "--port", "0",
             "--metrics-port", "0"],
            stdout=self._fh, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds until the server says it is ready; reads its ports and model name."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"serve exited with {self.proc.returncode}: {self.text()[-800:]}"
                )
            text = self.text()
            if any(line.startswith("ready") for line in text.splitlines()):
                served = re.search(r"serving (?:model|agent) '([^']+)' on [\d.]+:(\d+)", text)
                metrics = re.search(r"metrics on http://[\d.]+:(\d+)/", text)
                if not served or not metrics:
                    raise RuntimeError(f"no model name or ports in serve output: {text[-400:]}")
                self.model, self.port = served.group(1), int(served.group(2))
                self.metrics = int(metrics.group(1))
                return time.perf_counter() - t0
            time.sleep(0.1)
        raise RuntimeError(f"serve not ready after {timeout} s: {self.text()[-800:]}")

    def text(self) -> str:
        self._fh.flush()
        return self.logfile.read_text(errors="replace")

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._fh.close()


def _stage_metrics(text: str) -> dict[str, dict[str, float]]:
    """Per-stage sum and count of the stage latency histogram in a Prometheus page."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = re.match(r"(\w*stage\w*_seconds)_(sum|count)\{([^}]*)\} ([0-9.eE+-]+)", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3)))
            key = labels.get("stage") or labels.get("worker") or m.group(3)
            out.setdefault(key, {})[m.group(2)] = float(m.group(4))
    return out


@section("mixed")
def mixed(art: Path, preds: dict[str, Any], results: Path) -> dict[str, Any]:
    import tritonclient.grpc as tc

    entry = preds["mixed"]
    row = _run_bundle(art, entry)
    srv = Served(art / entry["bundle"], results / "serve_mixed.log")
    npz = np.load(art / entry["refs"])
    inputs, ref = _inputs(npz), npz["ref"]
    try:
        row["serve_ready_s"] = srv.wait_ready()
        name = srv.model
        client = tc.InferenceServerClient(f"127.0.0.1:{srv.port}")
        tin = []
        for k, v in inputs.items():
            t = tc.InferInput(k, list(v.shape), _v2(v.dtype))
            t.set_data_from_numpy(v)
            tin.append(t)
        res = client.infer(name, tin, client_timeout=60)
        outs = res.get_response(as_json=True)["outputs"]
        got = res.as_numpy(outs[0]["name"])
        row["served"] = _compare(got, ref)
        ts = []
        for _ in range(100):
            t0 = time.perf_counter()
            client.infer(name, tin, client_timeout=60)
            ts.append(time.perf_counter() - t0)
        row["served_latency_s"] = median(ts)
        row["served_p90_s"] = float(np.percentile(ts, 90))
        row["served_stage_metrics"] = _stage_metrics(srv.metrics_text())
        row["serve_log_workers"] = [
            ln for ln in srv.text().splitlines() if "stage" in ln and not ln.startswith("{")
        ][:8]
    finally:
        srv.stop()
    log(json.dumps({k: v for k, v in row.items() if k != "stages"}, indent=1, default=str))
    return row


def _v2(dtype: np.dtype) -> str:
    return {"float32": "FP32", "int64": "INT64", "int32": "INT32", "float16": "FP16"}[str(dtype)]


def _llm(
    art: Path, preds: dict[str, Any], results: Path, logname: str = "serve_llm.log"
) -> dict[str, Any]:
    import tritonclient.grpc as tc

    entry = preds["llm"]
    npz = np.load(art / entry["refs"])
    srv = Served(art / entry["bundle"], results / logname)
    row: dict[str, Any] = {"stages": entry["stages"]}
    try:
        row["serve_ready_s"] = srv.wait_ready()
        name = srv.model
        client = tc.InferenceServerClient(f"127.0.0.1:{srv.port}")
        equal, lat = [], []
        for p, exp in zip(npz["prompts"], npz["expected"], strict=True):
            t = tc.InferInput("prompt", list(p.shape), "INT64")
            t.set_data_from_numpy(p)
            t0 = time.perf_counter()
            res = client.infer(
                name, [t], outputs=[tc.InferRequestedOutput("gen")], client_timeout=120
            )
            lat.append(time.perf_counter() - t0)
            got = res.as_numpy("gen").reshape(-1)
            equal.append(bool(np.array_equal(got, exp.reshape(-1))))
            row.setdefault("tokens", []).append(got.tolist())
        row["tokens_equal_reference"] = equal
        row["request_latency_s"] = lat
        row["serve_log_workers"] = [
            ln for ln in srv.text().splitlines() if "stage" in ln and not ln.startswith("{")
        ][:8]
        row["stage_metrics"] = _stage_metrics(srv.metrics_text())
    finally:
        srv.stop()
    log(json.dumps({k: v for k, v in row.items() if k != "tokens"}, indent=1, default=str))
    return row


llm = section("llm")(_llm)


def _decode_diag(art: Path, entry: dict[str, Any], steps: int = 6) -> dict[str, Any]:
    """The LLM bundle's decode phase on the GPU and on the CPU (host build) fed the same inputs,
    step by step along the CPU's greedy path: where do they part?"""
    from terrazzo.bundle import open_bundle

    b = open_bundle(art / entry["bundle"])
    kinds = [s["device"] for s in entry["stages"]]
    pre_i = 0
    dec_i = 1 if kinds[1] != "cpu" else 0
    pre = b.load_stage(pre_i, "cpu")
    gpu = b.load_stage(dec_i, "device")
    cpu = b.load_stage(dec_i, "cpu")
    rng = np.random.default_rng(3)
    p_in = [sp for sp in pre.inputs]
    tokens = rng.integers(0, 256, p_in[0].shape).astype(p_in[0].dtype)
    length = np.full(p_in[1].shape, 20, p_in[1].dtype)
    out = pre({p_in[0].name: tokens, p_in[1].name: length})
    logits, k, v = (out[o.name] for o in pre.outputs)
    names = [sp.name for sp in gpu.inputs]
    pos = 20
    rows = []
    for step in range(steps):
        t = int(np.argmax(logits.reshape(-1)))
        ins = {
            names[0]: np.array([[t]], np.int64).reshape(gpu.inputs[0].shape),
            names[1]: np.array([pos], np.int64).reshape(gpu.inputs[1].shape),
            names[2]: k,
            names[3]: v,
        }
        g, c = gpu(ins), cpu(ins)
        g2 = gpu(ins)
        row: dict[str, Any] = {"step": step, "pos": pos, "token_in": t}
        for o in gpu.outputs:
            row[f"{o.name}_max_diff"] = float(np.max(np.abs(g[o.name] - c[o.name])))
            row[f"{o.name}_gpu_repeat_diff"] = float(np.max(np.abs(g[o.name] - g2[o.name])))
        lo = gpu.outputs[0].name
        row["argmax_gpu"] = int(np.argmax(g[lo].reshape(-1)))
        row["argmax_cpu"] = int(np.argmax(c[lo].reshape(-1)))
        top2 = np.sort(c[lo].reshape(-1))[-2:]
        row["cpu_top2_gap"] = float(top2[1] - top2[0])
        rows.append(row)
        logits, k, v = (c[o.name] for o in cpu.outputs)
        pos += 1
    return {"decode_stage": dec_i, "steps": rows}


@section("llm_diag")
def llm_diag(art: Path, preds: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key in ("llm", "llm_nograph"):
        if key in preds:
            try:
                out[key] = _decode_diag(art, preds[key])
            except Exception as e:
                log(traceback.format_exc())
                out[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    log(json.dumps(out, indent=1))
    return out


@section("llm_nograph")
def llm_nograph(art: Path, preds: dict[str, Any], results: Path) -> dict[str, Any]:
    return _llm(art, {"llm": preds["llm_nograph"]}, results, "serve_llm_nograph.log")


@section("bisect")
def bisect(art: Path, preds: dict[str, Any], gpu: str = "device") -> dict[str, Any]:
    """Each stage of a one-op-per-stage bundle on the GPU and on the CPU (host build), fed the
    CPU's values: the first stages whose GPU outputs differ name the faulty GPU code."""
    from terrazzo.bundle import open_bundle

    entry = preds["bisect"]
    b = open_bundle(art / entry["bundle"])
    rng = np.random.default_rng(5)
    env: dict[str, np.ndarray] = {}
    for spec in b.inputs:
        if np.dtype(spec.dtype).kind in "iu":
            value = 20 if "pos" in spec.name else 60
            env[spec.name] = np.full(spec.shape, value, spec.dtype)
        else:
            env[spec.name] = rng.standard_normal(spec.shape).astype(spec.dtype)
    rows = []
    for i, st in enumerate(entry["stages"]):
        row: dict[str, Any] = {"stage": i, "ops": st["ops"], "kinds": st.get("kinds")}
        try:
            c, g = b.load_stage(i, "cpu"), b.load_stage(i, gpu)
            ins = {s.name: env[s.name] for s in c.inputs}
            co, go = c(ins), g(ins)
            rel = 0.0
            for name, ref in co.items():
                ref64 = np.asarray(ref, np.float64)
                d = np.abs(np.asarray(go[name], np.float64) - ref64)
                scale = max(float(np.max(np.abs(ref64))) if ref64.size else 0.0, 1e-6)
                rel = max(rel, float(np.max(d)) / scale if d.size else 0.0)
            row["rel_diff"] = rel
            row["ran_on"] = g.ran_on
            env.update(co)
        except Exception as e:
            row["error"] = (
                f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            )
        rows.append(row)
    bad = [r for r in rows if r.get("rel_diff", 0.0) > 1e-4 or "error" in r]
    log(f"  {len(rows)} stages, {len(bad)} differ or fail; first: " + json.dumps(bad[:6]))
    return {"stages": rows, "differing": bad}


@section("kbisect")
def kbisect(art: Path, preds: dict[str, Any]) -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gpu_bisect

    return gpu_bisect.run(art, preds["kbisect"], log)


@section("llm_rev")
def llm_rev(art: Path, preds: dict[str, Any], results: Path) -> dict[str, Any]:
    return _llm(art, {"llm": preds["llm_rev"]}, results, "serve_llm_rev.log")


@section("ops")
def ops(art: Path, preds: dict[str, Any]) -> list[dict[str, Any]]:
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from terrazzo.bundle._runner import _install_fatbin_callback

    dev = tvm.cuda(0)
    rng = np.random.default_rng(0)
    rows = []
    for op in preds.get("ops", []):
        if "lib" not in op:
            rows.append(op)
            continue
        lib = art / op["lib"]
        src, fat = lib.with_suffix(".cu"), lib.with_suffix(".fatbin")
        try:
            if src.exists() and fat.exists():
                _install_fatbin_callback(src.read_text(), fat.read_bytes())
            vm = VirtualMachine(tvm.runtime.load_module(str(lib)), dev)
            args = [
                tvm.runtime.tensor(rng.standard_normal(s).astype("float32"), dev)
                for s in op["shapes"]
            ]
            res = vm.time_evaluator("main", dev, number=20, repeat=7, min_repeat_ms=5)(*args)
            rows.append({**op, "measured_s": float(np.median(res.results))})
        except Exception as e:
            rows.append({**op, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
    ok = [r for r in rows if "measured_s" in r]
    log(f"  {len(ok)}/{len(rows)} ops timed")
    return rows


@section("kernels")
def kernels(art: Path, preds: dict[str, Any]) -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import gpu_kernels

    return gpu_kernels.run(art, preds.get("kernels", {}), log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--art", default=".gpu")
    ap.add_argument("--results", required=True)
    ap.add_argument("--only", default="", help="comma list of sections")
    args = ap.parse_args(argv)
    art, results = Path(args.art).resolve(), Path(args.results).resolve()
    if (art / "trusted").is_dir():  # the key gpu_prepare.py signed the bundles with
        os.environ["TERRAZZO_TRUST"] = str(art / "trusted")
    results.mkdir(parents=True, exist_ok=True)
    RESULT_PATH.append(results / "gpu_run.json")
    preds = json.loads((art / "predictions.json").read_text())
    only = set(filter(None, args.only.split(",")))

    def want(s: str) -> bool:
        return not only or s in only

    t0 = time.perf_counter()
    environment(art)
    if want("ceilings"):
        ceilings()
    if want("models"):
        models(art, preds)
    if want("mixed") and "mixed" in preds:
        mixed(art, preds, results)
    if want("llm") and "llm" in preds:
        llm(art, preds, results)
    if want("llm_diag") and "llm" in preds:
        llm_diag(art, preds)
    if want("llm_nograph") and "llm_nograph" in preds:
        llm_nograph(art, preds, results)
    if want("kbisect") and "kbisect" in preds:
        kbisect(art, preds)
    if want("llm_rev") and "llm_rev" in preds:
        llm_rev(art, preds, results)
    if want("bisect") and "bisect" in preds:
        bisect(art, preds)
    if want("ops") and "ops" in preds:
        ops(art, preds)
    if want("kernels") and "kernels" in preds:
        kernels(art, preds)
    from terrazzo.bundle._runner import FATBIN_STATS

    RESULT["fatbins_in_this_process"] = dict(FATBIN_STATS)
    RESULT["wall_s"] = time.perf_counter() - t0
    RESULT["finished_unix_s"] = time.time()
    (results / "gpu_run.json").write_text(json.dumps(RESULT, indent=1, default=str) + "\n")
    log(f"wrote {results / 'gpu_run.json'} in {RESULT['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
