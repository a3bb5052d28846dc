"""The one TensorSpec (terrazzo.ir): every package gets the same class, JSON form unchanged."""

from __future__ import annotations

import json

import pytest

from terrazzo import bundle, ir, runtime
from terrazzo.errors import VerifyError
from terrazzo.frontend.agent_spec import parse_spec
from terrazzo.ir import TensorSpec


def test_every_package_exports_the_ir_class():
    from terrazzo.frontend import agent

    assert bundle.TensorSpec is runtime.TensorSpec is agent.TensorSpec is ir.TensorSpec


def test_v2_and_numpy_spellings_build_the_same_spec():
    a, b = TensorSpec("x", "FP32", [2, -1]), TensorSpec("x", "float32", (2, -1))
    assert a == b and a.dtype == "float32" and a.datatype == "FP32" and a.shape == (2, -1)
    assert TensorSpec("s", "BYTES", (3,)).datatype == "BYTES"
    assert a.accepts_shape((2, 7)) and not a.accepts_shape((3, 7))
    with pytest.raises(VerifyError, match="bfloat16"):
        _ = TensorSpec("h", "bfloat16", (1,)).datatype


def test_json_form_is_the_bundle_form():
    t = TensorSpec("x", "float32", (1, 4))
    assert json.dumps(t.to_json()) == '{"name": "x", "dtype": "float32", "shape": [1, 4]}'
    assert TensorSpec.from_json(t.to_json()) == t
    odd = TensorSpec.from_json({"name": "y", "dtype": "bfloat16", "shape": [2]})
    assert odd.to_json()["dtype"] == "bfloat16"  # kept as written


def _spec(tool: dict) -> dict:
    return {
        "name": "a",
        "nodes": [
            {"type": "input", "name": "q"},
            {"type": "tool", "name": "t", "function": "m:f", **tool},
            {"type": "output", "name": "o"},
        ],
        "edges": [{"from": "q", "to": "t"}, {"from": "t", "to": "o"}],
    }


def test_agent_yaml_tensor_fields_validate_into_the_ir_class():
    spec = parse_spec(_spec({"output": {"shape": [1, 8], "dtype": "float32"}}))
    out = spec.nodes[1].output
    assert out == TensorSpec("t", "float32", (1, 8))
    assert parse_spec(_spec({})).nodes[1].output == TensorSpec("t", "int32", (-1,))
