"""``stage_in_gateway``: a single-stage model served from the gateway process (no worker hop),
answering the stock client exactly as with a worker; multi-stage plans are refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from terrazzo.errors import ServingError
from terrazzo.runtime import BatchingOptions, RunnerSpec, ServingPlan, StageSpec, TensorSpec, serve

pytestmark = pytest.mark.integration
IDENTITY = "terrazzo.runtime.runners:identity"


def _plan(stages: int = 1) -> ServingPlan:
    names = ["x"] + [f"v{i}" for i in range(stages)]
    return ServingPlan(
        "ident",
        (TensorSpec("x", "FP32", (-1, 4)),),
        (TensorSpec(names[-1], "FP32", (-1, 4)),),
        tuple(
            StageSpec(
                i,
                "cpu",
                (names[i],),
                (names[i + 1],),
                RunnerSpec(IDENTITY, {"names": [names[i]], "outputs": [names[i + 1]]}),
            )
            for i in range(stages)
        ),
    )


def test_single_stage_runs_in_the_gateway_over_grpc_and_http() -> None:
    batching = BatchingOptions(max_batch_size=8, priority_levels=2)
    with serve(_plan(), stage_in_gateway=True, batching=batching, http_port=0) as server:
        assert server.workers() == []  # no worker process was started
        c = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        inp = tc.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(x)
        r = c.infer("ident", [inp], priority=1)
        np.testing.assert_array_equal(r.as_numpy("v0"), x)
        bad = tc.InferInput("x", [2, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((2, 3), np.float32))
        with pytest.raises(InferenceServerException) as e:
            c.infer("ident", [bad])
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        cfg = c.get_model_config("ident").config  # identity declares no signature: off, and why
        assert (
            cfg.max_batch_size == 0 and "proves no batch" in cfg.parameters["batching"].string_value
        )
        stats = c.get_inference_statistics("ident").model_stats[0]
        assert stats.inference_count == 1
        import tritonclient.http as th

        h = th.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        hin = th.InferInput("x", [2, 4], "FP32")
        hin.set_data_from_numpy(x)
        np.testing.assert_array_equal(h.infer("ident", [hin]).as_numpy("v0"), x)
        h.close()
        c.close()


def test_multi_stage_models_are_refused_in_one_line() -> None:
    with pytest.raises(ServingError, match="needs a single-stage model; 'ident' has 2 stages"):
        serve(_plan(2), stage_in_gateway=True)
