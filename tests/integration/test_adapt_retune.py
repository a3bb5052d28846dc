"""Re-tune while serving: a served Relax stage is tuned in a low-priority child, verified
against the current build, recorded in the tuning database, and hot-swapped, with every
request answered correctly throughout."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tritonclient.grpc as tc

from terrazzo.runtime import RunnerSpec, ServingPlan, StageSpec, TensorSpec
from terrazzo.runtime.adapt import AdaptPlan, Profile, StagePlan, TaskModel, parse_policy
from terrazzo.runtime.adapt.runtime import AdaptRuntime
from terrazzo.runtime.server import serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]
N = 64
RELAX = "terrazzo.runtime.runners:relax_library"


def _module():
    from tvm.script import ir as I
    from tvm.script import relax as R

    @I.ir_module
    class Dense:
        @R.function
        def main(x: R.Tensor((N, N), "float32"), w: R.Tensor((N, N), "float32")):
            return R.nn.relu(R.matmul(x, w))

    return Dense


def test_retune_verifies_records_and_swaps_without_failed_requests(tmp_path):
    from terrazzo.codegen import compile_module

    target = {"kind": "llvm"}
    mod = _module()
    first = tmp_path / "dense_v1.so"
    compile_module(mod, target).export_library(str(first))

    import tvm

    ir = tmp_path / "dense.json"
    ir.write_text(tvm.ir.save_json(mod))

    def runner(path: str) -> RunnerSpec:
        return RunnerSpec(RELAX, {"path": path, "inputs": ["x", "w"], "outputs": ["y"]})

    plan = ServingPlan(
        "dense",
        (TensorSpec("x", "FP32", (N, N)), TensorSpec("w", "FP32", (N, N))),
        (TensorSpec("y", "FP32", (N, N)),),
        (StageSpec(0, "cpu", ("x", "w"), ("y",), runner(str(first))),),
    )
    model = TaskModel(
        ("dense",), {"dense": ("x", "w")}, {"dense": ("y",)}, lambda t, d: runner(str(first))
    )
    policy = parse_policy(
        {"sla_p99_s": 1.0, "fleet": {"cpu": {"usd_per_hour": 0.1}}, "mode": "off",
         "decision_log": str(tmp_path / "log.jsonl")}
    )  # fmt: skip
    start = AdaptPlan((StagePlan(("dense",), "cpu", 1),), 0.1, 0.001, 1.0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, N)).astype(np.float32)
    w = rng.standard_normal((N, N)).astype(np.float32)
    expect = np.maximum(x @ w, 0)
    results: list[str] = []
    stop = threading.Event()
    with serve(plan) as server:
        rt = AdaptRuntime(server, policy, model, Profile({"dense": {"cpu": 1e-3}}), start)
        rt.sources["dense"] = {
            "ir": str(ir),
            "inputs": [("x", (N, N), "float32"), ("w", (N, N), "float32")],
        }
        client = tc.InferenceServerClient(f"127.0.0.1:{server.port}")

        def traffic() -> None:
            while not stop.is_set():
                ins = [tc.InferInput("x", [N, N], "FP32"), tc.InferInput("w", [N, N], "FP32")]
                ins[0].set_data_from_numpy(x)
                ins[1].set_data_from_numpy(w)
                try:
                    y = client.infer("dense", ins).as_numpy("y")
                    results.append(
                        "ok" if np.allclose(y, expect, rtol=1e-4, atol=1e-3) else "wrong"
                    )
                except Exception as e:  # counted, asserted below
                    results.append(f"failed: {e}")

        th = threading.Thread(target=traffic)
        th.start()
        try:
            while len(results) < 5:  # measured traffic first: the hottest stage is chosen by it
                stop.wait(0.05)
            db = tmp_path / "records.jsonl"
            served_before = len(results)
            entry = rt.retune_hottest(
                str(db), str(tmp_path), trials=4, max_kernels=1, min_speedup=0.0
            )
            assert entry is not None, rt.retunes
            res = rt.retunes[0]
            assert res["kernels_tuned"] >= 1
            assert res["library"] is not None and db.exists()  # kept (min_speedup 0): saved
            # only kernels that beat their default schedule get a record
            assert len(db.read_text().splitlines()) == res["records_added"]
            n = len(results)
            while len(results) < n + 20:
                stop.wait(0.05)
        finally:
            stop.set()
            th.join()
            rt.stop()
        assert server.pools[0].stage.runner.kwargs["path"] == res["library"]
    assert entry["reason"] == "retune"
    assert served_before > 0
    assert set(results) == {"ok"}, [r for r in results if r != "ok"][:3]
    assert (tmp_path / "log.jsonl").read_text().count('"reason": "retune"') == 1
    assert rt.retunes and rt.retunes[0]["verified"] is True
