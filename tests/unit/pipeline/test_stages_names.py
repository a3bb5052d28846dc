"""Rank-0 tensors crossing stages, the model's names kept end to end, and ``verify`` against
independent references (issue 13, deliverables 3 and 4).

The models are built here with onnx.helper and torch; every compiled result is compared with
onnxruntime (or torch), never with TVM alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

FLEET = {
    "devices": {"cpu": {"count": 8}, "t4": {}, "l4": {"count": 4}},
    "pricing": {"mode": "cloud"},
}


def multi_io_onnx(path: Path) -> Path:
    """Several outputs (float, rank-0, bool, int64, an input returned as it is), an int64
    input, names with dots and a rank-0 value read by a later op (so it crosses a cut)."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    nodes = [
        h.make_node("Relu", ["x.in"], ["output"]),
        h.make_node("ReduceSum", ["x.in"], ["total"], keepdims=0),
        h.make_node("Mul", ["x.in", "total"], ["scaled"]),
        h.make_node("Greater", ["scaled", "zero"], ["positive"]),
        h.make_node("Add", ["ids", "one"], ["ids_plus"]),
        h.make_node("Identity", ["x.in"], ["same"]),
    ]
    inits = [h.make_tensor("zero", T.FLOAT, [], [0.0]), h.make_tensor("one", T.INT64, [], [1])]
    outs = [
        h.make_tensor_value_info("output", T.FLOAT, [2, 3]),
        h.make_tensor_value_info("total", T.FLOAT, []),
        h.make_tensor_value_info("positive", T.BOOL, [2, 3]),
        h.make_tensor_value_info("ids_plus", T.INT64, [4]),
        h.make_tensor_value_info("same", T.FLOAT, [2, 3]),
    ]
    ins = [
        h.make_tensor_value_info("x.in", T.FLOAT, [2, 3]),
        h.make_tensor_value_info("ids", T.INT64, [4]),
    ]
    m = h.make_model(
        h.make_graph(nodes, "multi", ins, outs, inits), opset_imports=[h.make_opsetid("", 17)]
    )
    m.ir_version = 9
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


MULTI_INPUTS = ("x.in", "ids")
MULTI_OUTPUTS = ("output", "total", "positive", "ids_plus", "same")


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def cut_every_op(placed: str, devices: tuple[str, ...]) -> tuple[str, int]:
    """The placed IR with every op in a stage of its own, devices taken in turn."""
    out, n = [], 0
    for line in placed.splitlines():
        if '{name = "' in line and "stage = " in line:
            line = re.sub(r"stage = \d+", f"stage = {n}", line)
            line = re.sub(r'device = "[^"]*"', f'device = "{devices[n % len(devices)]}"', line)
            n += 1
        out.append(line)
    return "\n".join(out) + "\n", n


def cli(*args: str) -> tuple[int, str]:
    import contextlib

    from terrazzo.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(list(args))
    return rc, buf.getvalue()


# -- fast: names through the frontends ---------------------------------------------------------
def test_onnx_graph_keeps_input_and_output_names(tmp_path: Path) -> None:
    from terrazzo.frontend import build_cpu, from_onnx

    path = multi_io_onnx(tmp_path / "multi.onnx")
    g = from_onnx(path)
    assert g.inputs == MULTI_INPUTS and g.outputs == MULTI_OUTPUTS
    feeds = {"x.in": np.array([[1, -2, 3], [-4, 5, 0.5]], np.float32), "ids": np.arange(4)}
    got = build_cpu(g)(feeds)
    want = ort_run(path, feeds)
    assert list(got) == list(MULTI_OUTPUTS)
    for n in MULTI_OUTPUTS:
        assert got[n].dtype == want[n].dtype and got[n].shape == want[n].shape, n
        np.testing.assert_allclose(got[n], want[n], rtol=1e-6)
    assert got["total"].shape == () and got["positive"].dtype == np.bool_


def test_torch_output_names_follow_what_forward_returns() -> None:
    import torch
    from torch import nn

    from terrazzo.frontend import from_torch

    class Dict(nn.Module):
        def forward(self, x: Any, n: Any) -> Any:
            return {"logits": x * 2, "aux": (x.sum(), n + 1)}

    class Pair(nn.Module):
        def forward(self, x: Any) -> Any:
            return x + 1, x > 0

    x, n = torch.randn(2, 3), torch.arange(4)
    g = from_torch(Dict(), (x, n))
    assert g.inputs == ("x", "n")
    assert g.outputs == ("logits", "aux.0", "aux.1")
    assert [g.values[o].shape for o in g.outputs] == [(2, 3), (), (4,)]
    assert g.values["aux.1"].dtype == "int64"
    assert from_torch(Pair(), (x,)).outputs == ("output_0", "output_1")


def test_wire_codec_round_trips_rank0_empty_int64_and_bool() -> None:
    from terrazzo.runtime.tensors import from_numpy, to_numpy

    for arr in (
        np.array(3.5, np.float32),
        np.zeros((0, 4), np.float32),
        np.array([-(2**62), 7], np.int64),
        np.array([[True, False]]),
        np.array(True),
        np.arange(6, dtype=">f4").reshape(2, 3).T,  # big-endian, not C-contiguous
    ):
        w = from_numpy(arr)
        back = to_numpy("t", w)
        assert back.shape == arr.shape and w.shape == arr.shape
        assert back.dtype == arr.dtype.newbyteorder("=") and np.array_equal(back, arr)


def test_stage_runner_keeps_rank0_arrays(tmp_path: Path) -> None:
    """The bug: np.ascontiguousarray(0-d) is shape (1,), which a stage taking R.Tensor(()) refuses."""
    from terrazzo.bundle import StageRunner
    from terrazzo.codegen import compile_module, host_target, split_relax
    from terrazzo.frontend import from_onnx

    g = from_onnx(multi_io_onnx(tmp_path / "m.onnx"))
    names = [o.name for o in g.ops]
    split = split_relax(g.relax_mod, {n: int(n != "total") for n in names})
    st = split.stages[1]
    assert "total" in st.inputs  # the rank-0 value crosses the cut
    lib = tmp_path / "s1.so"
    compile_module(st.mod, host_target()).export_library(str(lib))
    from terrazzo.ir import TensorSpec

    specs = [
        TensorSpec(n, t.dtype, t.shape) for n, t in zip(st.inputs, st.input_types, strict=True)
    ]
    outs = [
        TensorSpec(n, t.dtype, t.shape) for n, t in zip(st.outputs, st.output_types, strict=True)
    ]
    r = StageRunner(str(lib), split.stage_weights(1), st.weights, tuple(specs), tuple(outs))
    x = np.array([[1, -2, 3], [-4, 5, 0.5]], np.float32)
    feeds = {"x.in": x, "ids": np.arange(4), "total": np.array(x.sum(), np.float32)}
    got = r({s.name: feeds[s.name] for s in specs})
    assert got["positive"].tolist() == (x * x.sum() > 0).tolist()


# -- the CLI path: every op its own stage, names in manifest, run, inspect, verify ------------
@pytest.fixture(scope="module")
def multi_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("multi")
    model = multi_io_onnx(d / "multi.onnx")
    fleet = d / "fleet.yaml"
    fleet.write_text(json.dumps(FLEET))
    placed = d / "placed.mlir"
    rc, _ = cli("plan", str(model), "--fleet", str(fleet), "--sla", "50ms", "-o", str(placed))
    assert rc == 0
    text, n = cut_every_op(placed.read_text(), ("cpu",))
    assert n >= 6
    cut = d / "cut.mlir"
    cut.write_text(text)
    bundle = d / "multi.tzb"
    rc, _ = cli("compile", str(cut), "--fleet", str(fleet), "-o", str(bundle), "--json")
    assert rc == 0
    return {"dir": d, "model": model, "bundle": bundle}


def test_manifest_inspect_and_run_use_the_models_names(multi_bundle: dict[str, Path]) -> None:
    from terrazzo.bundle import open_bundle

    d, bundle = multi_bundle["dir"], multi_bundle["bundle"]
    with open_bundle(bundle) as b:
        assert [s.name for s in b.inputs] == list(MULTI_INPUTS)
        assert [(s.name, s.dtype, list(s.shape)) for s in b.outputs] == [
            ("output", "float32", [2, 3]),
            ("total", "float32", []),
            ("positive", "bool", [2, 3]),
            ("ids_plus", "int64", [4]),
            ("same", "float32", [2, 3]),
        ]
        assert len(b.stages) >= 6
        crossing = {s.name for st in b.stages[1:] for s in st.inputs}
        assert "total" in crossing  # a rank-0 tensor crosses a stage boundary
    rc, out = cli("inspect", str(bundle), "--json")
    assert rc == 0
    info = json.loads(out)
    assert [o["name"] for o in info["outputs"]] == list(MULTI_OUTPUTS)
    assert [i["name"] for i in info["inputs"]] == list(MULTI_INPUTS)

    x = np.array([[1, -2, 3], [-4, 5, 0.5]], np.float32)
    ids = np.array([0, 5, -3, 2**40], np.int64)
    np.save(d / "x.npy", x)
    np.save(d / "ids.npy", ids)
    rc, out = cli("run", str(bundle), "--input", f"x.in={d / 'x.npy'}", "--input",
                  f"ids={d / 'ids.npy'}", "-o", str(d / "out.npz"), "--json")  # fmt: skip
    assert rc == 0
    assert list(json.loads(out)["outputs"]) == list(MULTI_OUTPUTS)
    got = dict(np.load(d / "out.npz"))
    want = ort_run(multi_bundle["model"], {"x.in": x, "ids": ids})
    assert list(got) == list(MULTI_OUTPUTS)
    for n in MULTI_OUTPUTS:
        assert got[n].shape == want[n].shape and got[n].dtype == want[n].dtype, n
        np.testing.assert_allclose(got[n], want[n], rtol=1e-6, err_msg=n)


def test_multi_stage_bundle_matches_onnxruntime_on_nan_and_inf_inputs(
    multi_bundle: dict[str, Path],
) -> None:
    from terrazzo.bundle import compare_arrays, open_bundle

    x = np.array([[np.nan, -2, 3], [np.inf, 5, -np.inf]], np.float32)
    y = np.array([[1, -np.inf, 3], [-4, 5, 0.5]], np.float32)
    ids = np.arange(4, dtype=np.int64)
    with open_bundle(multi_bundle["bundle"]) as b:
        runners = b.load_stages()
        for feed in (x, y):
            got = b.run({"x.in": feed, "ids": ids}, runners)
            want = ort_run(multi_bundle["model"], {"x.in": feed, "ids": ids})
            for n in MULTI_OUTPUTS:
                assert compare_arrays(got[n], want[n]) == (0.0, None), (n, got[n], want[n])
        got = b.run({"x.in": x, "ids": ids}, runners)
        assert np.isnan(got["output"][0, 0]) and np.isnan(got["total"])  # relu(NaN), sum(NaN…)
        assert np.isneginf(b.run({"x.in": y, "ids": ids}, runners)["total"])


def test_verify_checks_each_stage_and_the_stored_onnxruntime_outputs(
    multi_bundle: dict[str, Path],
) -> None:
    rc, out = cli("verify", str(multi_bundle["bundle"]), "--json")
    assert rc == 0
    rep = json.loads(out)
    assert rep["numerics"] == "ok" and rep["reference"].startswith("onnxruntime ")
    whats = [c["what"] for c in rep["checks"]]
    assert whats[0].startswith("end to end vs onnxruntime")
    stage_checks = [w for w in whats if w.startswith("stage ")]
    assert len(stage_checks) >= 6  # every stage checked alone
    assert all(c["ok"] for c in rep["checks"])


def _rewrite_member(src: Path, dst: Path, member: str, data: bytes) -> None:
    """Copy a bundle with one member replaced, the manifest's hash for it updated and the
    manifest signed again with the local key (the tamper is the test's own)."""
    from terrazzo.bundle import local_key_paths
    from terrazzo.bundle._sign import sign_bytes

    with tarfile.open(src) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    manifest = json.loads(members["manifest.json"])
    members[member] = data
    manifest["members"][member] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
    }
    members["manifest.json"] = json.dumps(manifest, indent=1, sort_keys=True).encode()
    if "manifest.sig" in members:
        members["manifest.sig"] = sign_bytes(members["manifest.json"], local_key_paths()[0])
    with tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def test_verify_says_which_way_a_mismatch_goes(multi_bundle: dict[str, Path]) -> None:
    """A stored reference that disagrees: exit 1, 'max abs diff X > tolerance Y', naming it."""
    from safetensors.numpy import load, save

    from terrazzo.bundle import open_bundle

    with open_bundle(multi_bundle["bundle"]) as b:
        arrays = load(b.member_path("reference/io.safetensors").read_bytes())
    arrays["output/output"] = arrays["output/output"] + np.float32(0.25)
    bad = multi_bundle["dir"] / "bad.tzb"
    _rewrite_member(multi_bundle["bundle"], bad, "reference/io.safetensors", save(arrays))
    rc, out = cli("verify", str(bad))
    assert rc == 1
    line = next(ln for ln in out.splitlines() if "FAIL" in ln)
    assert "end to end vs onnxruntime" in line
    assert "max abs diff 0.25 > tolerance 1e-05" in line and "output 'output'" in line
    assert "mismatch" in out.splitlines()[0]


def test_compare_arrays_is_ieee_aware() -> None:
    from terrazzo.bundle import compare_arrays

    nan, inf = np.nan, np.inf
    f = np.float32
    assert compare_arrays(np.array([nan, 1], f), np.array([nan, 1], f)) == (0.0, None)
    d, why = compare_arrays(np.array([0, 1], f), np.array([nan, 1], f))
    assert d == inf and why is not None and "NaN" in why
    d, why = compare_arrays(np.array([inf, 1], f), np.array([-inf, 1], f))
    assert d == inf and why is not None and "infinity" in why
    assert compare_arrays(np.array([inf, 1], f), np.array([inf, 1.5], f))[0] == 0.5
    assert compare_arrays(np.array(2.0, f), np.array([2.0], f))[0] == inf  # rank matters
    assert compare_arrays(np.array([3, 9], np.int64), np.array([3, 2], np.int64))[0] == 7
    assert compare_arrays(np.array([True]), np.array([False]))[0] == 1.0
    assert compare_arrays(np.zeros((0, 3), f), np.zeros((0, 3), f)) == (0.0, None)


def test_single_stage_torch_bundle_is_verified_against_torch(tmp_path: Path) -> None:
    """One stage is the whole model, so the whole-model build is no independent check: the
    outputs torch computed at compile time are (and a wrong one fails)."""
    import torch
    from torch import nn

    from terrazzo.bundle import open_bundle, verify_bundle
    from terrazzo.pipeline import compile as tz_compile

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x: Any, k: Any) -> Any:
            y = self.fc(x)
            return {"logits": torch.relu(y), "argmax": y.argmax(-1) + k}

    torch.manual_seed(0)
    x, k = torch.randn(2, 8), torch.tensor([1, 2])
    path = tz_compile(Two(), {"devices": {"cpu": {"count": 1}}}, "50ms", 1.0,
                      tmp_path / "two.tzb", example_inputs=(x, k))  # fmt: skip
    with open_bundle(path) as b:
        assert len(b.stages) == 1
        assert [o.name for o in b.outputs] == ["logits", "argmax"]
        assert [(i.name, i.dtype) for i in b.inputs] == [("x", "float32"), ("k", "int64")]
    rep = verify_bundle(path)
    assert rep.ok and rep.reference is not None and rep.reference.startswith("torch ")
    assert rep.checks[0].what.startswith("end to end vs torch") and rep.checks[0].ok
    assert rep.checks[0].max_abs_diff <= 1e-5
