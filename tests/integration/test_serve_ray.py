"""Serving on a local Ray cluster that declares fake device-class resources (one cluster per session)."""

from __future__ import annotations

import re
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

from terrazzo.errors import ServingError
from terrazzo.runtime import serve
from terrazzo.runtime.protos import grpc_service_pb2 as pb
from terrazzo.runtime.protos import grpc_service_pb2_grpc as pb_grpc
from tests.integration.serving_helpers import _infer, chain_plan

pytestmark = pytest.mark.integration


def _fresh_ray():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # these run before the session cluster below starts
        pytest.skip("this process already holds a Ray connection")
    return ray


def test_bad_address_and_auto_fail_fast_in_one_line(libs):
    ray = _fresh_ray()
    for address, needle in (
        ("127.0.0.1:1", "cannot connect to Ray cluster at '127.0.0.1:1'"),
        ("auto", "--ray auto would attach"),
        ("nonsense", "expected HOST:PORT"),
    ):
        t0 = time.monotonic()
        with pytest.raises(ServingError, match=re.escape(needle)) as e:
            serve(chain_plan(libs), ray_address=address)
        assert time.monotonic() - t0 < 10 and "\n" not in str(e.value)
    assert not ray.is_initialized()


def test_ray_local_starts_a_cluster_with_real_resources_and_stops_it(libs):
    ray = _fresh_ray()
    with serve(chain_plan(libs), ray_address="local") as server:
        total = ray.cluster_resources()
        assert total["devclass_cpu"] == 1 and total["devclass_t4"] == 1
        left = ray.available_resources()
        # each actor holds a real CPU and memory besides its device-class unit
        assert total["CPU"] - left.get("CPU", 0) == 2
        assert total["memory"] - left.get("memory", 0) >= 2 * (256 << 20)
        assert left.get("devclass_cpu", 0) == 0
        c = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
        x = np.arange(4, dtype=np.float32)
        np.testing.assert_array_equal(_infer(c, x).as_numpy("z"), 2 * x + 1)
        c.close()
    assert not ray.is_initialized()  # the cluster it started is gone


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        resources={"devclass_cpu": 4, "devclass_t4": 2},
        include_dashboard=False,
        object_store_memory=100 << 20,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


def test_serve_through_ray_actors(ray_cluster, libs):
    with serve(chain_plan(libs), ray_address="auto") as server:
        assert all(r["where"].startswith("ray actor") for r in server.workers())
        assert {r["where"] for r in server.workers()} == {
            "ray actor (devclass_cpu)",
            "ray actor (devclass_t4)",
        }
        c = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
        x = np.arange(6, dtype=np.float32)
        np.testing.assert_array_equal(_infer(c, x).as_numpy("z"), 2 * x + 1)
        c.close()
        # the gateway -> actor hop is mTLS: no token is sent, plaintext gets no answer
        assert server._worker_opts.token == ""  # noqa: SLF001
        for row in server.workers():
            assert row["handle"].cert and b"BEGIN CERTIFICATE" in row["handle"].cert
            ch = grpc.insecure_channel(row["address"])
            req = pb.ModelInferRequest(model_name=f"stage{row['stage']}")
            req.inputs.add(name="x", datatype="FP32", shape=[1])
            req.raw_input_contents.append(np.ones(1, np.float32).tobytes())
            with pytest.raises(grpc.RpcError) as e:
                pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=3)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            ch.close()


def test_missing_device_class_fails_fast(ray_cluster, libs):
    from dataclasses import replace

    plan = chain_plan(libs)
    plan = replace(plan, stages=(plan.stages[0], replace(plan.stages[1], device="H100")))
    t0 = time.monotonic()
    with pytest.raises(ServingError, match="devclass_h100"):
        serve(plan, ray_address="auto")
    assert time.monotonic() - t0 < 5
