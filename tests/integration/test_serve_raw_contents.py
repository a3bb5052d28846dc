"""Raw tensor contents end to end (terrazzo.runtime.kserve_wire): the stock client's tensors come
back byte for byte through a worker and through a stage run in the gateway, for every kind of
datatype, rank 0 and empty tensors, below and above the size where the gateway stops copying."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as tc

from terrazzo.runtime import RunnerSpec, ServingPlan, StageSpec, TensorSpec, serve
from terrazzo.runtime.kserve_wire import LEAN_MIN_BYTES

pytestmark = pytest.mark.integration
IDENTITY = "terrazzo.runtime.runners:identity"
SPECS = (  # name, v2 datatype, declared shape
    ("f", "FP32", (-1,)),
    ("h", "FP16", (-1, 2)),
    ("b", "BOOL", (-1,)),
    ("s", "BYTES", (-1,)),
    ("i", "INT64", ()),
    ("e", "UINT8", (-1, 3)),
)


def _plan() -> ServingPlan:
    names = [n for n, _, _ in SPECS]
    outs = [f"o{n}" for n in names]
    stage = StageSpec(
        0, "cpu", tuple(names), tuple(outs), RunnerSpec(IDENTITY, {"names": names, "outputs": outs})
    )
    return ServingPlan(
        "raw",
        tuple(TensorSpec(n, v2, shape) for n, v2, shape in SPECS),
        tuple(TensorSpec(f"o{n}", v2, shape) for n, v2, shape in SPECS),
        (stage,),
    )


def _arrays(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {
        "f": rng.standard_normal(n).astype(np.float32),
        "h": np.frombuffer(rng.bytes(4 * n), np.float16).reshape(n, 2),  # NaN payloads too
        "b": rng.integers(0, 2, n).astype(bool),
        "s": np.array([rng.bytes(k % 7) for k in range(n // 64 + 1)], dtype=object),
        "i": np.array(-(2**40), np.int64),
        "e": np.zeros((0, 3), np.uint8),
    }


@pytest.mark.parametrize("in_gateway", [False, True], ids=["worker", "in-gateway"])
def test_tensors_come_back_byte_for_byte(in_gateway: bool) -> None:
    with serve(_plan(), stage_in_gateway=in_gateway, max_message_bytes=16 << 20) as server:
        client = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
        for n in (8, LEAN_MIN_BYTES):  # protobuf's path, then the one without copies
            arrays = _arrays(n)
            inputs = []
            for name, v2, _ in SPECS:
                inp = tc.InferInput(name, list(arrays[name].shape), v2)
                inp.set_data_from_numpy(arrays[name])
                inputs.append(inp)
            result = client.infer("raw", inputs, request_id=f"r{n}")
            assert result.get_response().id == f"r{n}"
            for name, a in arrays.items():
                got = result.as_numpy(f"o{name}")
                assert got.shape == a.shape and got.dtype == a.dtype, name
                if a.dtype == object:
                    assert list(got.reshape(-1)) == list(a.reshape(-1))
                else:
                    assert got.tobytes() == a.tobytes(), name
        client.close()
