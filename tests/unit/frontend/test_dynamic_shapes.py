"""Dynamic shapes: symbolic dims kept through import, split and build; ranges checked at run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from terrazzo.errors import BundleError, TerrazzoError
from terrazzo.ir import TensorSpec
from terrazzo.ir.shapes import ShapeSpecError, normalize_shapes, parse_shape_arg

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _tiny(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = lambda n, s: numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype("float32"), n)  # noqa: E731
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["h3"]),
        helper.make_node("Add", ["h3", "x"], ["y"]),
        helper.make_node("Tanh", ["y"], ["t"]),
        helper.make_node("MatMul", ["t", "W3"], ["u"]),
        helper.make_node("Add", ["u", "y"], ["v"]),
        helper.make_node("Softmax", ["v"], ["out"], axis=1),
    ]
    g = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 16])],
        [w("W1", (16, 32)), w("W2", (32, 16)), w("W3", (16, 16))],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("x=1..32x3x224x224", ("x", ((1, 32), 3, 224, 224))),
        ("input_ids=1..8x1..128", ("input_ids", ((1, 8), (1, 128)))),
        ("x=4x16", ("x", (4, 16))),
        ("x=2..2x16", ("x", (2, 16))),
    ],
)
def test_shape_spec_parses(text: str, want: tuple) -> None:
    assert parse_shape_arg(text) == want


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("x", "expected NAME=DIMS"),
        ("=1x2", "expected NAME=DIMS"),
        ("x=1xfoo", "dimension 1 is 'foo'"),
        ("x=8..2x3", "1 <= lo <= hi"),
        ("x=0..4", "1 <= lo <= hi"),
    ],
)
def test_bad_shape_specs_are_one_line(text: str, msg: str) -> None:
    with pytest.raises(ShapeSpecError, match=msg) as e:
        parse_shape_arg(text)
    assert "\n" not in str(e.value)


def test_python_shapes_forms() -> None:
    assert normalize_shapes({"x": ((1, 8), 16)}) == {"x": ((1, 8), 16)}
    assert normalize_shapes({"x": "1..8x16"}) == {"x": ((1, 8), 16)}
    assert normalize_shapes(["x=3x16"]) == {"x": (3, 16)}
    with pytest.raises(ShapeSpecError):
        normalize_shapes({"x": ("a", 16)})


def test_tensor_spec_range_and_json() -> None:
    s = TensorSpec("x", "float32", (-1, 16), ("batch", ""), ((1, 64), (16, 16)))
    assert s.accepts_shape((8, 16)) and not s.accepts_shape((65, 16))
    msg = s.shape_error((65, 16))
    assert msg is not None and "'x'" in msg and "1..64" in msg and "[65, 16]" in msg
    assert TensorSpec.from_json(s.to_json()) == s
    assert TensorSpec("y", "float32", (2,)).to_json() == {
        "name": "y",
        "dtype": "float32",
        "shape": [2],
    }


def test_default_range_and_plan_shape(tmp_path: Path) -> None:
    from terrazzo.frontend import from_onnx

    path = _tiny(tmp_path / "t.onnx")
    g = from_onnx(path)  # no shapes: batch gets 1..64 and the plan assumes 64
    attrs = dict(g.attrs)
    assert attrs["dynamic_dims"] == "batch=1..64" and attrs["plan_shape"] == "batch=64"
    assert g.values["x"].shape == (64, 16)
    g = from_onnx(path, shapes={"x": "1..8x16"}, plan_shapes={"x": (3, 16)})
    assert dict(g.attrs)["plan_shape"] == "batch=3" and g.values["x"].shape == (3, 16)
    g = from_onnx(path, shapes={"x": (5, 16)})  # a fixed size: static as before
    assert "dynamic_dims" not in dict(g.attrs) and g.values["x"].shape == (5, 16)
    with pytest.raises(TerrazzoError, match="outside the declared range 1..8"):
        from_onnx(path, shapes={"x": "1..8x16"}, plan_shapes={"x": (9, 16)})


@pytest.fixture(scope="module")
def three_stage(tmp_path_factory):
    from terrazzo.frontend import from_onnx
    from terrazzo.pipeline import compile_model
    from terrazzo.placement import SLA, Fleet
    from tests.unit.bundle.test_bundle import forced_plan

    d = tmp_path_factory.mktemp("dyn")
    path = _tiny(d / "tiny.onnx")
    fleet = Fleet.from_dict({"devices": {"cpu": {"count": 2}, "gaudi2": {"count": 1}}})
    sla = SLA(latency_s=0.05)
    plan = forced_plan(from_onnx(path), fleet, sla, ["cpu", "gaudi2", "cpu"])
    res = compile_model(path, fleet, sla, out_path=d / "t.tzb", plan=plan)
    return path, res


def test_multi_stage_dynamic_bundle_matches_onnxruntime(three_stage) -> None:
    from terrazzo.bundle import open_bundle

    path, res = three_stage
    assert len(res.split.stages) >= 2
    sess = ort.InferenceSession(str(path))
    rng = np.random.default_rng(1)
    with open_bundle(res.path) as b:
        assert b.inputs[0].dims == ("batch", "") and b.inputs[0].bounds[0] == (1, 64)
        assert all(s.inputs[0].shape[0] == -1 for s in b.stages)
        assert b.manifest["plan"]["plan_shape"] == {"batch": 64}
        runners = b.load_stages()
        for n in (1, 3, 8):
            x = rng.standard_normal((n, 16)).astype(np.float32)
            (got,) = b.run({"x": x}, runners).values()
            np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
        with pytest.raises(
            BundleError, match=r"'x' dimension 0 \(batch\) is 65, outside the declared range 1..64"
        ):
            b.run({"x": np.zeros((65, 16), np.float32)}, runners)


def _cli(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from terrazzo.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)


def test_cli_refuses_shape_outside_range_and_bad_specs(three_stage, tmp_path: Path) -> None:
    _, res = three_stage
    np.save(tmp_path / "x.npy", np.zeros((70, 16), np.float32))
    r = _cli("run", str(res.path), "--input", f"x={tmp_path / 'x.npy'}")
    assert r.returncode == 2 and "1..64" in r.stderr and "[70, 16]" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = _cli("run", str(res.path), "--shape", "x=3x16", "--json")
    import json

    assert r.returncode == 0, r.stderr
    assert [v["shape"] for v in json.loads(r.stdout)["outputs"].values()] == [[3, 16]]
    r = _cli("compile", "m.onnx", "--fleet", "f.yaml", "--sla", "1s", "--shape", "x=1..y")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--shape" in r.stderr


def test_compile_with_shape_flag(tmp_path: Path) -> None:
    path = _tiny(tmp_path / "t.onnx")
    (tmp_path / "fleet.yaml").write_text("devices:\n  cpu: {count: 1}\n")
    out = tmp_path / "t.tzb"
    r = _cli("compile", str(path), "--fleet", str(tmp_path / "fleet.yaml"), "--sla", "1s",
             "--shape", "x=1..16x16", "--plan-shape", "x=4x16", "-o", str(out), "--no-reference")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "batch 1..16" in r.stdout and "batch=4" in r.stdout
    from terrazzo.bundle import open_bundle

    sess = ort.InferenceSession(str(path))
    with open_bundle(out) as b:
        assert b.inputs[0].bounds[0] == (1, 16)
        x = np.random.default_rng(2).standard_normal((16, 16)).astype(np.float32)
        (got,) = b.run({"x": x}).values()
        np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
        with pytest.raises(BundleError, match="1..16"):
            b.run({"x": np.zeros((17, 16), np.float32)})


def _bert_onnx(path: Path) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64, attn_implementation="eager")  # fmt: skip
    torch.manual_seed(0)

    class W(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = transformers.BertModel(cfg)

        def forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
            return self.m(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)

    axes = {0: "batch", 1: "seq"}
    ids = torch.randint(0, 100, (2, 8))
    torch.onnx.export(W().eval(), (ids, torch.ones_like(ids)), str(path),
                      input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state", "pooler_output"],
                      dynamic_axes={"input_ids": axes, "attention_mask": axes,
                                    "last_hidden_state": axes, "pooler_output": {0: "batch"}},
                      dynamo=False, opset_version=17)  # fmt: skip
    return path


@pytest.mark.slow
def test_dynamic_batch_and_sequence_bert_matches_onnxruntime(tmp_path: Path) -> None:
    from terrazzo.bundle import open_bundle
    from terrazzo.pipeline import compile_model
    from terrazzo.placement import SLA, Fleet

    path = _bert_onnx(tmp_path / "bert.onnx")
    fleet = Fleet.from_dict({"devices": {"cpu": {"count": 2}}})
    sla = SLA(latency_s=1.0)
    res = compile_model(path, fleet, sla, out_path=tmp_path / "b.tzb",
                        shapes={"input_ids": "1..8x1..32", "attention_mask": "1..8x1..32"},
                        include_reference=False)  # fmt: skip
    # Range(0, seq) keeps the symbol, so the whole model is one symbolic stage (before,
    # run-time Range lengths cut it into 7 stages at each data-dependent size).
    assert len(res.split.stages) == 1
    sess = ort.InferenceSession(str(path))
    rng = np.random.default_rng(3)
    with open_bundle(res.path) as b:
        runners = b.load_stages()
        for bs, sl in ((1, 5), (3, 8), (8, 32), (2, 1)):
            feeds = {"input_ids": rng.integers(0, 100, (bs, sl)).astype(np.int64),
                     "attention_mask": np.ones((bs, sl), np.int64)}  # fmt: skip
            feeds["attention_mask"][0, -1] = 0 if sl > 1 else 1
            got = list(b.run(feeds, runners).values())
            for g, r in zip(got, sess.run(None, feeds), strict=True):
                np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
        with pytest.raises(BundleError, match="disagree on dimension 'seq'"):
            b.run({"input_ids": np.zeros((2, 4), np.int64),
                   "attention_mask": np.ones((2, 5), np.int64)}, runners)  # fmt: skip


def test_torch_module_with_dynamic_dims() -> None:
    torch = pytest.importorskip("torch")
    import tempfile

    from terrazzo.bundle import open_bundle
    from terrazzo.frontend import from_torch
    from terrazzo.pipeline import compile_model

    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(16, 8)

        def forward(self, x, mask):  # type: ignore[no-untyped-def]
            return torch.relu(self.lin(x)).reshape(x.shape[0] * 2, 4) * mask.sum()

    torch.manual_seed(0)
    m = M().eval()
    ex = (torch.randn(1, 16), torch.randn(1, 3))  # size 1: traced at 2, declared 1..32
    g = from_torch(m, ex, shapes={"x": "1..32x16", "mask": "1..32x3"})
    assert dict(g.attrs)["dynamic_dims"] == "batch=1..32,mask_d0=1..32"
    with tempfile.TemporaryDirectory() as d:
        res = compile_model(m, {"devices": {"cpu": {"count": 1}}}, 1.0, out_path=Path(d) / "m.tzb",
                            example_inputs=ex, shapes={"x": "1..32x16", "mask": "1..32x3"},
                            include_reference=False)  # fmt: skip
        with open_bundle(res.path) as b:
            for n in (1, 5, 31):
                x, k = torch.randn(n, 16), torch.randn(n + 1, 3)
                (got,) = b.run({"x": x.numpy(), "mask": k.numpy()}).values()
                with torch.no_grad():
                    ref = m(x, k).numpy()
                np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_served_request_outside_range_is_invalid_argument() -> None:
    from terrazzo.runtime.protos import grpc_service_pb2 as pb
    from terrazzo.runtime.tensors import TensorError, decode_inputs

    spec = TensorSpec("x", "float32", (-1, 2), ("batch", ""), ((1, 4), (2, 2)))

    def req(n: int) -> object:
        r = pb.ModelInferRequest(model_name="m")
        t = r.inputs.add()
        t.name, t.datatype = "x", "FP32"
        t.shape.extend([n, 2])
        r.raw_input_contents.append(b"\0" * (4 * 2 * n))
        return r

    assert decode_inputs(req(3), {"x": spec}, "m")["x"].shape == (3, 2)
    with pytest.raises(
        TensorError, match=r"'x' dimension 0 \(batch\) is 5, outside the declared range 1..4"
    ) as e:
        decode_inputs(req(5), {"x": spec}, "m")
    assert e.value.code.name == "INVALID_ARGUMENT"
