"""Served vs predicted end-to-end latency of the agent-program examples (RAG, ReAct, voice program).

Each example is compiled (host builds) and served by ``terrazzo serve``; the stock tritonclient
sends ``--requests`` requests one at a time and the served p50 is compared with the
prediction for the same requests.

The prediction is calibrated on this host, not taken from datasheets:

1. **per-node costs**: every served stage's runner is run in this process on the request's
   values right after the served request (interleaved, so both see the same machine load),
   median of ``--reps`` runs per stage and request —
   what each node costs here, including the branches and loop iterations that request took
   (a gated stage whose arm was not taken costs its skip);
2. **per-hop cost**: two calibration programs of two tools (one moving a few bytes, one moving
   256 KiB between its stages) are served the same way; their served p50 minus their
   in-process cost, per hop, gives the gateway's cost of a stage hop as ``a + b · bytes moved``
   (gRPC to the worker and back, tensor copies);
3. **critical path**: the prediction of a request is the longest path through the stage DAG
   (independent stages overlap, as the gateway runs them), each stage costing its measured
   time plus one hop.

Branch probabilities and loop iterations are therefore the measured ones (the spec's
``probabilities``/``expected_iterations`` are the planner's prior). Run:
``.venv/bin/python benchmarks/agent_programs_latency.py [--requests 12]``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples" / "agents"))

from benchmarks._common import print_table, write_result  # noqa: E402

EX = ROOT / "examples" / "agents"
FLEET = {"devices": {"cpu": {"count": 8}, "h100": {"count": 2}}, "pricing": {"mode": "cloud"}}
QUESTIONS = ["What is the capital of Freedonia?", "How high is Mount Orrin?",
             "What do quokkas eat?", "What is 2+2?", "population of Paris", "Who wrote Hamlet?"]  # fmt: skip
CALIBRATION = {
    "name": "hops",
    "nodes": [
        {"type": "input", "name": "question", "dtype": "string"},
        {"type": "tool", "name": "t1", "function": "react_tools.py:echo", "output": {"dtype": "string"}},
        {"type": "tool", "name": "t2", "function": "react_tools.py:echo", "output": {"dtype": "string"}},
        {"type": "output", "name": "answer"},
    ],
    "edges": ["question -> t1", "t1 -> t2", "t2 -> answer"],
}  # fmt: skip
# The same program moving 256 KiB between its stages: the per-byte part of a hop.
CALIBRATION_BYTES = {
    **CALIBRATION,
    "name": "hops_bytes",
    "nodes": [
        CALIBRATION["nodes"][0],
        {"type": "tool", "name": "t1", "function": "react_tools.py:blob", "output": {"dtype": "float32"}},
        {"type": "tool", "name": "t2", "function": "react_tools.py:echo", "output": {"dtype": "float32"}},
        CALIBRATION["nodes"][3],
    ],
}  # fmt: skip


def _nbytes(a: np.ndarray) -> int:
    a = np.asarray(a)
    return sum(len(x) for x in a.reshape(-1)) if a.dtype == object else int(a.nbytes)


def _inputs(example: str, i: int) -> dict[str, np.ndarray]:
    if example == "voice_program":
        return {"audio": np.random.default_rng(i).standard_normal((1, 1600)).astype(np.float32)}
    return {"question": np.array([QUESTIONS[i % len(QUESTIONS)].encode()], dtype=object)}


def _serve(bundle: Path) -> tuple[subprocess.Popen, int, str]:
    cmd = [sys.executable, "-m", "terrazzo.cli", "serve", str(bundle), "--port", "0",
           "--metrics-port", "0", "--timeout", "60"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    while not (lines and lines[-1].startswith("ready")):
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(proc.stderr.read()[-2000:])  # type: ignore[union-attr]
        lines.append(line)
    text = "".join(lines)
    port = int(re.search(r"on 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
    return proc, port, re.search(r"serving model '([^']+)'", text).group(1)  # type: ignore[union-attr]


def _client_call(port: int, model: str, plan: Any, example: str) -> Any:
    """A function that sends request ``i`` with the stock tritonclient and returns its latency."""
    import tritonclient.grpc as tc

    from terrazzo.runtime.tensors import v2_datatype

    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    outs = [tc.InferRequestedOutput(o.name) for o in plan.outputs[:1]]

    def call(i: int) -> float:
        ins = []
        for name, arr in _inputs(example, i).items():
            dt = "BYTES" if arr.dtype == object else v2_datatype(arr.dtype)
            x = tc.InferInput(name, list(arr.shape), dt)
            x.set_data_from_numpy(arr)
            ins.append(x)
        t0 = time.perf_counter()
        client.infer(model, ins, outputs=outs, client_timeout=60)
        return time.perf_counter() - t0

    return call


def _stage_costs(agent: Any, example: str, i: int, reps: int) -> tuple[list[float], list[int]]:
    """Request ``i``: median in-process time of every stage's runner on its values, and the bytes each moves."""
    env = dict(_inputs(example, i))
    costs, nbytes = [], []
    for st, runner in zip(agent.plan.stages, agent.runners, strict=True):
        feed = {v: env[v] for v in st.inputs}
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            res = runner(feed)
            ts.append(time.perf_counter() - t0)
        env.update(res)
        costs.append(statistics.median(ts))
        nbytes.append(
            sum(_nbytes(v) for v in feed.values()) + sum(_nbytes(v) for v in res.values())
        )
    return costs, nbytes


def _critical_path_s(
    plan: Any, costs: list[float], nbytes: list[int], hop_s: float, byte_s: float
) -> float:
    produced = {v: k for k, st in enumerate(plan.stages) for v in st.outputs}
    finish: list[float] = []
    for k, st in enumerate(plan.stages):  # stages are in a topological order
        start = max((finish[produced[v]] for v in st.inputs if v in produced), default=0.0)
        finish.append(start + costs[k] + hop_s + byte_s * nbytes[k])  # noqa: E501
    return max(finish)


def _compile(spec: Path, out: Path) -> Any:
    from terrazzo.pipeline import compile_agent
    from terrazzo.placement import Fleet

    return compile_agent(spec, Fleet.model_validate(FLEET), "5s", out, device_builds=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--name", default="agent_programs_latency")
    args = ap.parse_args()

    import react_server

    from terrazzo.runtime.agent_plan import LocalAgent, agent_serving_plan

    srv = react_server.start(0)
    os.environ["LOOKUP_URL"] = f"http://127.0.0.1:{srv.server_port}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cal_spec, cal_bytes = Path(tmp) / "hops.yaml", Path(tmp) / "hops_bytes.yaml"
        cal_spec.write_text(yaml.safe_dump(CALIBRATION))
        cal_bytes.write_text(yaml.safe_dump(CALIBRATION_BYTES))
        (Path(tmp) / "react_tools.py").write_text((EX / "react_tools.py").read_text())
        hop_s, byte_s, cal = 0.0, 0.0, {}
        for example, spec in [("calibration", cal_spec), ("calibration_bytes", cal_bytes),
                              ("rag_agent", EX / "rag_agent.yaml"),
                              ("react_agent", EX / "react_agent.yaml"),
                              ("voice_program", EX / "voice_program.yaml")]:  # fmt: skip
            res = _compile(spec, Path(tmp) / f"{example}.tzb")
            plan = agent_serving_plan(res.path)
            kind = "rag_agent" if example.startswith("calibration") else example
            agent = LocalAgent(plan)
            proc, port, model = _serve(res.path)
            served, costs, moved = [], [], []
            try:
                call = _client_call(port, model, plan, kind)
                for i in range(-2, args.requests):  # interleaved: both sides see the same load
                    t = call(max(i, 0))
                    c, m = _stage_costs(agent, kind, max(i, 0), args.reps)
                    if i >= 0:
                        served.append(t)
                        costs.append(c)
                        moved.append(m)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
            p50 = statistics.median(served)
            if example.startswith("calibration"):  # two points: hop_s + byte_s * bytes
                work = statistics.median(sum(c) for c in costs)
                cal[example] = ((p50 - work) / len(plan.stages), statistics.median(
                    sum(m) / len(plan.stages) for m in moved))  # fmt: skip
                if len(cal) == 2:
                    (o1, b1), (o2, b2) = cal["calibration"], cal["calibration_bytes"]
                    byte_s = max(0.0, (o2 - o1) / max(b2 - b1, 1))
                    hop_s = max(0.0, o1 - byte_s * b1)
                    print(f"calibration: {hop_s * 1e3:.2f} ms per hop + "
                          f"{byte_s * 1e9:.2f} ms per MB moved")  # fmt: skip
                continue
            pred = statistics.median(
                _critical_path_s(plan, c, m, hop_s, byte_s)
                for c, m in zip(costs, moved, strict=True)
            )
            rows.append({"example": example, "stages": len(plan.stages),
                         "served_p50_ms": p50 * 1e3, "predicted_ms": pred * 1e3,
                         "error_pct": 100 * (pred - p50) / p50})  # fmt: skip
    srv.shutdown()
    print_table(rows, list(rows[0]), title=f"served vs predicted, load {os.getloadavg()[0]:.1f}")
    worst = max(abs(r["error_pct"]) for r in rows)
    print(f"worst |error| {worst:.1f}% (target <= 20%); per-hop cost {hop_s * 1e3:.2f} ms")
    path = write_result(args.name, rows, {"hop_ms": hop_s * 1e3, "ms_per_mb": byte_s * 1e9,
                        "requests": args.requests,
                        "load_avg": os.getloadavg()})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
