"""Stage splitting: running the stages one after another equals the whole model (fp32, 1e-5).

Graphs are built directly with ``onnx.helper`` (not exported from torch) and imported with
TVM's ONNX frontend; they cover skip connections crossing stages, values read by several
later stages, tuple-valued bindings (Split), multiple graph outputs and non-prefix cuts.
"""

from __future__ import annotations

import numpy as np
import pytest

from terrazzo.errors import CodegenError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

TOL = 1e-5


def _model(nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _w(rng, name, shape):
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype("float32"), name)


def resmlp():
    """MatMul/Relu/MatMul + skip from the input, Split (tuple), two graph outputs."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["h3"]),
        helper.make_node("Add", ["h3", "x"], ["y"]),
        helper.make_node("Split", ["y"], ["s1", "s2"], axis=1),
        helper.make_node("Mul", ["s1", "s2"], ["m"]),
        helper.make_node("Tanh", ["m"], ["z"]),
    ]
    return _model(
        nodes, [_vi("x", [4, 16])], [_vi("z", [4, 8]), _vi("y", [4, 16])],
        [_w(rng, "W1", (16, 32)), _w(rng, "W2", (32, 16))],
    )  # fmt: skip


def convnet():
    """Conv → Relu → Conv + residual → pool → Gemm; the residual crosses stages."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["x", "C1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "C2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a"]),
        helper.make_node("Relu", ["a"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "G", "gb"], ["out"], transB=1),
    ]
    return _model(
        nodes, [_vi("x", [1, 3, 8, 8])], [_vi("out", [1, 5])],
        [_w(rng, "C1", (4, 3, 3, 3)), _w(rng, "b1", (4,)), _w(rng, "C2", (4, 4, 3, 3)),
         _w(rng, "G", (5, 4)), _w(rng, "gb", (5,))],
    )  # fmt: skip


def diamond():
    """Two branches from one input, a value read by three later ops, Concat and Softmax."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["a"]),
        helper.make_node("Tanh", ["x"], ["b"]),
        helper.make_node("Exp", ["a"], ["e"]),
        helper.make_node("Mul", ["a", "b"], ["c"]),
        helper.make_node("MatMul", ["c", "W"], ["d"]),
        helper.make_node("Concat", ["a", "d", "e"], ["cat"], axis=1),
        helper.make_node("Softmax", ["cat"], ["s"], axis=1),
        helper.make_node("ReduceMean", ["s"], ["rm"], keepdims=1, axes=[1]),
        helper.make_node("Sub", ["s", "rm"], ["out"]),
    ]
    return _model(nodes, [_vi("x", [2, 8])], [_vi("out", [2, 24])], [_w(rng, "W", (8, 8))])


GRAPHS = {"resmlp": resmlp, "convnet": convnet, "diamond": diamond}


def _import(model):
    from tvm.relax.frontend.onnx import from_onnx

    from terrazzo.codegen import uniquify_bindings

    return uniquify_bindings(from_onnx(model, keep_params_in_input=False))


def _run(mod, args):
    import tvm
    from tvm import relax

    from terrazzo.codegen import compile_module, host_target

    vm = relax.VirtualMachine(compile_module(mod, host_target()), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in args])
    return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]


def _staged(split, inputs):
    env = dict(inputs)
    for st in split.stages:
        outs = _run(st.mod, [env[i] for i in st.inputs] + [split.weights[w] for w in st.weights])
        assert len(outs) == len(st.outputs)
        env.update(zip(st.outputs, outs, strict=True))
    return [env[o] for o in split.outputs]


def _contiguous(names, k):
    """Cut the binding list into k nearly equal contiguous stages."""
    bounds = np.linspace(0, len(names), k + 1).astype(int)
    return {n: int(np.searchsorted(bounds, i, side="right") - 1) for i, n in enumerate(names)}


def _random_topological(mod, k, seed):
    """Random assignment where every binding's stage ≥ its producers' stages (not contiguous)."""
    from tvm import relax

    rng = np.random.default_rng(seed)
    func = mod["main"]
    stage: dict[str, int] = {}
    for block in func.body.blocks:
        for b in block.bindings:
            deps = [stage[v.name] for v in relax.analysis.free_vars(b.value) if v.name in stage]
            lo = max(deps, default=0)
            stage[b.var.name] = int(min(k - 1, lo + rng.integers(0, 2)))
    used = sorted(set(stage.values()))
    renum = {s: i for i, s in enumerate(used)}
    return {n: renum[s] for n, s in stage.items()}


@pytest.fixture(scope="module")
def imported():
    out = {}
    for name, make in GRAPHS.items():
        mod = _import(make())
        func = mod["main"]
        rng = np.random.default_rng(7)
        inputs = {
            p.name: rng.standard_normal([int(d) for d in p.ty.shape.values]).astype("float32")
            for p in func.params
        }
        out[name] = (mod, inputs, _run(mod, [inputs[p.name] for p in func.params]))
    return out


@pytest.mark.parametrize("graph", sorted(GRAPHS))
@pytest.mark.parametrize("k", [2, 3, 4])
def test_contiguous_split_matches_whole_model(imported, graph, k):
    from terrazzo.codegen import relax_binding_names, split_relax

    mod, inputs, ref = imported[graph]
    split = split_relax(mod, _contiguous(relax_binding_names(mod), k))
    assert len(split.stages) == k
    got = _staged(split, inputs)
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape
        assert float(np.abs(g - r).max()) <= TOL


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_random_non_prefix_split_matches(imported, graph):
    from terrazzo.codegen import split_relax

    mod, inputs, ref = imported[graph]
    assignment = _random_topological(mod, 3, seed=11)
    split = split_relax(mod, assignment)
    for g, r in zip(_staged(split, inputs), ref, strict=True):
        assert float(np.abs(g - r).max()) <= TOL


def test_skip_connection_and_multi_reader_cross_stages(imported):
    from terrazzo.codegen import relax_binding_names, split_relax

    mod, inputs, ref = imported["diamond"]
    names = relax_binding_names(mod)
    # sigmoid (a) in stage 0 is read by stages 1 (exp, mul) and 2 (concat): one value, two readers.
    assignment = {n: (0 if i == 0 else 1 if i < 5 else 2) for i, n in enumerate(names)}
    split = split_relax(mod, assignment)
    a = names[0]
    assert a in split.stages[0].outputs
    assert a in split.stages[1].inputs and a in split.stages[2].inputs
    assert "x" in split.stages[1].inputs  # the graph input crosses directly to stage 1
    for g, r in zip(_staged(split, inputs), ref, strict=True):
        assert float(np.abs(g - r).max()) <= TOL


def test_tuple_value_crosses_as_leaves(imported):
    from tvm import relax

    from terrazzo.codegen import split_relax

    mod, inputs, ref = imported["resmlp"]
    func = mod["main"]
    bindings = [b for blk in func.body.blocks for b in blk.bindings]
    split_var = next(b.var.name for b in bindings if isinstance(b.var.ty, relax.TupleType)
                     and isinstance(b.value, relax.Call))  # fmt: skip
    idx = [b.var.name for b in bindings].index(split_var)
    assignment = {b.var.name: (0 if i <= idx else 1) for i, b in enumerate(bindings)}
    split = split_relax(mod, assignment)
    assert (
        f"{split_var}.0" in split.stages[0].outputs and f"{split_var}.1" in split.stages[1].inputs
    )
    for g, r in zip(_staged(split, inputs), ref, strict=True):
        assert float(np.abs(g - r).max()) <= TOL


def test_weights_are_lifted_and_stay_with_their_stage(imported):
    from terrazzo.codegen import relax_binding_names, split_relax

    mod, _, _ = imported["resmlp"]
    split = split_relax(mod, _contiguous(relax_binding_names(mod), 2))
    assert split.stages[0].weights == ("w0", "w1") or split.stages[0].weights == ("w0",)
    all_w = [w for st in split.stages for w in st.weights]
    assert sorted(all_w) == sorted(split.weights)  # each weight used by exactly one stage here
    assert {split.weights[w].shape for w in split.weights} == {(16, 32), (32, 16)}
    from tvm import ir, relax

    from terrazzo.codegen._split import LIFT_MIN_BYTES

    for st in split.stages:
        big: list[int] = []

        def visit(e, _big=big):
            if isinstance(e, ir.expr.GenericConst) and e.value.numpy().nbytes >= LIFT_MIN_BYTES:
                _big.append(e.value.numpy().nbytes)

        relax.analysis.post_order_visit(st.mod["main"], visit)
        assert big == []  # every weight is a parameter, none is baked into the library
        params = st.mod["main"].params
        assert [p.name for p in params] == list(st.inputs) + list(st.weights)


def test_non_topological_stage_order_is_refused(imported):
    from terrazzo.codegen import relax_binding_names, split_relax

    mod, _, _ = imported["resmlp"]
    names = relax_binding_names(mod)
    assignment = {n: (1 if i == 0 else 0) for i, n in enumerate(names)}
    with pytest.raises(CodegenError, match="later stage"):
        split_relax(mod, assignment)


def test_unassigned_and_unknown_bindings_are_refused(imported):
    from terrazzo.codegen import relax_binding_names, split_relax

    mod, _, _ = imported["resmlp"]
    names = relax_binding_names(mod)
    with pytest.raises(CodegenError, match="no stage assigned"):
        split_relax(mod, {n: 0 for n in names[1:]})
    with pytest.raises(CodegenError, match="unknown bindings"):
        split_relax(mod, {**{n: 0 for n in names}, "nope": 0})
    with pytest.raises(CodegenError, match="0..n-1"):
        split_relax(mod, {n: 2 for n in names})
