"""Does the cost model predict the served voice agent's latency? Served p50 (stock tritonclient) vs the plan's prediction on the local CPU.

The agent (``examples/agents/voice_agent.yaml``) is compiled with ``compile_agent`` and served
with every worker on this machine (planned GPU stages fall back to the host-CPU build). The
prediction prices the same tasks on this CPU (``local-cpu``: detected peak, measured bandwidth,
and the fitted efficiencies of ``--calibration PROFILE.json`` from ``terrazzo calibrate --out``
when given): model nodes as the sum of their granular operators, the LLM phases with the phase
model at the served lengths (static prompt of ``prompt_len`` tokens, ``max_new_tokens``
generated, fp32), tools at their declared ``latency_s``, retrieval and memory from the op
model. The search loop runs 1-3 times per request, so requests are grouped by the iterations
they took and compared with the prediction for that many iterations. The gap is the serving
overhead the cost model does not price (gRPC hops through the gateway, tensor copies,
per-stage Python) plus the model's own error.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/agent_latency.py [--requests 30]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import print_table, write_result  # noqa: E402

SPEC = ROOT / "examples" / "agents" / "voice_agent.yaml"
DEFAULT_PROFILE = (
    Path(os.environ.get("TERRAZZO_CACHE", Path.home() / ".cache" / "terrazzo"))
    / "calibration"
    / "local-cpu.json"
)
FLEET = {
    "devices": {"cpu": {"count": 8}, "h100": {"count": 2}, "a100-80g": {"count": 2}},
    "pricing": {"mode": "cloud"},
}


def predict_task_latency_s(
    bundle: Path, calibration: str | None
) -> tuple[dict[str, float], dict[str, Any]]:
    """Per-task latency (one execution, seconds) of the served agent on this CPU, by the cost model."""
    from terrazzo.bundle import open_bundle
    from terrazzo.costmodel import CostModel, load_catalog, local_cpu_spec
    from terrazzo.costmodel.profile import CalibrationProfile
    from terrazzo.frontend.agent import decompose, load_agent
    from terrazzo.ir.graph import make_attrs
    from terrazzo.placement import SLA, Fleet
    from terrazzo.report.agent_plan import agent_problem

    with open_bundle(bundle) as b:
        agent = b.plan_json["agent"]
    llm = {n["name"]: n for n in agent["nodes"] if n["kind"] == "llm.call"}
    graph = load_agent(SPEC)
    ops = []
    for op in graph.ops:  # cost the LLM at the lengths and precision it is served with
        if op.name in llm:
            cfg = llm[op.name]["config"]
            d = op.attr_dict
            d.update(
                dtype="fp32",
                input_tokens=int(cfg["prompt_len"]),
                output_tokens=int(llm[op.name]["max_new_tokens"]),
            )
            op = replace(op, attrs=make_attrs(d))
        ops.append(op)
    graph = replace(graph, ops=tuple(ops))
    profile = CalibrationProfile.load(calibration) if calibration else None
    spec = (
        profile.device_spec
        if profile is not None and profile.device_spec is not None
        else local_cpu_spec()
    )
    spec = replace(
        spec,
        capex_usd=spec.capex_usd or 1000.0,  # prices do not affect latency
        cloud_usd_per_hour=spec.cloud_usd_per_hour or 0.1,
    )
    catalog = {**dict(load_catalog("datasheet")), spec.name: spec}
    cm = CostModel(catalog, calibration=profile)
    fleet = Fleet.model_validate({"devices": {spec.name: {"count": 64}}})
    problem = agent_problem(graph, fleet, SLA(latency_s=1e9), catalog=catalog)
    per_task = {}
    for i, task in enumerate(problem.tasks):
        op = next((o for o in decompose(graph, models=False).ops if o.name == task), None)
        reps = float(op.attr("loop_expected_iterations", 1.0) or 1.0) if op is not None else 1.0
        per_task[task] = float(problem.latency_s[i, 0]) / reps
    full = decompose(graph, models=True)
    for node in [o.name for o in graph.ops if o.kind == "model.call"]:
        sub = [o for o in full.ops if o.attr("agent_node") == node or o.name.startswith(node + ".")]
        per_task[node] = sum(cm.op_latency_s(o, spec) for o in sub)
    info = {
        "device": spec.name,
        "model": getattr(spec, "model", ""),
        "calibrated": profile is not None,
        "peak_fp32_tflops": spec.peak_tflops["fp32"],
        "mem_bw_bytes_per_s": spec.mem_bw_bytes_per_s,
    }
    return per_task, info


def predicted_request_s(
    per_task: dict[str, float], agent: dict[str, Any], iterations: float
) -> float:
    """Critical path of one request: the agent is a chain, the loop body runs ``iterations`` times."""
    body = {n["name"] for n in agent["nodes"] if n.get("loop")}
    total = 0.0
    for task, t in per_task.items():
        node = task.split(".")[0]
        total += t * (iterations if node in body else 1.0)
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=30, help="timed requests (default 30)")
    ap.add_argument(
        "--bundle", help="use this compiled voice-agent bundle instead of compiling one"
    )
    ap.add_argument(
        "--calibration", help="calibration profile JSON from `terrazzo calibrate --out`"
    )
    args = ap.parse_args(argv)

    import tritonclient.grpc as tc

    from terrazzo.bundle import open_bundle
    from terrazzo.pipeline import compile_agent
    from terrazzo.placement import Fleet
    from terrazzo.runtime import serve
    from terrazzo.runtime.agent_plan import agent_serving_plan

    tmp = tempfile.TemporaryDirectory(prefix="tz-agent-bench-")
    bundle = Path(args.bundle) if args.bundle else None
    compile_s = 0.0
    if bundle is None:
        t0 = time.perf_counter()
        bundle = compile_agent(
            SPEC,
            Fleet.model_validate(FLEET),
            "2s",
            Path(tmp.name) / "voice.tzb",
            device_builds=False,
        ).path
        compile_s = time.perf_counter() - t0
    with open_bundle(bundle) as b:
        agent = b.plan_json["agent"]
    per_task, dev_info = predict_task_latency_s(bundle, None)
    per_task_cal, cal_info = (
        predict_task_latency_s(bundle, args.calibration) if args.calibration else (None, None)
    )

    plan = agent_serving_plan(bundle)
    server = serve(plan, default_timeout_s=120.0)
    lat: dict[int, list[float]] = {}
    all_s: list[float] = []
    try:
        client = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
        for seed in range(-2, args.requests):  # two warm-up requests
            audio = np.random.default_rng(1000 + seed).standard_normal((1, 1600)).astype(np.float32)
            inp = tc.InferInput("audio", [1, 1600], "FP32")
            inp.set_data_from_numpy(audio)
            t0 = time.perf_counter()
            res = client.infer(plan.model_name, [inp], client_timeout=120)
            dt = time.perf_counter() - t0
            if seed < 0:
                continue
            k = int(res.as_numpy("research.iterations")[0])
            lat.setdefault(k, []).append(dt)
            all_s.append(dt)
        stage_rows = _stage_rows(server, plan, per_task, per_task_cal)
    finally:
        server.stop(drain_timeout_s=5)
        tmp.cleanup()

    mix = sum(k * len(v) for k, v in lat.items()) / len(all_s)
    loops = agent["loops"]
    expected = float(next(iter(loops.values()))["expected_iterations"]) if loops else 1.0
    groups: list[tuple[str, float, list[float]]] = [(str(k), k, lat[k]) for k in sorted(lat)]
    groups += [
        (f"all (observed mix {mix:.2f})", mix, all_s),
        (f"all (planned {expected:g})", expected, all_s),
    ]
    rows = []
    for label, its, samples in groups:
        meas = statistics.median(samples)
        row: dict[str, Any] = {
            "iterations": label,
            "requests": len(samples),
            "served_p50_ms": meas * 1e3,
        }
        for tag, table in (("priors", per_task), ("calibrated", per_task_cal)):
            if table is None:
                continue
            pred = predicted_request_s(table, agent, its)
            row[f"predicted_{tag}_ms"] = pred * 1e3
            row[f"error_{tag}_pct"] = 100.0 * (pred - meas) / meas
        rows.append(row)
    cols = ["iterations", "requests", "served_p50_ms", "predicted_priors_ms", "error_priors_pct"]
    if per_task_cal is not None:
        cols += ["predicted_calibrated_ms", "error_calibrated_pct"]
    print_table(rows, cols, title=f"voice agent served on {dev_info['device']}: p50 vs cost model")
    print_table(
        stage_rows,
        ["stage", "kind", "device", "calls", "served_mean_ms", "predicted_priors_ms",
         "predicted_calibrated_ms"],
        title="per stage (gateway-observed mean incl. the gRPC hop vs one predicted execution)",
    )  # fmt: skip
    out = write_result(
        "agent_latency",
        rows,
        {
            "device": dev_info,
            "calibration": args.calibration,
            "calibrated_device": cal_info,
            "compile_s": compile_s,
            "stages": stage_rows,
            "predicted_task_s": per_task,
            "predicted_task_calibrated_s": per_task_cal,
            "requests": args.requests,
        },
    )
    print(f"wrote {out}")
    return 0


def _stage_rows(
    server: Any, plan: Any, per_task: dict[str, float], per_task_cal: dict[str, float] | None
) -> list[dict[str, Any]]:
    from terrazzo.runtime.agent_plan import runner_kind

    reg = server.metrics.registry
    rows = []
    for st in plan.stages:
        labels = {"model": plan.model_name, "stage": str(st.index), "device": st.device}
        n = reg.get_sample_value("terrazzo_stage_latency_seconds_count", labels) or 0.0
        total = reg.get_sample_value("terrazzo_stage_latency_seconds_sum", labels) or 0.0
        kind = runner_kind(st)
        out = st.outputs[0]
        node = out.split(".")[0].split("__it")[0]
        task = {"llm_prefill": f"{node}.prefill", "llm_decode": f"{node}.decode"}.get(kind, node)
        rows.append(
            {
                "stage": st.index,
                "kind": kind,
                "device": st.device,
                "calls": int(n),
                "served_mean_ms": 1e3 * total / n if n else float("nan"),
                "predicted_priors_ms": 1e3 * per_task.get(task, float("nan")),
                "predicted_calibrated_ms": 1e3 * (per_task_cal or {}).get(task, float("nan")),
            }
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
