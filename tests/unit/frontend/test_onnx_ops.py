"""Terrazzo's own ONNX converters (frontend/onnx_ops.py) against onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from terrazzo.errors import FrontendError  # noqa: E402
from terrazzo.frontend import build_cpu, from_onnx  # noqa: E402


def _attention_model(path: Path, q_shape, kv_shape, mask_shape=None, opset=23, **attrs):  # type: ignore[no-untyped-def]
    ins = [
        helper.make_tensor_value_info("Q", TensorProto.FLOAT, q_shape),
        helper.make_tensor_value_info("K", TensorProto.FLOAT, kv_shape),
        helper.make_tensor_value_info("V", TensorProto.FLOAT, kv_shape),
    ]
    names = ["Q", "K", "V"]
    if mask_shape is not None:
        ins.append(helper.make_tensor_value_info("M", TensorProto.BOOL, mask_shape))
        names.append("M")
    node = helper.make_node("Attention", names, ["Y"], **attrs)
    out = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "attn", ins, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10  # the newest onnxruntime 1.2x reads
    onnx.save(model, str(path))


def _compare(path: Path, feeds: dict[str, np.ndarray]) -> None:
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    graph = from_onnx(path)
    got = list(
        build_cpu(graph)({g: feeds[n] for g, n in zip(graph.inputs, feeds, strict=True)}).values()
    )
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("causal", [0, 1])
def test_attention_4d_gqa_matches_onnxruntime(tmp_path: Path, causal: int) -> None:
    p = tmp_path / "a.onnx"
    _attention_model(p, [1, 4, 3, 8], [1, 2, 5, 8], is_causal=causal)
    rng = np.random.default_rng(0)
    feeds = {
        "Q": rng.standard_normal((1, 4, 3, 8), dtype=np.float32),
        "K": rng.standard_normal((1, 2, 5, 8), dtype=np.float32),
        "V": rng.standard_normal((1, 2, 5, 8), dtype=np.float32),
    }
    _compare(p, feeds)


def test_attention_3d_bool_mask_nan_propagates(tmp_path: Path) -> None:
    p = tmp_path / "a.onnx"
    _attention_model(p, [2, 3, 8], [2, 4, 8], mask_shape=[3, 4], q_num_heads=2, kv_num_heads=2)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 3, 8), dtype=np.float32)
    q[0, 1, 0] = np.nan  # a NaN query row stays NaN, as in onnxruntime
    feeds = {
        "Q": q,
        "K": rng.standard_normal((2, 4, 8), dtype=np.float32),
        "V": rng.standard_normal((2, 4, 8), dtype=np.float32),
        "M": np.array([[1, 1, 0, 0], [1, 0, 1, 1], [0, 1, 1, 1]], dtype=bool),
    }
    _compare(p, feeds)


def test_attention_refuses_sliding_window_with_one_line(tmp_path: Path) -> None:
    p = tmp_path / "a.onnx"
    _attention_model(p, [1, 2, 3, 4], [1, 2, 3, 4], opset=24, left_window_size=1)
    with pytest.raises(FrontendError, match="left_window_size"):
        from_onnx(p)


def test_shape_value_feeding_div_is_cast(tmp_path: Path) -> None:
    """Shape → Div (what the expanded Attention functions do) imports and runs."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node(
            "Constant", [], ["two"], value=helper.make_tensor("t", TensorProto.INT64, [], [2])
        ),
        helper.make_node("Div", ["s", "two"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2])],
    )
    p = tmp_path / "s.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    g = from_onnx(p)
    got = list(build_cpu(g)({g.inputs[0]: np.zeros((4, 6), np.float32)}).values())[0]
    np.testing.assert_array_equal(got, [2, 3])


def test_import_failure_names_the_failing_op(tmp_path: Path) -> None:
    p = tmp_path / "a.onnx"
    _attention_model(p, [1, 2, 3, 4], [1, 2, 3, 4], opset=23, qk_matmul_output_mode=7)
    with pytest.raises(FrontendError, match="Attention"):
        from_onnx(p)


def _single_node_model(path: Path, node, ins, outs, opset: int) -> None:  # type: ignore[no-untyped-def]
    graph = helper.make_graph([node], "g", ins, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.save(model, str(path))


def _compare_all(path: Path, *feed_sets: dict[str, np.ndarray]) -> None:
    """One build, checked against onnxruntime on each set of inputs."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = from_onnx(path)
    run = build_cpu(graph)
    for feeds in feed_sets:
        want = sess.run(None, feeds)
        got = run({g: feeds[n] for g, n in zip(graph.inputs, feeds, strict=True)})
        assert len(got) == len(want)
        for g, w in zip(got.values(), want, strict=True):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_nll_loss_with_weight_and_ignore_index(tmp_path: Path, reduction: str) -> None:
    p = tmp_path / "nll.onnx"
    node = helper.make_node(
        "NegativeLogLikelihoodLoss", ["x", "t", "w"], ["y"], reduction=reduction, ignore_index=1
    )
    ins = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4, 2]),
        helper.make_tensor_value_info("t", TensorProto.INT64, [3, 2]),
        helper.make_tensor_value_info("w", TensorProto.FLOAT, [4]),
    ]
    _single_node_model(
        p, node, ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], 22
    )
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 2), dtype=np.float32)
    x[0, 3, 0] = np.nan  # not the target class there: must not leak into the loss
    feeds = {
        "x": x,
        "t": np.array([[0, 1], [2, 3], [1, 0]], np.int64),
        "w": rng.random(4, dtype=np.float32),
    }
    _compare_all(p, feeds)


def test_softmax_cross_entropy_with_log_prob_and_inf(tmp_path: Path) -> None:
    p = tmp_path / "sce.onnx"
    node = helper.make_node("SoftmaxCrossEntropyLoss", ["x", "t"], ["y", "lp"], reduction="mean")
    ins = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
        helper.make_tensor_value_info("t", TensorProto.INT64, [2]),
    ]
    outs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("lp", TensorProto.FLOAT, None),
    ]
    _single_node_model(p, node, ins, outs, 13)
    x = np.array([[1.0, 2.0, -np.inf], [0.5, np.inf, 0.0]], np.float32)
    _compare_all(p, {"x": x, "t": np.array([0, 2], np.int64)})


@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_normalization_three_outputs(tmp_path: Path, axis: int) -> None:
    p = tmp_path / "ln.onnx"
    node = helper.make_node(
        "LayerNormalization", ["x", "s", "b"], ["y", "m", "r"], axis=axis, epsilon=1e-3
    )
    ins = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
        helper.make_tensor_value_info(
            "s", TensorProto.FLOAT, [3, 4][axis:] if axis == -1 else [3, 4]
        ),
        helper.make_tensor_value_info(
            "b", TensorProto.FLOAT, [3, 4][axis:] if axis == -1 else [3, 4]
        ),
    ]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "m", "r")]
    _single_node_model(p, node, ins, outs, 17)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4), dtype=np.float32)
    x[1, 0, 0] = np.nan
    pshape = (4,) if axis == -1 else (3, 4)
    _compare_all(
        p,
        {
            "x": x,
            "s": rng.standard_normal(pshape, dtype=np.float32),
            "b": rng.standard_normal(pshape, dtype=np.float32),
        },
    )


def test_non_max_suppression_is_refused_with_one_line(tmp_path: Path) -> None:
    p = tmp_path / "nms.onnx"
    node = helper.make_node("NonMaxSuppression", ["b", "s"], ["i"])
    ins = [
        helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 2, 4]),
        helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 1, 2]),
    ]
    _single_node_model(
        p, node, ins, [helper.make_tensor_value_info("i", TensorProto.INT64, None)], 11
    )
    with pytest.raises(FrontendError, match="NonMaxSuppression"):
        from_onnx(p)


def test_shape_graph_output_rank0_input(tmp_path: Path) -> None:
    """Shape as a graph output (a constant for static shapes), of a rank-0 input too."""
    p = tmp_path / "shape.onnx"
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Shape", ["z"], ["sz"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 1, 2]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("s", TensorProto.INT64, None),
            helper.make_tensor_value_info("sz", TensorProto.INT64, None),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, str(p))
    _compare_all(p, {"x": np.zeros((3, 1, 2), np.float32), "z": np.array(1.0, np.float32)})


def _reduce_sum_model(path: Path) -> None:
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)
    ins = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
        helper.make_tensor_value_info("axes", TensorProto.INT64, [1]),
    ]
    _single_node_model(
        path, node, ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], 18
    )


def test_axes_input_given_as_constant_imports(tmp_path: Path) -> None:
    p = tmp_path / "rs.onnx"
    _reduce_sum_model(p)
    with pytest.raises(FrontendError, match="ReduceSum"):  # names the op that failed
        from_onnx(p)
    g = from_onnx(p, constant_inputs={"axes": np.array([1], np.int64)})
    assert g.inputs == ("x",)
    x = np.array([[1.0, np.nan, 2.0], [np.inf, 1.0, 0.0]], np.float32)
    got = list(build_cpu(g)({"x": x}).values())[0]
    np.testing.assert_array_equal(got, [np.nan, np.inf])


def test_constant_inputs_wrong_dtype_or_name_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "rs.onnx"
    _reduce_sum_model(p)
    with pytest.raises(FrontendError, match="dtype int32"):
        from_onnx(p, constant_inputs={"axes": np.array([1], np.int32)})
    with pytest.raises(FrontendError, match="'nope'"):
        from_onnx(p, constant_inputs={"nope": np.array([1], np.int64)})


@pytest.mark.parametrize(("exclusive", "reverse"), [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumprod_matches_onnxruntime(tmp_path: Path, exclusive: int, reverse: int) -> None:
    p = tmp_path / "cp.onnx"
    node = helper.make_node("CumProd", ["x", "axis"], ["y"], exclusive=exclusive, reverse=reverse)
    ins = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
        helper.make_tensor_value_info("axis", TensorProto.INT64, []),
    ]
    _single_node_model(
        p, node, ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], 26
    )
    x = np.array([[1.0, np.nan, 2.0], [np.inf, -1.0, 0.0]], np.float32)
    axis = np.array(1, np.int64)  # rank 0
    g = from_onnx(p, constant_inputs={"axis": axis})
    got = list(build_cpu(g)({"x": x}).values())[0]
    # an axis given at run time (every axis computed, the named one selected) agrees
    dyn = build_cpu(from_onnx(p, shapes={"x": (2, 3), "axis": ()}))
    np.testing.assert_array_equal(dyn({"x": x, "axis": axis})["y"], got)
    xs = np.flip(x, 1) if reverse else x
    want = np.cumprod(xs, axis=1)
    if exclusive:
        want = np.concatenate([np.ones((2, 1), np.float32), want[:, :-1]], axis=1)
    want = np.flip(want, 1) if reverse else want
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("neg", "pos"), [(1, 0), (0, 1), (0, 0), (1, 1)])
def test_isinf_detect_sign(tmp_path: Path, neg: int, pos: int) -> None:
    p = tmp_path / "isinf.onnx"
    node = helper.make_node("IsInf", ["x"], ["y"], detect_negative=neg, detect_positive=pos)
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])]
    _single_node_model(
        p, node, ins, [helper.make_tensor_value_info("y", TensorProto.BOOL, None)], 20
    )
    _compare_all(p, {"x": np.array([-np.inf, np.inf, np.nan, 0.0, -1.0], np.float32)})


def test_batchnorm_training_mode_matches_onnxruntime(tmp_path: Path) -> None:
    # was refused; now the batch statistics and the running mean/variance outputs
    p = tmp_path / "bn.onnx"
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"],
                            ["y", "rm", "rv"], training_mode=1, momentum=0.7)  # fmt: skip
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])] + [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [3]) for n in "sbmv"
    ]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "rm", "rv")]
    _single_node_model(p, node, ins, outs, 15)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 3, 4)).astype(np.float32) * 3 + 1}
    for n in "sbm":
        feeds[n] = rng.standard_normal(3).astype(np.float32)
    feeds["v"] = rng.uniform(0.5, 2, 3).astype(np.float32)
    _compare_all(p, feeds)


def test_convtranspose_output_shape_wrong_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "ct.onnx"
    node = helper.make_node(
        "ConvTranspose", ["x", "w"], ["y"], strides=[3, 2], output_shape=[10, 8]
    )
    ins = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3]),
        helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 2, 3, 3]),
    ]
    _single_node_model(
        p, node, ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], 11
    )
    with pytest.raises(FrontendError, match="ConvTranspose: attribute 'output_shape'"):
        from_onnx(p)


def test_pad_with_run_time_constant_value_matches_onnxruntime(tmp_path: Path) -> None:
    # TVM's converter read constant_value as a constant only ('Var' object has no attribute)
    p = tmp_path / "pad.onnx"
    node = helper.make_node("Pad", ["x", "pads", "c"], ["y"], mode="constant")
    pads = onnx.numpy_helper.from_array(np.array([0, 1, 2, 0], np.int64), "pads")
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
           helper.make_tensor_value_info("c", TensorProto.FLOAT, [])]  # fmt: skip
    g = helper.make_graph([node], "g", ins, [helper.make_tensor_value_info("y", 1, None)], [pads])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    onnx.save(m, str(p))
    x = np.array([[1, 2, 3], [4, np.nan, -np.inf]], np.float32)
    _compare_all(p, *({"x": x, "c": np.asarray(c, np.float32)} for c in (2.5, np.nan, -np.inf)))


def test_rms_normalization_over_every_axis_matches_onnxruntime(tmp_path: Path) -> None:
    # axis 0 failed to build in TVM ("Tensor dimension mismatch in read ndim = 1")
    p = tmp_path / "rms.onnx"
    node = helper.make_node("RMSNormalization", ["x", "s"], ["y"], axis=0, epsilon=1e-3)
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
           helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 3])]  # fmt: skip
    _single_node_model(p, node, ins, [helper.make_tensor_value_info("y", 1, None)], 23)
    rng = np.random.default_rng(1)
    _compare_all(p, {"x": rng.standard_normal((2, 3)).astype("f4"),
                     "s": rng.standard_normal((2, 3)).astype("f4")})  # fmt: skip


def test_center_crop_pad_and_upsample_match_onnxruntime(tmp_path: Path) -> None:
    shape = onnx.numpy_helper.from_array(np.array([3, 7], np.int64), "shape")
    node = helper.make_node("CenterCropPad", ["x", "shape"], ["y"], axes=[1, 2])
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6, 4])]
    g = helper.make_graph([node], "g", ins, [helper.make_tensor_value_info("y", 1, None)], [shape])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    onnx.save(m, str(tmp_path / "ccp.onnx"))
    x = np.arange(48, dtype=np.float32).reshape(2, 6, 4)
    _compare_all(tmp_path / "ccp.onnx", {"x": x})  # axis 1 cropped 6 → 3, axis 2 padded 4 → 7
    # Upsample-9 with a scale of 3: nearest is floor(i / 3) (TVM's own rounded it)
    scales = onnx.numpy_helper.from_array(np.array([1, 1, 2, 3], np.float32), "scales")
    node = helper.make_node("Upsample", ["x", "scales"], ["y"], mode="nearest")
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2])]
    g = helper.make_graph([node], "g", ins, [helper.make_tensor_value_info("y", 1, None)], [scales])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)])
    m.ir_version = 4
    onnx.save(m, str(tmp_path / "up.onnx"))
    _compare_all(tmp_path / "up.onnx", {"x": np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)})


def test_constant_value_ints_inside_if_branches_import(tmp_path: Path) -> None:
    # 'no value in Constant': value_floats inside a subgraph was not rewritten
    def branch(name: str, vals: list[float]) -> object:
        c = helper.make_node("Constant", [], ["o"], value_floats=vals)
        return helper.make_graph([c], name, [], [helper.make_tensor_value_info("o", 1, [2])])

    node = helper.make_node("If", ["c"], ["t"], then_branch=branch("a", [1.0, 2.0]),
                            else_branch=branch("b", [3.0, 4.0]))  # fmt: skip
    add = helper.make_node("Add", ["t", "x"], ["y"])
    ins = [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
           helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])]  # fmt: skip
    g = helper.make_graph([node, add], "g", ins, [helper.make_tensor_value_info("y", 1, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    onnx.save(m, str(tmp_path / "if.onnx"))
    x = np.ones(2, np.float32)
    _compare_all(
        tmp_path / "if.onnx", {"c": np.array(True), "x": x}, {"c": np.array(False), "x": x}
    )


def test_rotary_embedding_and_tensor_scatter_match_onnxruntime(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    # RotaryEmbedding, 3-D input with num_heads, position ids, interleaved, partial rotation
    node = helper.make_node("RotaryEmbedding", ["x", "cos", "sin", "pos"], ["y"],
                            interleaved=1, num_heads=2, rotary_embedding_dim=4)  # fmt: skip
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 12]),
           helper.make_tensor_value_info("cos", TensorProto.FLOAT, [5, 2]),
           helper.make_tensor_value_info("sin", TensorProto.FLOAT, [5, 2]),
           helper.make_tensor_value_info("pos", TensorProto.INT64, [2, 3])]  # fmt: skip
    _single_node_model(tmp_path / "rope.onnx", node, ins,
                       [helper.make_tensor_value_info("y", 1, None)], 23)  # fmt: skip
    _compare_all(tmp_path / "rope.onnx", {
        "x": rng.standard_normal((2, 3, 12)).astype("f4"),
        "cos": rng.standard_normal((5, 2)).astype("f4"),
        "sin": rng.standard_normal((5, 2)).astype("f4"),
        "pos": np.array([[0, 1, 2], [4, 3, 0]], np.int64)})  # fmt: skip
    # TensorScatter, circular: writes that run past the end wrap to the front
    node = helper.make_node("TensorScatter", ["past", "upd", "w"], ["y"], mode="circular")
    ins = [helper.make_tensor_value_info("past", TensorProto.FLOAT, [2, 5, 3]),
           helper.make_tensor_value_info("upd", TensorProto.FLOAT, [2, 2, 3]),
           helper.make_tensor_value_info("w", TensorProto.INT64, [2])]  # fmt: skip
    _single_node_model(tmp_path / "ts.onnx", node, ins,
                       [helper.make_tensor_value_info("y", 1, None)], 24)  # fmt: skip
    past = np.zeros((2, 5, 3), np.float32)
    upd = np.arange(1, 13, dtype=np.float32).reshape(2, 2, 3)
    _compare_all(tmp_path / "ts.onnx", {"past": past, "upd": upd, "w": np.array([4, 1])},
                 {"past": past + 1, "upd": upd, "w": np.array([0, 3])})  # fmt: skip


def test_maxpool_indices_output_matches_onnxruntime(tmp_path: Path) -> None:
    # TVM's converter gave one output ("Missing outputs ... Expected 2 but Got 1")
    a = helper.make_node("MaxPool", ["x"], ["y1", "i1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    b = helper.make_node("MaxPool", ["x"], ["y2", "i2"], kernel_shape=[2, 2], strides=[2, 2],
                         storage_order=1)  # fmt: skip
    outs = [helper.make_tensor_value_info(n, 1 if n[0] == "y" else 7, None)
            for n in ("y1", "i1", "y2", "i2")]  # fmt: skip
    g = helper.make_graph([a, b], "g", [helper.make_tensor_value_info("x", 1, [2, 2, 5, 5])], outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 12)])
    m.ir_version = 10
    onnx.save(m, str(tmp_path / "mp.onnx"))
    x = np.random.default_rng(3).standard_normal((2, 2, 5, 5)).astype("f4")
    x[0, 0, 0, :] = -np.inf  # windows that hold -inf and padding
    x[1, 1, 2, 2] = x[1, 1, 2, 3]  # a tie: the first in scan order wins
    _compare_all(tmp_path / "mp.onnx", {"x": x})


def test_col2im_with_strides_pads_and_dilations_matches_onnxruntime(tmp_path: Path) -> None:
    image = onnx.numpy_helper.from_array(np.array([6, 5], np.int64), "image")
    block = onnx.numpy_helper.from_array(np.array([2, 3], np.int64), "block")
    node = helper.make_node("Col2Im", ["x", "image", "block"], ["y"], strides=[2, 1],
                            pads=[1, 0, 0, 1], dilations=[1, 2])  # fmt: skip
    # blocks: (6 + 1 - 1 - 1) // 2 + 1 = 3 by (5 + 1 - 4 - 1) // 1 + 1 = 2
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2 * 6, 6])]
    g = helper.make_graph([node], "g", ins, [helper.make_tensor_value_info("y", 1, None)],
                          [image, block])  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    onnx.save(m, str(tmp_path / "c2i.onnx"))
    x = np.random.default_rng(4).standard_normal((2, 12, 6)).astype("f4")
    _compare_all(tmp_path / "c2i.onnx", {"x": x})


def test_bitcast_matches_onnxruntime(tmp_path: Path) -> None:
    node = helper.make_node("BitCast", ["x"], ["y"], to=TensorProto.INT32)
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])]
    outs = [helper.make_tensor_value_info("y", TensorProto.INT32, None)]
    _single_node_model(tmp_path / "bc.onnx", node, ins, outs, 26)
    x = np.array([1.0, -2.5, np.nan, -np.inf], "f4")
    got = build_cpu(from_onnx(tmp_path / "bc.onnx"))({"x": x})["y"]
    want = ort.InferenceSession(str(tmp_path / "bc.onnx")).run(None, {"x": x})[0]
    assert got.dtype == np.int32 and np.array_equal(got, want)  # exact: the same bits


def test_det_matches_onnxruntime(tmp_path: Path) -> None:
    node = helper.make_node("Det", ["x"], ["y"])
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])]
    _single_node_model(tmp_path / "det.onnx", node, ins,
                       [helper.make_tensor_value_info("y", 1, None)], 22)  # fmt: skip
    x = np.random.default_rng(5).standard_normal((2, 3, 3)).astype("f4")
    _compare_all(tmp_path / "det.onnx", {"x": x})
