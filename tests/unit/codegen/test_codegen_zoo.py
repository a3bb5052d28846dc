"""Zoo models split into 2 and 4 stages: staged = whole model (≤ 1e-5) and ≈ onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ZOO = ["mlp", "cnn", "bert", "gpt2", "llama"]


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo")


def _stage_runner(stage, weights):
    import tvm
    from tvm import relax

    from terrazzo.codegen import compile_module, host_target

    vm = relax.VirtualMachine(compile_module(stage.mod, host_target()), tvm.cpu())
    ws = [tvm.runtime.tensor(np.ascontiguousarray(weights[w])) for w in stage.weights]

    def run(env):
        out = vm["main"](*[tvm.runtime.tensor(env[i]) for i in stage.inputs], *ws)
        outs = [out] if hasattr(out, "numpy") else list(out)  # one output: the tensor itself
        return dict(zip(stage.outputs, [o.numpy() for o in outs], strict=True))

    return run


def _run_split(split, inputs):
    env = dict(inputs)
    for st in split.stages:
        env.update(_stage_runner(st, split.weights)(env))
    return [env[o] for o in split.outputs]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_staged_equals_whole_and_onnxruntime(zoo_dir, name):
    import onnxruntime as ort

    from terrazzo import zoo
    from terrazzo.codegen import split_relax
    from terrazzo.frontend import from_onnx

    path = zoo.export_onnx(name, zoo_dir)
    graph = from_onnx(path)
    inputs = zoo.example_inputs_numpy(name)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, inputs)
    ops = graph.op_names
    whole = _run_split(split_relax(graph.relax_mod, {o: 0 for o in ops}), inputs)
    assert len(whole) == len(want)
    for w, r in zip(whole, want, strict=True):
        assert w.shape == r.shape
        assert float(np.abs(w - r).max()) <= 1e-4
    for k in (2, 4):  # 3-stage splits of every zoo model: test_bundle_zoo.py
        bounds = np.linspace(0, len(ops), k + 1).astype(int)
        assignment = {
            o: int(np.searchsorted(bounds, i, side="right") - 1) for i, o in enumerate(ops)
        }
        split = split_relax(graph.relax_mod, assignment)
        assert len(split.stages) == k
        for g, w in zip(_run_split(split, inputs), whole, strict=True):
            assert float(np.abs(g - w).max()) <= 1e-5, f"{name}: {k} stages"
