"""A graph output that is a constant (``gv = (y, metadata[0])``) splits, builds and runs."""

from __future__ import annotations

import numpy as np


def test_constant_graph_output_is_exported_by_its_tuple_stage() -> None:
    import tvm
    from tvm import relax

    from terrazzo.codegen import compile_module, host_target, split_relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2,), "float32"))
    const = np.array([1.5, -2.0], np.float32)
    with bb.function("main", [x], attrs={"num_input": 1}):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.relu(x), name_hint="y")
            gv = bb.emit_output(relax.Tuple([y, relax.const(const)]))
        bb.emit_func_output(gv)
    split = split_relax(bb.get(), {"y": 0, "gv": 0})
    assert split.outputs == ("y", "gv.1")
    st = split.stages[0]
    vm = relax.VirtualMachine(compile_module(st.mod, host_target()), tvm.cpu())
    weights = [tvm.runtime.tensor(split.weights[w]) for w in st.weights]
    result = vm["main"](tvm.runtime.tensor(np.array([-1.0, 3.0], np.float32)), *weights)
    got = {n: r.numpy() for n, r in zip(st.outputs, result, strict=True)}
    np.testing.assert_array_equal(got["y"], [0.0, 3.0])
    np.testing.assert_array_equal(got["gv.1"], const)
