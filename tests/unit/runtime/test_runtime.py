"""Unit tests of the runtime's pieces that need no server: tensor codec, plans, vendored protos."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terrazzo.errors import ServingError
from terrazzo.runtime import RunnerSpec, ServingPlan, StageSpec, TensorSpec, devclass_resource
from terrazzo.runtime.protos import grpc_service_pb2 as pb
from terrazzo.runtime.tensors import TensorError, decode_inputs, from_numpy, to_numpy

R = RunnerSpec("terrazzo.runtime.runners:relax_library")


def _fields(desc, prefix=""):
    out = {}
    for f in desc.fields:
        out[f"{prefix}{desc.name}.{f.name}"] = (f.number, f.type)
    for n in desc.nested_types:
        out.update(_fields(n, f"{prefix}{desc.name}."))
    return out


def test_vendored_proto_matches_tritonclient_field_numbers():
    from tritonclient.grpc import service_pb2 as ref

    for name, desc in pb.DESCRIPTOR.message_types_by_name.items():
        ours, theirs = _fields(desc), _fields(ref.DESCRIPTOR.message_types_by_name[name])
        assert {k: theirs.get(k) for k in ours} == ours, name
    service = "GRPCInferenceService"  # the whole of Triton's service (issue 15)
    assert [m.name for m in pb.DESCRIPTOR.services_by_name[service].methods] == [
        m.name for m in ref.DESCRIPTOR.services_by_name[service].methods
    ]


def _request(name="x", datatype="FP32", shape=(2, 3), raw=None):
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name=name, datatype=datatype, shape=list(shape))
    if raw is not None:
        req.raw_input_contents.append(raw)
    return req


SPECS = {"x": TensorSpec("x", "FP32", (-1, 3))}


def test_decode_raw_and_typed_agree():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = decode_inputs(_request(raw=x.tobytes()), SPECS, "m")["x"]
    typed_req = _request()
    typed_req.inputs[0].contents.fp32_contents.extend(x.reshape(-1).tolist())
    typed = decode_inputs(typed_req, SPECS, "m")["x"]
    assert raw == typed
    np.testing.assert_array_equal(to_numpy("x", raw), x)


@pytest.mark.parametrize(
    ("req", "needle"),
    [
        (_request(datatype="INT32", raw=b"\0" * 24), "must be FP32"),
        (_request(shape=(2, 4), raw=b"\0" * 32), "must have shape [-1, 3]"),
        (_request(shape=(2, 3), raw=b"\0" * 20), "expected 24 bytes"),
        (_request(name="y", raw=b"\0" * 24), "no input named 'y'"),
        (_request(), "no data"),
    ],
)
def test_decode_rejects_bad_tensors_naming_them(req, needle):
    with pytest.raises(TensorError) as e:
        decode_inputs(req, SPECS, "m")
    assert needle in str(e.value)


def test_decode_missing_input():
    with pytest.raises(TensorError, match=r"missing inputs \['w'\]"):
        decode_inputs(_request(raw=b"\0" * 24), {**SPECS, "w": TensorSpec("w", "FP32", (1,))}, "m")


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(
        ["bool", "uint8", "int16", "int32", "int64", "uint64", "float16", "float32", "float64"]
    ),
    st.lists(st.integers(0, 3), min_size=0, max_size=3),
)
def test_numpy_wire_round_trip(dtype, shape):
    x = (np.arange(int(np.prod(shape)) if shape else 1) % 3).astype(dtype).reshape(shape)
    wire = from_numpy(x)
    back = to_numpy("x", wire)
    assert back.dtype == x.dtype and back.shape == x.shape and np.array_equal(back, x)


def test_bytes_round_trip_and_truncation():
    x = np.array([b"", b"abc", "h\u00e9".encode()], dtype=object)
    wire = from_numpy(x)
    assert list(to_numpy("s", wire)) == list(x)
    req = _request(name="s", datatype="BYTES", shape=(3,), raw=wire.raw[:-1])
    with pytest.raises(TensorError, match="overruns"):
        decode_inputs(req, {"s": TensorSpec("s", "BYTES", (3,))}, "m")


def _plan(stages, outputs=("z",)):
    return ServingPlan(
        "m",
        (TensorSpec("x", "FP32", (4,)),),
        tuple(TensorSpec(o, "FP32", (4,)) for o in outputs),
        tuple(stages),
    )


def test_plan_verify_accepts_dag_and_rejects_broken_ones():
    _plan(
        [
            StageSpec(0, "cpu", ("x",), ("a",), R),
            StageSpec(1, "t4", ("x",), ("b",), R),
            StageSpec(2, "cpu", ("a", "b"), ("z",), R),
        ]
    ).verify()
    with pytest.raises(ServingError, match="stage 0 reads 'a'"):
        _plan([StageSpec(0, "cpu", ("a",), ("z",), R)]).verify()
    with pytest.raises(ServingError, match="produced twice"):
        _plan(
            [StageSpec(0, "cpu", ("x",), ("z",), R), StageSpec(1, "cpu", ("x",), ("z",), R)]
        ).verify()
    with pytest.raises(ServingError, match="output 'q'"):
        _plan([StageSpec(0, "cpu", ("x",), ("z",), R)], outputs=("q",)).verify()
    with pytest.raises(ServingError, match="replicas"):
        _plan([StageSpec(0, "cpu", ("x",), ("z",), R)]).with_replicas(0)


def test_devclass_resource_names():
    assert devclass_resource("T4") == "devclass_t4"
    assert devclass_resource("MI300X-OAM") == "devclass_mi300x_oam"
    assert StageSpec(0, "A100 80GB", (), (), R).resource_name == "devclass_a100_80gb"


def test_runner_factory_errors():
    from terrazzo.runtime.runners import build_runner

    with pytest.raises(ServingError, match="package.module:function"):
        build_runner("nocolon", {})
    with pytest.raises(ServingError, match="cannot import"):
        build_runner("terrazzo.runtime.runners:nope", {})


@pytest.mark.parametrize(
    ("factory", "blocked"),
    [
        ("terrazzo.runtime.runners:bundle_stage", True),
        ("terrazzo.runtime.agent_runners:tool", False),
    ],
)
def test_block_heavy_imports_only_for_builtin_runners(factory, blocked):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from terrazzo.runtime.worker import block_heavy_imports\n"
        f"names = block_heavy_imports({factory!r})\n"
        "try:\n"
        "    import onnx  # noqa\n"
        "    ok = True\n"
        "except ImportError:\n"
        "    ok = False\n"
        "print(sorted(names), ok)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    names, importable = out.stdout.rsplit(" ", 1)
    if blocked:
        assert "'torch'" in names and "'onnx'" in names and importable.strip() == "False"
    else:
        assert names == "[]" and importable.strip() == "True"


def test_runtime_facade_is_lazy():
    import subprocess
    import sys

    code = (
        "import sys, terrazzo.runtime.worker\n"
        "print('terrazzo.runtime.server' in sys.modules, 'prometheus_client' in sys.modules)\n"
        "from terrazzo.runtime import serve\n"
        "print(callable(serve))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["False", "False", "True"]


def test_identity_runner():
    from terrazzo.runtime.runners import identity

    x = np.arange(3, dtype=np.float32)
    assert identity(["x"], ["y"])({"x": x})["y"] is x
    with pytest.raises(ServingError, match="maps 2 inputs to 1 outputs"):
        identity(["a", "b"], ["c"])
