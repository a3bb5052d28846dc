"""Guard inputs (frontend/onnx_guards.py): inputs that give shapes, axes, sizes, pads or scales
stay inputs; each call runs the build specialised on their value, checked against
onnxruntime, including a value change between calls that changes the output shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from terrazzo.errors import FrontendError  # noqa: E402
from terrazzo.frontend import GuardedGraph, GuardedRunner, build_cpu, from_onnx  # noqa: E402
from terrazzo.frontend.onnx_guards import shape_valued_inputs  # noqa: E402


def _save(path: Path, nodes: list[Any], ins: list[Any], outs: list[str], opset: int = 18) -> Path:
    g = helper.make_graph(
        nodes, "g", ins, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs]
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return path


def _vi(name: str, shape: list[Any], dt: int = TensorProto.FLOAT) -> Any:
    return helper.make_tensor_value_info(name, dt, shape)


def _check(path: Path, run: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = list(run(feeds).values())
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, equal_nan=True)
    return got[0]


def test_reduce_axes_input_is_a_guard_and_a_value_change_gives_another_shape(
    tmp_path: Path,
) -> None:
    p = _save(tmp_path / "r.onnx", [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
              [_vi("x", [2, 3, 4]), _vi("axes", [1], TensorProto.INT64)], ["y"])  # fmt: skip
    with pytest.raises(FrontendError, match="constant_inputs"):  # without guards: refused
        from_onnx(p)
    g = from_onnx(p, guards=True)
    assert isinstance(g, GuardedGraph)
    assert g.inputs == ("x", "axes") and g.guard_names == ("axes",)
    run = build_cpu(g)
    assert isinstance(run, GuardedRunner)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype("f4")
    x[1, 2, 3] = np.nan
    a0 = _check(p, run, {"x": x, "axes": np.array([0], np.int64)})
    a2 = _check(p, run, {"x": x, "axes": np.array([2], np.int64)})
    assert a0.shape == (3, 4) and a2.shape == (2, 3) and run.built == 2
    again = _check(p, run, {"x": x * 2, "axes": np.array([0], np.int64)})
    assert run.built == 2  # the axes=[0] build is reused, with the new data
    np.testing.assert_allclose(again, a0 * 2, rtol=1e-6, equal_nan=True)
    assert _check(p, run, {"x": x, "axes": np.array([-1], np.int64)}).shape == (2, 3)
    assert run.built == 3  # -1 and 2 name the same axis but are different values: no reuse


def test_reshape_target_guard_cache_is_bounded_and_never_reuses_another_value(
    tmp_path: Path,
) -> None:
    p = _save(tmp_path / "s.onnx",
              [helper.make_node("Reshape", ["x", "shape"], ["t"]),
               helper.make_node("Relu", ["t"], ["y"])],
              [_vi("x", [2, 6]), _vi("shape", [2], TensorProto.INT64)], ["y"])  # fmt: skip
    assert shape_valued_inputs(onnx.load(str(p))) == {"shape": ["Reshape"]}
    g = from_onnx(p, shapes={"x": (2, 6)}, guards=True)
    assert isinstance(g, GuardedGraph)
    run = GuardedRunner(g, cache_size=2)
    x = np.arange(-6, 6, dtype="f4").reshape(2, 6)
    shapes = [(3, 4), (4, 3), (12, 1), (3, 4)]
    for s in shapes:
        got = _check(p, run, {"x": x, "shape": np.array(s, np.int64)})
        assert got.shape == s
    # (3, 4) was dropped when (12, 1) came in (two builds kept), so it was built again
    assert run.built == 4 and len(run.builds) == 2
    assert run.builds == ["shape=[12, 1]", "shape=[3, 4]"]
    # a value the data cannot take is one line naming it, not a stale build
    with pytest.raises(FrontendError, match=r"shape=\[5, 5\]"):
        run({"x": x, "shape": np.array([5, 5], np.int64)})


def test_guard_values_are_checked_and_float_scales_guard_too(tmp_path: Path) -> None:
    p = _save(tmp_path / "u.onnx",
              [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")],
              [_vi("x", [1, 1, 2, 2]), _vi("scales", [4])], ["y"])  # fmt: skip
    g = from_onnx(p, guards=True)
    assert isinstance(g, GuardedGraph) and g.guard_names == ("scales",)
    run = build_cpu(g)
    x = np.array([[[[1, 2], [3, 4]]]], "f4")
    assert _check(p, run, {"x": x, "scales": np.array([1, 1, 2, 3], "f4")}).shape == (1, 1, 4, 6)
    assert _check(p, run, {"x": x, "scales": np.array([1, 1, 1, 2], "f4")}).shape == (1, 1, 2, 4)
    with pytest.raises(FrontendError, match="missing guard input 'scales'"):
        run({"x": x})
    with pytest.raises(FrontendError, match=r"'scales' has shape \(3,\)"):
        run({"x": x, "scales": np.array([1, 2, 3], "f4")})
    # a bundle holds one static build: compiling a guarded graph says how to specialise it
    from terrazzo.errors import CodegenError
    from terrazzo.pipeline import load_model

    with pytest.raises(CodegenError, match=r"'scales' decide output shapes.*constant_inputs"):
        load_model(g)  # type: ignore[arg-type]


def test_input_read_only_as_data_is_no_guard(tmp_path: Path) -> None:
    p = _save(tmp_path / "a.onnx", [helper.make_node("Add", ["x", "b"], ["y"])],
              [_vi("x", [2]), _vi("b", [2])], ["y"])  # fmt: skip
    g = from_onnx(p, guards=True)  # imports as usual: nothing to guard
    assert not isinstance(g, GuardedGraph)
    assert shape_valued_inputs(onnx.load(str(p))) == {}
