"""ONNX frontend: graph conventions, analyses, dynamic shapes, and every user-facing error."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from terrazzo.errors import FrontendError, TerrazzoError, UnsupportedOpError  # noqa: E402
from terrazzo.frontend import build_and_run, from_onnx, relax_bindings  # noqa: E402


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _mlp_model(batch: int | str = 4) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal((16,)).astype(np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["biased"]),
        helper.make_node("Relu", ["biased"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 16])],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_graph_follows_interface_conventions(tmp_path: Path) -> None:
    g = from_onnx(_save(_mlp_model(), tmp_path / "m.onnx"))
    assert g.inputs == ("x",)
    assert [o.kind for o in g.ops] == ["matmul", "add", "nn.relu"]
    names = [n for n, _ in relax_bindings(g.relax_mod)]
    assert list(g.op_names) == names and len(set(names)) == len(names)
    assert all(o.outputs == (o.name,) for o in g.ops)
    mm, add, relu = g.ops
    assert mm.op_class == "matmul" and mm.flops == 2 * 4 * 16 * 8
    assert mm.param_bytes == 8 * 16 * 4 and mm.inputs == ("x",)
    assert mm.bytes_read == 4 * 8 * 4 + 8 * 16 * 4 and mm.bytes_written == 4 * 16 * 4
    assert add.op_class == "elementwise" and add.flops == 64 and add.param_bytes == 16 * 4
    assert relu.inputs == (add.name,) and g.outputs == (relu.name,)
    assert g.values["x"].shape == (4, 8) and g.values[relu.name].dtype == "float32"
    assert g.param_bytes == (8 * 16 + 16) * 4
    assert g.verify() is g


def test_numerics_match_onnxruntime(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = _save(_mlp_model(), tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    g = from_onnx(path)
    (got,) = build_and_run(g, {"x": x}).values()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_tuple_outputs_split_and_get_item(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2),
        helper.make_node("Neg", ["b"], ["nb"]),
    ]
    graph = helper.make_graph(
        nodes,
        "split",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("nb", TensorProto.FLOAT, [2, 3]),
        ],
    )
    g = from_onnx(
        _save(
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
            tmp_path / "s.onnx",
        )
    )
    kinds = [o.kind for o in g.ops]
    assert "split" in kinds and "tuple_get_item" in kinds
    split = g.ops[kinds.index("split")]
    # A tuple of two float32 [2,3] tensors is typed as its flat concatenation: bytes stay exact.
    assert g.values[split.name].shape == (12,) and split.bytes_written == 48
    for o in g.ops:
        if o.kind in ("tuple", "tuple_get_item"):
            assert o.flops == 0 and o.bytes_read == 0
    assert len(g.outputs) == 2 and all(g.values[v].shape == (2, 3) for v in g.outputs)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    a, nb = build_and_run(g, {"x": x}).values()
    np.testing.assert_array_equal(a, x[:, :3])
    np.testing.assert_array_equal(nb, -x[:, 3:])


def test_dynamic_batch_stays_symbolic(tmp_path: Path) -> None:
    path = _save(_mlp_model("batch"), tmp_path / "dyn.onnx")
    g = from_onnx(path)  # no shapes: batch keeps the default range, planned at its top
    assert dict(g.attrs)["dynamic_dims"] == "batch=1..64"
    assert g.values["x"].shape == (64, 8)
    g = from_onnx(path, shapes={"x": (3, 8)})
    assert g.values["x"].shape == (3, 8) and g.values[g.outputs[0]].shape == (3, 16)
    with pytest.raises(FrontendError, match="model's inputs are 'x'"):
        from_onnx(path, shapes={"nope": (1, 8)})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FrontendError, match="does not exist"):
        from_onnx(tmp_path / "absent.onnx")


def test_not_onnx(tmp_path: Path) -> None:
    p = tmp_path / "notes.onnx"
    p.write_text("this is a text file, not a model\n")
    with pytest.raises(FrontendError, match="not (a valid )?(an )?ONNX model"):
        from_onnx(p)


def test_truncated_protobuf(tmp_path: Path) -> None:
    full = _save(_mlp_model(), tmp_path / "full.onnx").read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(FrontendError, match="ONNX model"):
        from_onnx(p)


def test_unsupported_ops_listed_once_with_counts(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("FancyOp", ["x"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("FancyOp", ["b"], ["c"]),
        helper.make_node("OtherOp", ["c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    p = tmp_path / "bad.onnx"
    p.write_bytes(model.SerializeToString())
    with pytest.raises(UnsupportedOpError) as info:
        from_onnx(p)
    assert info.value.counts == {"FancyOp": 2, "OtherOp": 1}
    assert "FancyOp (x2), OtherOp (x1)" in str(info.value) and "\n" not in str(info.value)


# -- external data ------------------------------------------------------------------------------


def _external_model(folder: Path, location: str) -> Path:
    w = TensorProto()
    w.name = "w"
    w.data_type = TensorProto.FLOAT
    w.dims.extend([8, 16])
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", location
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    p = folder / "ext.onnx"
    p.write_bytes(model.SerializeToString())
    return p


def _weights() -> bytes:
    return np.ones((8, 16), np.float32).tobytes()


def test_external_data_inside_folder_loads(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(_weights())
    g = from_onnx(_external_model(tmp_path, "w.bin"))
    (got,) = build_and_run(g, {"x": np.ones((4, 8), np.float32)}).values()
    np.testing.assert_allclose(got, np.full((4, 16), 8.0, np.float32))


def test_external_data_parent_dir_rejected(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(_weights())
    sub = tmp_path / "model"
    sub.mkdir()
    with pytest.raises(FrontendError, match=r"'\.\.' leaves the model's folder"):
        from_onnx(_external_model(sub, "../w.bin"))


def test_external_data_absolute_rejected(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(_weights())
    with pytest.raises(FrontendError, match="absolute paths are not allowed"):
        from_onnx(_external_model(tmp_path, str(tmp_path / "w.bin")))


def test_external_data_symlink_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(_weights())
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    os.symlink(outside / "w.bin", model_dir / "w.bin")
    with pytest.raises(FrontendError, match="symbolic link"):
        from_onnx(_external_model(model_dir, "w.bin"))


def test_external_data_hard_link_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(_weights())
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    os.link(outside / "w.bin", model_dir / "w.bin")
    with pytest.raises(FrontendError, match="hard links"):
        from_onnx(_external_model(model_dir, "w.bin"))


def test_external_data_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FrontendError, match="file not found"):
        from_onnx(_external_model(tmp_path, "absent.bin"))


def test_errors_are_terrazzo_errors() -> None:
    # The CLI turns TerrazzoError into one line and exit code 2; frontends raise only these.
    assert issubclass(FrontendError, TerrazzoError) and issubclass(
        UnsupportedOpError, FrontendError
    )


def test_constant_value_floats_form_is_imported(tmp_path: Path) -> None:
    # TVM 0.27 reads only Constant(value=...); Terrazzo rewrites value_floats before import.
    nodes = [
        helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0, 3.0]),
        helper.make_node("Add", ["x", "c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "const",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = from_onnx(_save(model, tmp_path / "c.onnx"))
    (got,) = build_and_run(g, {"x": np.ones(3, np.float32)}).values()
    np.testing.assert_array_equal(got, np.array([2.0, 3.0, 4.0], np.float32))
