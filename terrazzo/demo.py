"""``make demo``: the main job end to end on an embedded model, using only this machine.

import (ONNX) → IR → plan on a mixed fleet → TVM build → .tzb bundle → inspect/verify →
serve over KServe v2 gRPC → requests with the stock tritonclient → TCO report.

Every step runs the same code as the ``terrazzo`` CLI (it calls ``terrazzo.cli.main``), so
what the demo prints is what a user sees.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

FLEET_YAML = """\
# A mixed fleet: a CPU server, an older GPU and a new one. Counts omitted = unlimited.
devices:
  cpu: {count: 4}
  t4: {count: 4}
  h100: {count: 2}
pricing: {mode: cloud}
"""


def _step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def _cli(*argv: str, quiet: bool = False) -> str:
    """Run one ``terrazzo`` command in-process; fail the demo if it fails."""
    from terrazzo.cli import main

    print("$ terrazzo " + " ".join(argv), flush=True)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(list(argv))
    out = buf.getvalue()
    if not quiet:
        sys.stdout.write(out)
    if rc != 0:
        raise SystemExit(f"demo: 'terrazzo {' '.join(argv)}' failed with exit code {rc}")
    return out


def run_demo(out_dir: Path, model: str = "mlp", requests: int = 50) -> dict[str, float]:
    """Run the whole pipeline on zoo ``model``; returns the served latency figures."""
    from terrazzo import zoo

    out_dir.mkdir(parents=True, exist_ok=True)
    _step(f"1. export the embedded '{model}' model to ONNX")
    onnx_path = zoo.export_onnx(model, out_dir)
    print(f"wrote {onnx_path}")

    _step("2. import it and print its IR (tz-dialect MLIR, elementwise chains fused)")
    mlir = _cli("ir", str(onnx_path), "--fuse", "-o", str(out_dir / f"{model}.mlir"), quiet=True)
    text = (out_dir / f"{model}.mlir").read_text(encoding="utf-8")
    print("\n".join(text.splitlines()[:12]) + ("\n  ..." if text.count("\n") > 12 else ""))
    del mlir

    fleet = out_dir / "fleet.yaml"
    fleet.write_text(FLEET_YAML, encoding="utf-8")
    _step("3. place it on a mixed fleet (cpu, t4, h100) under a 5 ms SLA at 200 requests/s")
    problem = [str(onnx_path), "--fleet", str(fleet), "--sla", "5ms", "--rps", "200"]
    plan_json = _cli("plan", *problem, "--json", quiet=True)
    (out_dir / "plan.json").write_text(plan_json, encoding="utf-8")
    _cli("plan", *problem)

    bundle = out_dir / f"{model}.tzb"
    _step("4. compile: place, build every stage with TVM, write the .tzb bundle")
    _cli("compile", *problem, "-o", str(bundle))
    _cli("inspect", str(bundle))
    _cli("verify", str(bundle))

    _step("5. run the stages in this process (no servers), 100 times")
    _cli("run", str(bundle), "--benchmark", "100")

    _step("6. serve it over KServe v2 gRPC and query it with the stock tritonclient")
    figures = _serve_and_query(bundle, onnx_path, requests)

    _step("7. TCO report: the chosen plan against the baselines")
    report = out_dir / "report.html"
    _cli(
        "report",
        str(out_dir / "plan.json"),
        "--compare",
        str(onnx_path),
        "--fleet",
        str(fleet),
        "-o",
        str(report),
    )
    print(f"\nreport: {report}")
    return figures


def _serve_and_query(bundle: Path, onnx_path: Path, requests: int) -> dict[str, float]:
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient

    from terrazzo.bundle import open_bundle, random_inputs
    from terrazzo.runtime import serve
    from terrazzo.runtime.tensors import v2_datatype

    with open_bundle(bundle) as b:
        name, in_specs, out_specs = b.name, b.inputs, b.outputs
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    t0 = time.perf_counter()
    with serve(bundle, port=0) as server:
        print(f"gateway on 127.0.0.1:{server.port}, ready in {time.perf_counter() - t0:.1f} s")
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        assert client.is_server_ready() and client.is_model_ready(name)
        latencies_ms, worst_err = [], 0.0
        for i in range(requests):
            feeds = random_inputs(in_specs, seed=i)
            infer_inputs = []
            for spec in in_specs:
                inp = grpcclient.InferInput(spec.name, list(spec.shape), v2_datatype(spec.dtype))
                inp.set_data_from_numpy(feeds[spec.name])
                infer_inputs.append(inp)
            t = time.perf_counter()
            res = client.infer(name, infer_inputs)
            latencies_ms.append((time.perf_counter() - t) * 1e3)
            ref = sess.run(None, feeds)
            for spec, want in zip(out_specs, ref, strict=False):
                got = res.as_numpy(spec.name)
                worst_err = max(worst_err, float(np.max(np.abs(got - want))))
        client.close()
    lat = np.array(latencies_ms)
    figures = {
        "requests": float(requests),
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p90": float(np.percentile(lat, 90)),
        "max_abs_err_vs_onnxruntime": worst_err,
    }
    first = res.as_numpy(out_specs[0].name)
    print(
        f"answer of the last request ({out_specs[0].name}, first row): {np.round(first.reshape(-1)[:6], 4)}"
    )
    print(json.dumps(figures, indent=2))
    if worst_err > 1e-4:
        raise SystemExit(f"demo: served answers differ from onnxruntime by {worst_err:.2e}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m terrazzo.demo", description=__doc__)
    parser.add_argument("--out", default="out/demo", help="where to write the artefacts")
    parser.add_argument("--model", default="mlp", help="zoo model to run (default mlp)")
    parser.add_argument("--requests", type=int, default=50, help="requests to send (default 50)")
    args = parser.parse_args(argv)
    run_demo(Path(args.out), args.model, args.requests)
    print("\ndemo: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
