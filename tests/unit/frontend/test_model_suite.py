"""A cheap subset of the held-out model suite (benchmarks/model_suite.py): models exported with
dynamic axes compile once and match onnxruntime at batch 1, 3 and 8; an int8 QOperator model
(onnxruntime's own quantizer) matches within int8 rounding."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from terrazzo.frontend import build_cpu, from_onnx  # noqa: E402

_BENCH = Path(__file__).parents[3] / "benchmarks"


def _suite() -> Any:
    """benchmarks/_suite_models.py, loaded without making benchmarks a package."""
    spec = importlib.util.spec_from_file_location("_suite_models", _BENCH / "_suite_models.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_suite_models", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    return _suite(), tmp_path_factory.mktemp("suite")


def _check(sm: Any, folder: Path, name: str, atol: float) -> None:
    m = next(x for x in sm.models() if x.name == name)
    path = sm.export_onnx(m, folder)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = from_onnx(path)  # no shapes: the exporter's dynamic axes stay symbolic
    assert dict(graph.attrs).get("dynamic_dims"), graph.attrs
    fn = build_cpu(graph)
    torch.manual_seed(5)
    for n in (1, 3, 8):
        feed = {k: v.numpy() for k, v in m.inputs(n).items()}
        want = sess.run(list(m.outputs), feed)
        got = fn(feed)
        assert list(got) == list(m.outputs)  # the model's output names, in order
        for g, w in zip(got.values(), want, strict=True):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=atol)


def test_multi_io_dynamic_batch_matches_onnxruntime(suite: tuple[Any, Path]) -> None:
    _check(*suite, "multi_io", 1e-5)


def test_lstm_dynamic_batch_matches_onnxruntime(suite: tuple[Any, Path]) -> None:
    # the sequence length is fixed (unrolled time loop); the batch stays symbolic
    sm, folder = suite
    m = next(x for x in sm.models() if x.name == "lstm")
    path = sm.export_onnx(m, folder)
    graph = from_onnx(path, shapes={"x": ((1, 8), 5, 16)})
    fn = build_cpu(graph)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3, 8):
        x = m.inputs(n)["x"].numpy()
        want = sess.run(None, {"x": x})[0]
        np.testing.assert_allclose(fn({"x": x})["y"], want, rtol=1e-4, atol=1e-5)
    # NaN in one sequence: that row is NaN (as torch gives; onnxruntime's LSTM returns finite
    # numbers), the other rows are untouched
    x[0, 0, 0] = np.nan
    got = fn({"x": x})["y"]
    assert np.isnan(got[0]).all()
    np.testing.assert_allclose(got[1:], want[1:], rtol=1e-4, atol=1e-5)


def test_qoperator_matmul_and_conv_match_onnxruntime(tmp_path: Path) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from terrazzo.zoo import export_module

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 5),
    ).eval()  # fmt: skip
    fp = export_module(net, (torch.randn(1, 3, 6, 6),), ["x"], tmp_path / "f.onnx")
    rng = np.random.default_rng(0)
    data = iter([{"x": rng.standard_normal((1, 3, 6, 6), dtype=np.float32)} for _ in range(4)])

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def get_next(self) -> Any:
            return next(data, None)

    q = tmp_path / "q.onnx"
    quantize_static(str(fp), str(q), Reader(), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    import onnx

    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert "QLinearConv" in ops and ({"QLinearMatMul", "QGemm"} & ops)
    x = rng.standard_normal((1, 3, 6, 6), dtype=np.float32)
    want = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = build_cpu(from_onnx(q))({"x": x})["output"]
    scale = float(np.max(np.abs(want))) / 127
    assert np.max(np.abs(got - want)) <= 2 * scale + 1e-6
