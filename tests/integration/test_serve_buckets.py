"""Serving a bucketed bundle with dynamic batching: the stage's bucket sizes reach its batcher.

Uses the tiny MLP of ``tests/unit/bundle/test_bucketed_bundle.py`` (symbolic batch 1..16,
buckets 1, 4, 8), served with the stage in the gateway process, stock ``tritonclient``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from terrazzo.runtime import BatchingOptions, ServingPlan, serve

pytestmark = [pytest.mark.integration]
ort = pytest.importorskip("onnxruntime")
tc = pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module")
def bucketed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from terrazzo.frontend import from_onnx
    from terrazzo.pipeline import compile_model
    from terrazzo.placement import SLA, Fleet, build_plan, to_problem
    from tests.unit.frontend.test_dynamic_shapes import _tiny

    d = tmp_path_factory.mktemp("served-buckets")
    path = _tiny(d / "tiny.onnx")
    fleet = Fleet.from_dict({"devices": {"cpu": {"count": 1}}})
    sla, shapes = SLA(latency_s=1.0), {"x": "1..16x16"}
    prob = to_problem(from_onnx(path, shapes=shapes), fleet, sla, 1.0)
    plan = build_plan(prob, np.zeros(len(prob.tasks), dtype=int), "all-cpu", 0.0)
    res = compile_model(path, fleet, sla, out_path=d / "t.tzb", plan=plan, shapes=shapes,
                        include_reference=False, batch_buckets="1,4,8")  # fmt: skip
    return path, Path(res.path)


def test_served_batcher_cuts_at_the_bundles_buckets(bucketed: tuple[Path, Path]) -> None:
    # the stage's bucket sizes reach its batcher: no batch above the largest bucket (8), and
    # merged results still equal onnxruntime
    onnx_path, bundle = bucketed
    plan = ServingPlan.from_bundle(bundle, allow_unsigned=True)
    xs = [np.random.default_rng(s).standard_normal((1, 16)).astype(np.float32) for s in range(24)]
    opts = BatchingOptions(max_batch_size=16)
    with serve(plan, 0, allow_unsigned=True, batching=opts, stage_in_gateway=True) as server:
        batcher = server.gateway.servicer.batcher
        assert batcher.buckets == (1, 4, 8) and batcher.limit == 8

        def one(x: np.ndarray) -> np.ndarray:
            c = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
            t = tc.InferInput("x", [1, 16], "FP32")
            t.set_data_from_numpy(x)
            out = c.infer(plan.model_name, [t]).as_numpy("out")
            c.close()
            return out

        with ThreadPoolExecutor(12) as ex:
            got = list(ex.map(one, xs))
        stats = batcher.stats.snapshot()
    sess = ort.InferenceSession(str(onnx_path))
    for x, y in zip(xs, got, strict=True):
        np.testing.assert_allclose(y, sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert stats["inference_count"] == len(xs)
    assert max(s["batch_size"] for s in stats["batch_stats"]) <= 8
