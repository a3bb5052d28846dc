"""ONNX coverage fixes (frontend/onnx_fold.py, onnx_ops.py) against onnxruntime, with
infinite, NaN and empty inputs: shape folding, ReduceMax/ReduceMin's empty and infinite
rows, CumSum with a run-time axis, Resize refusals, the specialisation hint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from terrazzo.errors import FrontendError  # noqa: E402
from terrazzo.frontend import build_cpu, from_onnx  # noqa: E402
from terrazzo.frontend.onnx_fold import fold_constants, shape_only_inputs  # noqa: E402


def _save(  # type: ignore[no-untyped-def]
    path: Path,
    nodes: list[Any],
    ins: list[Any],
    outs: list[str],
    inits=(),
    opset=18,
    out_type=TensorProto.FLOAT,
) -> Path:
    g = helper.make_graph(
        nodes,
        "g",
        ins,
        [helper.make_tensor_value_info(o, out_type, None) for o in outs],
        list(inits),
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return path


def _vi(name: str, shape: list[Any], dt: int = TensorProto.FLOAT) -> Any:
    return helper.make_tensor_value_info(name, dt, shape)


def _vs_ort(path: Path, feeds: dict[str, np.ndarray], **kw: Any) -> list[np.ndarray]:
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    const = kw.get("constant_inputs") or {}
    rest = {k: v for k, v in feeds.items() if k not in const}
    graph = from_onnx(path, shapes={k: v.shape for k, v in rest.items()}, **kw)
    got = list(build_cpu(graph)(rest).values())
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, equal_nan=True)
    return got


@pytest.mark.parametrize("op,sign", [("ReduceMax", -1), ("ReduceMin", 1)])
def test_reduce_extreme_infinite_and_empty_rows_match_onnxruntime(
    tmp_path: Path, op: str, sign: int
) -> None:
    # before the fix: a row of -inf (max) came back as -3.4e38 and an empty row as 0
    x = np.array([[sign * np.inf, sign * np.inf], [-sign * np.inf, 2.0], [np.inf, -np.inf]], "f4")
    p = _save(tmp_path / "r.onnx", [helper.make_node(op, ["x", "axes"], ["y"], keepdims=0)],
              [_vi("x", [3, 2])], ["y"], [numpy_helper.from_array(np.array([1]), "axes")])  # fmt: skip
    got = _vs_ort(p, {"x": x})
    assert got[0][0] == sign * np.inf
    empty = _save(tmp_path / "e.onnx", [helper.make_node(op, ["x", "axes"], ["y"], keepdims=1)],
                  [_vi("x", [2, 0, 3])], ["y"], [numpy_helper.from_array(np.array([1]), "axes")])  # fmt: skip
    got = _vs_ort(empty, {"x": np.zeros((2, 0, 3), "f4")})
    assert got[0].shape == (2, 1, 3) and np.all(got[0] == sign * np.inf)


def test_shape_chain_folds_to_constants_and_matches_onnxruntime(tmp_path: Path) -> None:
    # Shape → Gather → Range/ConstantOfShape/Concat → Expand/Reshape: static once x is
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "two"], ["n"], axis=0),
        helper.make_node("Range", ["zero", "n", "one"], ["r"]),
        helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
        helper.make_node("Expand", ["rf", "s"], ["e"]),
        helper.make_node("Add", ["x", "e"], ["y"]),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Concat", ["minus1", "n1"], ["shp"], axis=0),
        helper.make_node("Reshape", ["y", "shp"], ["z"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(2, np.int64), "two"),
        numpy_helper.from_array(np.array([0], np.int64), "zero1"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
    ]
    p = _save(tmp_path / "f.onnx", nodes, [_vi("x", [2, 3, 4])], ["z"], inits)
    m = onnx.load(str(p))
    assert fold_constants(m, {"x": [2, 3, 4]}) == 7
    assert [n.op_type for n in m.graph.node if n.op_type != "Constant"] == ["Add", "Reshape"]
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype("f4")
    x[0, 0, 0], x[1, 2, 3] = np.nan, -np.inf
    _vs_ort(p, {"x": x})


def test_shape_input_is_refused_with_the_specialisation_hint_then_specialised(
    tmp_path: Path,
) -> None:
    p = _save(tmp_path / "s.onnx", [helper.make_node("Reshape", ["x", "shape"], ["y"])],
              [_vi("x", [2, 6]), _vi("shape", [2], TensorProto.INT64)], ["y"])  # fmt: skip
    assert shape_only_inputs(onnx.load(str(p))) == {"shape": ["Reshape"]}
    with pytest.raises(FrontendError, match=r"'shape' \(Reshape\).*constant_inputs"):
        from_onnx(p, shapes={"x": (2, 6), "shape": (2,)})
    shape = np.array([3, 4], np.int64)
    got = _vs_ort(p, {"x": np.arange(12, dtype="f4").reshape(2, 6), "shape": shape},
                  constant_inputs={"shape": shape})  # fmt: skip
    assert got[0].shape == (3, 4)


@pytest.mark.parametrize("op", ["CumSum", "CumProd"])
def test_cumulative_with_run_time_axis_matches_onnxruntime(tmp_path: Path, op: str) -> None:
    opset = 26 if op == "CumProd" else 18
    p = _save(tmp_path / "c.onnx", [helper.make_node(op, ["x", "axis"], ["y"], reverse=1)],
              [_vi("x", [2, 3]), _vi("axis", [], TensorProto.INT64)], ["y"], opset=opset)  # fmt: skip
    x = np.array([[1.0, np.nan, 2.0], [np.inf, 3.0, -1.0]], "f4")
    if op == "CumProd":  # onnxruntime 1.31 lacks opset 26: numpy is the reference
        graph = from_onnx(p, shapes={"x": (2, 3), "axis": ()})
        fn = build_cpu(graph)
        for a in (0, 1, -1):
            got = fn({"x": x, "axis": np.array(a, np.int64)})["y"]
            want = np.flip(np.cumprod(np.flip(x, a), axis=a), a)
            np.testing.assert_allclose(got, want, equal_nan=True)
        return
    for a in (0, 1, -1):
        _vs_ort(p, {"x": x, "axis": np.array(a, np.int64)})


@pytest.mark.parametrize(
    "attrs,scales,match",
    [
        ({"mode": "linear"}, [1.0, 1.0, 0.6, 0.6], "scale 0.6"),
        ({"mode": "linear", "antialias": 1}, [1.0, 1.0, 0.5, 0.5], "antialias"),
        ({"mode": "nearest"}, [1.0, 2.0, 2.0, 2.0], "batch/channel"),
    ],
)
def test_resize_options_tvm_would_ignore_are_refused(
    tmp_path: Path, attrs: dict[str, Any], scales: list[float], match: str
) -> None:
    p = _save(tmp_path / "z.onnx", [helper.make_node("Resize", ["x", "", "sc"], ["y"], **attrs)],
              [_vi("x", [1, 1, 5, 5])], ["y"],
              [numpy_helper.from_array(np.array(scales, "f4"), "sc")])  # fmt: skip
    with pytest.raises(FrontendError, match=match):
        from_onnx(p)


def test_dynamic_batch_build_checks_the_declared_range(tmp_path: Path) -> None:
    p = _save(tmp_path / "d.onnx", [helper.make_node("Relu", ["x"], ["y"])],
              [_vi("x", ["batch", 4])], ["y"])  # fmt: skip
    fn = build_cpu(from_onnx(p, shapes={"x": ((1, 8), 4)}))
    for b in (1, 3, 8):
        x = np.linspace(-1, 1, 4 * b, dtype="f4").reshape(b, 4)
        np.testing.assert_array_equal(fn({"x": x})["y"], np.maximum(x, 0))
    with pytest.raises(FrontendError, match=r"batch=1\.\.8"):
        fn({"x": np.zeros((9, 4), "f4")})


def test_lp_normalization_pow_mixed_types_and_resize_axes_match_onnxruntime(
    tmp_path: Path,
) -> None:
    x = np.array([[3.0, -4.0, np.inf], [0.5, np.nan, 1.0], [0.0, 0.0, 0.0]], "f4")
    lp = _save(tmp_path / "lp.onnx", [helper.make_node("LpNormalization", ["x"], ["y"], p=1)],
               [_vi("x", [3, 3])], ["y"], opset=17)  # fmt: skip
    _vs_ort(lp, {"x": x})
    pw = _save(tmp_path / "pw.onnx", [helper.make_node("Pow", ["x", "e"], ["y"])],
               [_vi("x", [3, 3]), _vi("e", [3], TensorProto.INT64)], ["y"])  # fmt: skip
    _vs_ort(pw, {"x": x, "e": np.array([2, 3, -1], np.int64)})
    rz = _save(tmp_path / "rz.onnx",
               [helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest", axes=[3, 2])],
               [_vi("x", [1, 2, 2, 3])], ["y"],
               [numpy_helper.from_array(np.array([2.0, 3.0], "f4"), "sc")], opset=19)  # fmt: skip
    got = _vs_ort(rz, {"x": np.arange(12, dtype="f4").reshape(1, 2, 2, 3)})
    assert got[0].shape == (1, 2, 6, 6)
