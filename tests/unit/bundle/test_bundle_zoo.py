"""Every zoo ONNX model through compile (3 device classes, 3 stages) → inspect → verify → run,
with `run` matching onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ZOO = ["mlp", "cnn", "bert", "gpt2", "llama"]
FLEET = {"devices": {"cpu": {"count": 4}, "t4": {"count": 2}, "h100": {"count": 1}}}


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo-bundles")


@pytest.mark.parametrize("name", ZOO)
def test_zoo_compile_inspect_verify_run(zoo_dir, name, capsys):
    import onnxruntime as ort

    from terrazzo import zoo
    from terrazzo.cli import main
    from terrazzo.frontend import from_onnx
    from terrazzo.pipeline import compile_model
    from terrazzo.placement import SLA, Fleet, build_plan, to_problem

    onnx_path = zoo.export_onnx(name, zoo_dir)
    graph = from_onnx(onnx_path)
    fleet, sla = Fleet.from_dict(FLEET), SLA(latency_s=1.0)
    prob = to_problem(graph, fleet, sla, 1.0)
    n, classes = len(prob.tasks), ["cpu", "t4", "h100"]
    assign = np.array([prob.devices.index(classes[i * 3 // n]) for i in range(n)])
    plan = build_plan(prob, assign, "forced", 0.0)
    bundle = zoo_dir / f"{name}.tzb"
    res = compile_model(onnx_path, fleet, sla, out_path=bundle, plan=plan)
    assert {b.choice.device for b in res.builds} == set(classes)

    assert main(["inspect", str(bundle), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] and info["inputs"] and info["outputs"]
    assert {s["device"] for s in info["stages"]} == set(classes)
    assert all(s["target"]["kind"] == "cuda" for s in info["stages"] if s["device"] != "cpu")

    assert main(["verify", str(bundle)]) == 0
    assert "numerics ok" in capsys.readouterr().out

    feeds = zoo.example_inputs_numpy(name)
    args = ["run", str(bundle), "-o", str(zoo_dir / f"{name}.npz"), "--json"]
    for k, v in feeds.items():
        np.save(zoo_dir / f"{name}-{k}.npy", v)
        args += ["--input", f"{k}={zoo_dir / f'{name}-{k}.npy'}"]
    assert main(args) == 0
    capsys.readouterr()
    got = np.load(zoo_dir / f"{name}.npz")
    want = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert len(got.files) == len(want)
    for spec, w in zip(info["outputs"], want, strict=True):
        g = got[spec["name"]]
        assert g.shape == w.shape
        assert float(np.abs(g - w).max()) <= 1e-4
