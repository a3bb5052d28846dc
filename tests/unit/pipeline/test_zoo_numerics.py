"""Zoo models: ONNX exports are well-formed, and whole-graph TVM builds agree with torch and onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from terrazzo import zoo  # noqa: E402
from terrazzo.errors import FrontendError  # noqa: E402
from terrazzo.frontend import build_and_run, from_onnx, from_torch  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
_SLOW = {"cnn", "bert", "gpt2", "llama"}


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo-onnx")


def _params(names: list[str]) -> list[object]:
    return [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW else n for n in names]


def test_zoo_names_and_unknown_model() -> None:
    assert zoo.names() == ["mlp", "cnn", "bert", "gpt2", "llama"]
    assert "bert-base" in zoo.names(include_large=True)
    with pytest.raises(FrontendError, match="unknown zoo model 'resnet9000'"):
        zoo.build_torch("resnet9000")


@pytest.mark.parametrize("name", _params(zoo.names()))
def test_onnx_path_matches_torch_and_ort(name: str, onnx_dir: Path) -> None:
    path = zoo.export_onnx(name, onnx_dir)
    assert zoo.export_onnx(name, onnx_dir) == path  # cached
    proto = onnx.load(str(path))
    assert proto.ir_version == 9
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    for i in proto.graph.input:
        assert all(d.HasField("dim_value") for d in i.type.tensor_type.shape.dim)

    model, inputs = zoo.build_torch(name)
    with torch.no_grad():
        ref = model(*inputs).numpy()
    feeds = zoo.example_inputs_numpy(name)
    ort_out = ort.InferenceSession(str(path)).run(None, feeds)[0]
    np.testing.assert_allclose(ort_out, ref, rtol=RTOL, atol=ATOL)

    g = from_onnx(path)
    assert g.total_flops > 0 and g.param_bytes > 0
    (got,) = build_and_run(g, feeds).values()
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got, ort_out, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", _params(zoo.names()))
def test_torch_export_path_matches_torch(name: str) -> None:
    model, inputs = zoo.build_torch(name)
    with torch.no_grad():
        ref = model(*inputs).numpy()
    g = from_torch(model, inputs, name=name)
    (got,) = build_and_run(
        g, {n: t.numpy() for n, t in zip(g.inputs, inputs, strict=True)}
    ).values()
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
