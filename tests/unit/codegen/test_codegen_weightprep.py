"""Weight preparation: weight-only ops of a stage run once at load, not on every call.

A graph built with ``onnx.helper`` (conv whose weights the CPU build re-lays-out to HWIO, a
Gemm with ``transB=1`` whose weight the importer transposes) is split into stages; each
stage is lifted, built with ``build_stage`` and run through ``StageRunner``: the per-request
``main`` holds no op that reads only weights, and the staged result equals the whole model.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

TOL = 1e-5


def _convgemm():
    rng = np.random.default_rng(3)

    def w(name, shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype("float32"), name)

    nodes = [
        helper.make_node("Conv", ["x", "C1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "C2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a"]),
        helper.make_node("GlobalAveragePool", ["a"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "G", "gb"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "G2"], ["out"], transB=1),
    ]
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 6])],
        [w("C1", (8, 3, 3, 3)), w("b1", (8,)), w("C2", (8, 8, 3, 3)), w("G", (16, 8)),
         w("gb", (16,)), w("G2", (6, 16))],
    )  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def split2():
    from tvm.relax.frontend.onnx import from_onnx

    from terrazzo.codegen import relax_binding_names, split_relax, uniquify_bindings

    mod = uniquify_bindings(from_onnx(_convgemm(), keep_params_in_input=False))
    names = relax_binding_names(mod)
    # Stage 0: the convolutions; stage 1: pooling and both Gemms.
    ops = [
        str(getattr(getattr(b.value, "op", None), "name", ""))
        for blk in mod["main"].body.blocks
        for b in blk.bindings
    ]
    assert len(ops) == len(names)
    cut = next(i for i, op in enumerate(ops) if "pool" in op or "mean" in op)
    split = split_relax(mod, {n: int(i >= cut) for i, n in enumerate(names)})
    assert len(split.stages) == 2 and all(st.weights for st in split.stages)
    return mod, split


def _weight_only_calls(func):
    """Calls in ``func`` whose tensor arguments are all weight parameters (after num_input)."""
    import tvm_ffi
    from tvm import relax

    n_in = int(func.attrs["num_input"])
    weights = {p for p in func.params[n_in:]}
    found: list[str] = []

    def cb(call):
        vars_ = [a for a in call.args if isinstance(a, relax.Var)]
        if vars_ and all(v in weights for v in vars_):
            found.append(str(getattr(call.op, "name", call.op)))

    tvm_ffi.structural_walk(func.body, [(relax.Call, cb)])
    return found


def _prepared(mod):
    import tvm

    from terrazzo.codegen import host_target
    from terrazzo.codegen._build import prepare_build_module

    return prepare_build_module(mod, tvm.target.Target(dict(host_target())))


def test_lift_moves_weight_only_ops_out_of_main(split2):
    from terrazzo.codegen._build import WEIGHT_PREP_FUNCTION, lift_weight_prep

    _, split = split2
    for st in split.stages:
        before = _prepared(st.mod)
        # Without lifting, each stage re-lays-out (conv HWIO) or transposes (Gemm) weights.
        assert _weight_only_calls(before["main"]), st.index
        lifted = lift_weight_prep(before)
        assert WEIGHT_PREP_FUNCTION in [gv.name_hint for gv in lifted.functions]
        assert _weight_only_calls(lifted["main"]) == [], st.index
        assert int(lifted["main"].attrs["num_input"]) == len(st.inputs)


def test_lift_leaves_weightless_modules_alone(split2):
    from terrazzo.codegen._build import lift_weight_prep

    mod, _ = split2
    assert lift_weight_prep(mod) is mod  # the whole model: weights are constants, no num_input


def test_request_kernels_keep_their_workload_hashes(split2):
    """Lifting removes kernels from ``main`` but leaves the others as they were, so tuning
    records extracted from the unlifted stage still match the lifted build."""
    import tvm

    from terrazzo.codegen import host_target
    from terrazzo.codegen._build import WEIGHT_PREP_FUNCTION, lift_weight_prep, request_module
    from terrazzo.codegen.tuning import extract_kernels

    target = tvm.target.Target(dict(host_target()))
    _, split = split2
    for st in split.stages:
        before = _prepared(st.mod)
        unlifted = {k.workload_hash for k in extract_kernels(before, target)}
        lifted = lift_weight_prep(before)
        # main and the PrimFuncs it calls (prepare_module's packed convolutions), no prep
        request = tvm.IRModule(
            {gv: f for gv, f in lifted.functions.items() if gv.name_hint != WEIGHT_PREP_FUNCTION}
        )
        hashes = {k.workload_hash for k in extract_kernels(request, target)}
        assert hashes and hashes <= unlifted
        assert len(hashes) < len(unlifted)  # the weight transforms left main
        # request_module: the same per-request kernels, for the schedule search.
        req = request_module(st.mod, target)
        assert WEIGHT_PREP_FUNCTION not in [gv.name_hint for gv in req.functions]
        assert {k.workload_hash for k in extract_kernels(req, target)} == hashes


def test_staged_build_prepares_weights_once_and_matches_the_model(split2, tmp_path):
    import tvm
    from tvm import relax

    from terrazzo.bundle import TensorSpec
    from terrazzo.bundle._runner import StageRunner, run_pipeline
    from terrazzo.codegen import build_stage, choose_target, compile_module, host_target

    mod, split = split2
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype("float32")
    vm = relax.VirtualMachine(compile_module(mod, host_target()), tvm.cpu())
    want = vm["main"](tvm.runtime.tensor(x)).numpy()

    def specs(names, types):
        return tuple(
            TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in zip(names, types, strict=True)
        )

    choice = choose_target("cpu", dict(host_target()))
    runners, legacy = [], []
    for st in split.stages:
        b = build_stage(st, choice, tmp_path)
        ins, outs = specs(st.inputs, st.input_types), specs(st.outputs, st.output_types)
        r = StageRunner(
            str(b.files["host.so"]), split.weights, st.weights, ins, outs, index=st.index
        )
        assert r.prepared_weights
        runners.append(r)
        # A format-1 library (main takes the raw weights) still runs through StageRunner.
        old = tmp_path / f"old{st.index}.so"
        compile_module(st.mod, host_target()).export_library(str(old))
        r_old = StageRunner(str(old), split.weights, st.weights, ins, outs, index=st.index)
        assert not r_old.prepared_weights
        legacy.append(r_old)
    for rs in (runners, legacy):
        for _ in range(2):  # prepared weights are reused, not consumed, across calls
            got = run_pipeline(rs, {"x": x}, split.outputs)[split.outputs[0]]
            assert np.max(np.abs(got - want)) <= TOL


def _weights_only_stage(n_input: int):
    """``main(x?, w) -> (permute_dims(w),)``: every result computed from the weight alone."""
    from tvm import relax
    from tvm.script import relax as R

    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor((2, 4), "float32"))
    w = relax.Var("w", R.Tensor((4, 8), "float32"))
    params = [x, w] if n_input else [w]
    with bb.function("main", params, attrs={"num_input": n_input}):
        with bb.dataflow():
            t = bb.emit(relax.op.permute_dims(w, [1, 0]))
            out = bb.emit_output(relax.Tuple([t]))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("n_input", [0, 1])
def test_stages_of_weights_alone_are_not_lifted_and_still_build(n_input, tmp_path):
    """A planner may cut a lone weight transpose into its own stage (no inputs, or unused
    ones): LiftTransformParams would leave ``main`` without a body, so such stages keep
    ``main(inputs..., weights...)`` and run through StageRunner unprepared."""
    from terrazzo.bundle import TensorSpec
    from terrazzo.bundle._runner import StageRunner
    from terrazzo.codegen import StageModule, build_stage, choose_target, host_target
    from terrazzo.codegen._build import lift_weight_prep

    mod = _weights_only_stage(n_input)
    assert lift_weight_prep(mod) is mod
    ins = ("x",)[:n_input]
    sm = StageModule(0, mod, ("t",), ins, ("t",), ("w",), (), ())
    b = build_stage(sm, choose_target("cpu", dict(host_target())), tmp_path)
    w = np.arange(32, dtype="float32").reshape(4, 8)
    specs_in = tuple(TensorSpec("x", "float32", (2, 4)) for _ in ins)
    r = StageRunner(
        str(b.files["host.so"]), {"w": w}, ("w",), specs_in, (TensorSpec("t", "float32", (8, 4)),)
    )
    assert not r.prepared_weights
    feed = {"x": np.zeros((2, 4), "float32")} if n_input else {}
    np.testing.assert_array_equal(r(feed)["t"], w.T)
