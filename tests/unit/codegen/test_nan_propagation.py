"""IEEE semantics: NaN and infinities propagate as in onnxruntime and torch (issue 13, deliverable 2).

One ONNX graph applies each op family to the same input holding NaN, +inf and -inf; it is
built once through codegen's pipeline (``compile_module``, what bundles run) and once
through the reference build (``build_cpu``), and both must equal onnxruntime output for output,
NaN for NaN. Max pooling (and ONNX ReduceMax/ReduceMin), where onnxruntime keeps a NaN only when it
comes first in a window, are compared with torch (any NaN in the window gives NaN).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

S = [1, 2, 4, 4]


def _x() -> np.ndarray:
    x = np.random.default_rng(0).standard_normal(S).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 1, 1] = np.inf
    x[0, 1, 2, 2] = -np.inf
    x[0, 1, 3, 3] = np.nan  # last in its pooling window: onnxruntime's MaxPool drops it
    return x


def _model(path: Path, conv: bool = True) -> tuple[Path, list[str]]:
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    def c(name: str, vals: list[float], shape: list[int] | None = None) -> Any:
        return h.make_tensor(name, T.FLOAT, shape if shape is not None else [], vals)

    nodes = [
        h.make_node("Relu", ["x"], ["relu"]),
        h.make_node("Clip", ["x", "lo", "hi"], ["clip"]),
        h.make_node("Max", ["x", "zero"], ["max"]),
        h.make_node("Min", ["x", "zero"], ["min"]),
        h.make_node("HardSigmoid", ["x"], ["hard_sigmoid"]),
        h.make_node("LeakyRelu", ["x"], ["leaky_relu"], alpha=0.1),
        h.make_node("Sigmoid", ["x"], ["sigmoid"]),
        h.make_node("Tanh", ["x"], ["tanh"]),
        h.make_node("Softmax", ["x"], ["softmax"], axis=-1),
        h.make_node("AveragePool", ["x"], ["avg_pool"], kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("GlobalAveragePool", ["x"], ["gap"]),
        h.make_node("Conv", ["x", "w"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["conv"], ["conv_relu"]),
        h.make_node("LayerNormalization", ["x", "ones", "zeros"], ["layer_norm"], axis=-1),
        h.make_node("Erf", ["x"], ["erf"]),
        h.make_node("MatMul", ["x", "m"], ["matmul"]),
    ]
    inits = [
        c("lo", [-1.0]),
        c("hi", [1.0]),
        c("zero", [0.0]),
        c("w", list(np.linspace(-1, 1, 36)), [2, 2, 3, 3]),
        c("ones", [1.0] * 4, [4]),
        c("zeros", [0.0] * 4, [4]),
        c("m", list(np.linspace(-1, 1, 16)), [4, 4]),
    ]
    if not conv:  # see the codegen test
        nodes = [n for n in nodes if n.op_type != "Conv" and n.output[0] != "conv_relu"]
    names = [n.output[0] for n in nodes]
    shapes = {"avg_pool": [1, 2, 2, 2], "gap": [1, 2, 1, 1]}
    outs = [h.make_tensor_value_info(n, T.FLOAT, shapes.get(n, S)) for n in names]
    g = h.make_graph(nodes, "nan", [h.make_tensor_value_info("x", T.FLOAT, S)], outs, inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path, names


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], Any]:
    import onnxruntime as ort

    path, names = _model(tmp_path_factory.mktemp("nan") / "nan.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = dict(zip(names, sess.run(names, {"x": _x()}), strict=True))
    return path, names, want


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    from terrazzo.bundle import compare_arrays

    bad = {}
    for n, w in want.items():
        d, why = compare_arrays(got[n], w)
        if d > 1e-5:
            bad[n] = why or f"max abs diff {d:.3g}"
    assert not bad, bad


def test_reference_build_propagates_nan_and_inf_like_onnxruntime(nan_model: Any) -> None:
    from terrazzo.frontend import build_cpu, from_onnx

    path, names, want = nan_model
    got = build_cpu(from_onnx(path))({"x": _x()})
    _assert_same(got, want)
    assert np.isnan(got["relu"][0, 0, 0, 0]) and np.isnan(got["clip"][0, 1, 3, 3])
    assert got["relu"][0, 0, 1, 1] == np.inf and got["clip"][0, 0, 1, 1] == 1.0


def test_codegen_build_propagates_nan_and_inf_like_onnxruntime(tmp_path: Path) -> None:
    """The path bundles take: split → compile_module (FuseOps/FuseTIR, the stage pipeline).

    With the convolution, codegen converts to NHWC on CPU targets; ONNX ``Max``/``Min`` (an
    importer's stack + reduce) used to make TVM's ConvertLayout fail (``Invalid SLayout``).
    """
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from terrazzo.codegen import compile_module, host_target, split_relax
    from terrazzo.frontend import from_onnx

    path, names = _model(tmp_path / "nan.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = dict(zip(names, sess.run(names, {"x": _x()}), strict=True))
    g = from_onnx(path)
    split = split_relax(g.relax_mod, {o.name: 0 for o in g.ops})
    st = split.stages[0]
    vm = relax.VirtualMachine(compile_module(st.mod, host_target()), tvm.cpu())
    weights = [tvm.runtime.tensor(split.weights[w]) for w in st.weights]
    result = vm["main"](tvm.runtime.tensor(_x()), *weights)
    got = {n: r.numpy() for n, r in zip(st.outputs, result, strict=True)}
    _assert_same(got, want)


def test_pooling_and_reductions_propagate_nan_like_torch(tmp_path: Path) -> None:
    import torch
    from torch import nn

    from terrazzo.frontend import build_cpu, from_torch

    class Pools(nn.Module):
        def forward(self, x: Any) -> Any:
            return (
                nn.functional.max_pool2d(x, 2),
                nn.functional.relu6(x),
                torch.clamp(x, min=-0.5),
            )

    x = torch.from_numpy(_x())
    g = from_torch(Pools(), (x,))
    got = build_cpu(g)({"x": x.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in Pools()(x)]
    _assert_same(got, dict(zip(g.outputs, want, strict=True)))
    assert np.isnan(got["output_0"][0, 1, 1, 1])  # the NaN that onnxruntime's MaxPool drops


def test_empty_tensors_compile_and_run_like_onnxruntime(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper as h

    from terrazzo.frontend import build_cpu, from_onnx

    nodes = [h.make_node("Relu", ["x"], ["r"]), h.make_node("ReduceSum", ["x", "ax"], ["s"])]
    g = h.make_graph(
        nodes,
        "empty",
        [h.make_tensor_value_info("x", T.FLOAT, [0, 3])],
        [
            h.make_tensor_value_info("r", T.FLOAT, [0, 3]),
            h.make_tensor_value_info("s", T.FLOAT, [3]),
        ],
        [h.make_tensor("ax", T.INT64, [1], [0])],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    path = tmp_path / "empty.onnx"
    onnx.save(m, str(path))
    x = np.zeros((0, 3), np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    # A 0 in an ONNX shape reads as "unknown" to the importer today; shapes= states it.
    got = build_cpu(from_onnx(path, shapes={"x": (0, 3)}))({"x": x})
    assert got["r"].shape == (0, 3) and np.array_equal(got["s"], want[1])


def test_cuda_build_keeps_reduction_combiners_and_guards_elementwise_max() -> None:
    """The CUDA build (cross-compiled here, no GPU needed) of softmax + relu + max reduction +
    max pooling lowers: cross-thread reductions need the plain ``max`` combiner, which a guard
    used to break ("No matched reducer"), while relu's max still carries its NaN guard."""
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    from terrazzo.codegen._build import compile_module, cuda_source

    class M(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.softmax(x, -1) + torch.relu(x)
            return y.max(-1).values + torch.nn.functional.max_pool1d(x, 2).sum(-1)

    mod = from_exported_program(torch.export.export(M(), (torch.randn(4, 64),)))
    target = {"kind": "cuda", "arch": "sm_80", "host": {"kind": "llvm"}}
    src = cuda_source(compile_module(mod, target, None))
    assert src is not None and "red_buf0" in src  # a cross-thread reduction was lowered
    relu = src[src.index("condval = max(") - 400 : src.index("condval = max(")]
    assert "!=" in relu  # isnan(x) is printed as x != x


def test_cpu_guard_is_vectorized_and_exact_for_each_nan_position() -> None:
    """The CPU form keeps a vectorized ``max(x, 0)`` / ``min(x, y)`` loop vectorized (no
    ``isnan`` against a constant) and still returns NaN whichever operand holds it."""
    import tvm
    from tvm import te

    from terrazzo.frontend import nan_propagating_function

    a = te.placeholder((64,), "float32", name="a")
    b = te.placeholder((64,), "float32", name="b")
    relu = te.compute((64,), lambda i: te.max(a[i], tvm.tirx.const(0.0, "float32")), name="r")
    lo = te.compute((64,), lambda i: te.min(a[i], b[i]), name="m")
    func = te.create_prim_func([a, b, relu, lo])
    sch = tvm.s_tir.Schedule(func)
    for block in ("r", "m"):
        (i,) = sch.get_loops(sch.get_sblock(block))
        _, inner = sch.split(i, [None, 16])
        sch.vectorize(inner)
    guarded = nan_propagating_function(sch.mod["main"])
    assert str(guarded.script()).count("isnan") == 1  # min(a, b) checks b; relu checks nothing
    lib = tvm.compile(tvm.IRModule({"main": guarded}), target="llvm")
    assert "<16 x float>" in lib.mod.inspect_source("ll")  # still vector code
    x = np.random.default_rng(1).standard_normal(64).astype(np.float32)
    y = np.random.default_rng(2).standard_normal(64).astype(np.float32)
    x[[3, 40]] = np.nan
    y[[5, 40]] = np.nan
    dev = tvm.cpu()
    outs = [tvm.runtime.tensor(np.zeros(64, np.float32), dev) for _ in range(2)]
    lib["main"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(y, dev), *outs)
    np.testing.assert_array_equal(outs[0].numpy(), np.maximum(x, 0))
    np.testing.assert_array_equal(outs[1].numpy(), np.minimum(x, y))
