"""The in-process run path (`open_bundle(p).run`): stages loaded once, results handed out without
copies yet never aliased to anything a later call or the caller could change, any input layout
accepted, calls from several threads kept apart — all checked against onnxruntime."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """y = relu(x @ W + b) and r = reshape(x) (in the VM, a view of the input buffer)."""
    d = tmp_path_factory.mktemp("runpath")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype("float32")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["y"]),
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
    ]
    g = helper.make_graph(
        nodes, "runpath", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8]),
         helper.make_tensor_value_info("r", TensorProto.FLOAT, [64])],
        [numpy_helper.from_array(w, "W"),
         numpy_helper.from_array(rng.standard_normal(8).astype("float32"), "b"),
         numpy_helper.from_array(np.array([64], "int64"), "shape")],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    path = d / "runpath.onnx"
    onnx.save(m, str(path))
    from terrazzo.pipeline import compile_model
    from terrazzo.placement import SLA, Fleet

    res = compile_model(path, Fleet.from_dict({"devices": {"cpu": {"count": 1}}}),
                        SLA(latency_s=0.05), out_path=d / "runpath.tzb")  # fmt: skip
    return path, res.path


def _ref(path, x):
    sess = ort.InferenceSession(str(path))
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x}), strict=True))


def _check(got, want):
    # by position: the bundle's outputs are the model's, in order (names: the models issue)
    assert len(got) == len(want)
    for (k, v), g in zip(want.items(), got.values(), strict=True):
        np.testing.assert_allclose(g, v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_results_stay_valid_and_independent_across_calls(model):
    from terrazzo.bundle import open_bundle

    path, bundle = model
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((4, 16)).astype("float32") for _ in range(5)]
    with open_bundle(bundle) as b:
        outs = [b.run({"x": x}) for x in xs]  # the first calls learn which results to copy
        kept = [{k: v.copy() for k, v in o.items()} for o in outs]
        for x in xs:  # later calls must not change earlier results
            b.run({"x": x})
        for x, o, k in zip(xs, outs, kept, strict=True):
            _check(o, _ref(path, x))
            for name in o:
                np.testing.assert_array_equal(o[name], k[name])
        # the caller may write into any result without changing the next answer
        o = b.run({"x": xs[0]})
        for v in o.values():
            v[...] = 12345.0
        _check(b.run({"x": xs[0]}), _ref(path, xs[0]))


@pytest.mark.parametrize("layout", ["strided", "read-only", "misaligned", "fortran"])
def test_any_input_layout_gives_the_same_answer_and_is_left_alone(model, layout):
    from terrazzo.bundle import open_bundle

    path, bundle = model
    base = np.random.default_rng(2).standard_normal((4, 16)).astype("float32")
    if layout == "strided":
        x = np.repeat(base, 2, axis=1)[:, ::2]
    elif layout == "read-only":
        x = np.frombuffer(base.tobytes(), "float32").reshape(4, 16)  # like a decoded request
    elif layout == "misaligned":
        x = np.zeros(64 + 1, "float32")[1:].reshape(4, 16)
        x[...] = base
    else:
        x = np.asfortranarray(base)
    before = np.array(x, copy=True)
    with open_bundle(bundle) as b:
        for _ in range(3):
            _check(b.run({"x": x}), _ref(path, base))
    np.testing.assert_array_equal(np.asarray(x), before)  # never written


def test_stages_load_once_and_say_so_once(model, caplog, monkeypatch):
    from terrazzo.bundle import StageRunner, open_bundle

    _, bundle = model
    loads = []
    real = StageRunner.from_bundle

    def counting(*args, **kwargs):
        loads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(StageRunner, "from_bundle", staticmethod(counting))
    x = np.ones((4, 16), "float32")
    with caplog.at_level(logging.INFO, logger="terrazzo.bundle"), open_bundle(bundle) as b:
        for _ in range(20):
            b.run({"x": x})
        assert b.runners() is b.runners()
    assert len(loads) == 1
    assert len({r.getMessage() for r in caplog.records}) == len(caplog.records) <= 1


def test_concurrent_callers_get_their_own_answers(model):
    from terrazzo.bundle import open_bundle

    path, bundle = model
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((4, 16)).astype("float32") for _ in range(4)]
    refs = [_ref(path, x) for x in xs]
    errors: list[BaseException] = []
    with open_bundle(bundle) as b:

        def work(i: int) -> None:
            try:
                for _ in range(50):
                    _check(b.run({"x": xs[i]}), refs[i])
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[0]


def test_wrong_inputs_are_refused_with_one_line(model):
    from terrazzo.bundle import open_bundle
    from terrazzo.errors import BundleError

    _, bundle = model
    with open_bundle(bundle) as b:
        with pytest.raises(BundleError, match="inputs not given: x"):
            b.run({})
        with pytest.raises(BundleError, match=r"must be float32\[4, 16\], got float64\[4, 16\]"):
            b.run({"x": np.ones((4, 16))})
        with pytest.raises(BundleError, match=r"must have shape \[4, 16\], got \[2, 16\]"):
            b.run({"x": np.ones((2, 16), "float32")})


@pytest.fixture(scope="module")
def edge_model(tmp_path_factory):
    """A rank-0 input, a rank-0 output, an empty output and an elementwise output."""
    d = tmp_path_factory.mktemp("runpath_edges")
    nodes = [
        helper.make_node("Mul", ["x", "s"], ["y"]),
        helper.make_node("ReduceSum", ["y"], ["total"], keepdims=0),
        helper.make_node("Slice", ["x", "start", "end"], ["none"]),
    ]
    g = helper.make_graph(
        nodes, "edges",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("none", TensorProto.FLOAT, [0, 16])],
        [numpy_helper.from_array(np.array([0], "int64"), "start"),
         numpy_helper.from_array(np.array([0], "int64"), "end")],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    path = d / "edges.onnx"
    onnx.save(m, str(path))
    from terrazzo.pipeline import compile_model
    from terrazzo.placement import SLA, Fleet

    res = compile_model(path, Fleet.from_dict({"devices": {"cpu": {"count": 1}}}),
                        SLA(latency_s=0.05), out_path=d / "edges.tzb")  # fmt: skip
    return path, res.path


def test_rank0_empty_and_nan_results_on_every_call(edge_model):
    """The first calls (learning which results to copy) and the later, shorter path agree with
    onnxruntime: names and order kept, a rank-0 input and result, an empty result, NaN kept."""
    from terrazzo.bundle import open_bundle

    path, bundle = edge_model
    sess = ort.InferenceSession(str(path))
    names = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(4)
    with open_bundle(bundle) as b:
        for i in range(6):
            x = rng.standard_normal((4, 16)).astype("float32")
            if i % 2:
                x[1, 3] = np.nan
            s = np.array(1.5 + i, "float32")  # rank 0
            got = b.run({"x": x, "s": s})
            want = sess.run(None, {"x": x, "s": s})
            assert list(got) == names
            for name, w in zip(names, want, strict=True):
                g = got[name]
                assert g.shape == w.shape and g.dtype == w.dtype, name
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, equal_nan=True)
            assert np.isnan(got["total"]) == bool(i % 2)
            assert np.isnan(got["y"][1, 3]) == bool(i % 2)
            assert got["none"].shape == (0, 16)
        # from the third call on, run took the short path (the one stage's try_fast)
        assert b._fast is not None and b.runners()[0].try_fast({"x": x, "s": s}) is not None
