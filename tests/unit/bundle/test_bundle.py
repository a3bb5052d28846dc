"""The .tzb bundle end to end on a small ONNX graph: compile with a 3-class, 3-stage plan
(cpu, t4, gaudi2), then inspect / verify / run, signing, and every tampering case."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest

from terrazzo.errors import BundleError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _onnx_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = lambda n, s: numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype("float32"), n)  # noqa: E731
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["h3"]),
        helper.make_node("Add", ["h3", "x"], ["y"]),  # skip connection from the input
        helper.make_node("Tanh", ["y"], ["t"]),
        helper.make_node("MatMul", ["t", "W3"], ["u"]),
        helper.make_node("Add", ["u", "y"], ["v"]),  # skip connection across stages
        helper.make_node("Softmax", ["v"], ["out"], axis=1),
    ]
    g = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 16])],
        [w("W1", (16, 32)), w("W2", (32, 16)), w("W3", (16, 16))],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return path


def forced_plan(graph, fleet, sla, devices):
    """A Plan placing consecutive thirds of the ops on ``devices`` (a 3-stage plan)."""
    from terrazzo.placement import build_plan, to_problem

    prob = to_problem(graph, fleet, sla, 1.0)
    n = len(prob.tasks)
    assign = np.array([prob.devices.index(devices[min(len(devices) - 1, i * len(devices) // n)])
                       for i in range(n)])  # fmt: skip
    return build_plan(prob, assign, "forced", 0.0)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from terrazzo.bundle import generate_keypair
    from terrazzo.frontend import from_onnx
    from terrazzo.pipeline import compile_model
    from terrazzo.placement import SLA, Fleet

    d = tmp_path_factory.mktemp("bundle")
    model = _onnx_model(d / "tiny.onnx")
    generate_keypair(d / "key.pem", d / "key.pub.pem")
    generate_keypair(d / "other.pem", d / "other.pub.pem")
    fleet = Fleet.from_dict(
        {"devices": {"cpu": {"count": 2}, "t4": {"count": 1}, "gaudi2": {"count": 1}}}
    )
    sla = SLA(latency_s=0.05)
    graph = from_onnx(model)
    plan = forced_plan(graph, fleet, sla, ["cpu", "t4", "gaudi2"])
    res = compile_model(
        model, fleet, sla, out_path=d / "tiny.tzb", plan=plan, sign_key=d / "key.pem"
    )
    _SIGNER.append(d / "key.pub.pem")  # signed by a key the session's trust does not hold
    return {"dir": d, "model": model, "bundle": res.path, "result": res}


_SIGNER: list[Path] = []


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _write(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _copy_with(src: Path, dst: Path, change=None, drop=(), extra=()) -> Path:
    out = []
    for name, data in _members(src).items():
        if name in drop:
            continue
        out.append(_regular(name, change(name, data) if change else data))
    out.extend(extra)
    return _write(dst, out)


def _tzb_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("tzb-")}


# -- the happy path ------------------------------------------------------------------------


def test_bundle_holds_three_stages_with_targets_and_fallback(built):
    from terrazzo.bundle import open_bundle

    with open_bundle(built["bundle"], trust_key=built["dir"] / "key.pub.pem") as b:
        assert b.signature_verified and b.signed
        stages = b.stages
        assert [s.device for s in stages] == ["cpu", "t4", "gaudi2"]
        assert stages[0].target["kind"] == "llvm" and stages[0].target["mcpu"] == "sapphirerapids"
        assert stages[1].target["kind"] == "cuda" and stages[1].target["arch"] == "sm_75"
        assert "kernels" in stages[1].files and "device" in stages[1].files
        assert "__global__" in (b.root / stages[1].files["kernels"]).read_text()
        if shutil.which("nvcc"):
            assert "fatbin" in stages[1].files  # nvcc compiled the kernels for sm_75
        assert stages[1].fallback_reason is None
        assert stages[2].fallback_reason and "Gaudi" in stages[2].fallback_reason
        members = set(b.manifest["members"])
        assert {"plan.mlir", "tuning/records.jsonl", "reference/host.so"} <= members
        assert all(f"weights/stage{i}.safetensors" in members for i in range(3))
        assert not any(m.endswith((".pkl", ".pt", ".pickle")) for m in members)
        assert "tz." in b.plan_mlir or "module" in b.plan_mlir
        assert b.root.stat().st_mode & 0o777 == 0o700
        root = b.root
    assert not root.exists()  # the private temp dir is removed on close


def test_staged_run_matches_onnxruntime_and_reference(built):
    import onnxruntime as ort

    from terrazzo.bundle import open_bundle

    x = np.random.default_rng(3).standard_normal((4, 16)).astype("float32")
    want = ort.InferenceSession(str(built["model"]), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    with open_bundle(built["bundle"], trust=built["dir"] / "key.pub.pem") as b:
        runners = b.load_stages()
        assert [r.ran_on for r in runners] == ["cpu", "cpu", "cpu"]
        assert runners[1].note and "t4" in runners[1].note  # says the planned GPU is absent
        # a stage planned on a CPU class runs on this CPU: nothing is missing, nothing to say
        assert all(
            r.note is None for r, st in zip(runners, b.stages, strict=True) if st.device == "cpu"
        )
        got = b.run({"x": x}, runners)
        (name,) = got
        assert float(np.abs(got[name] - want).max()) <= 1e-5
        ref = b.load_reference()({"x": x})
        assert float(np.abs(ref[name] - got[name]).max()) <= 1e-5
        # values crossing stages: the skip connection from stage 0 reaches a later stage
        assert set(b.stages[0].outputs[i].name for i in range(len(b.stages[0].outputs))) & set(
            s.name for st in b.stages[1:] for s in st.inputs
        )


def test_single_stage_bundle_uses_its_stage_as_reference(built, tmp_path):
    from terrazzo.bundle import open_bundle, verify_bundle
    from terrazzo.pipeline import compile_model

    res = compile_model(built["model"], {"devices": {"cpu": {"count": 1}}}, "1s",
                        out_path=tmp_path / "one.tzb", solver="homogeneous")  # fmt: skip
    assert len(res.builds) == 1
    with open_bundle(res.path) as b:
        assert b.manifest["reference"]["library"] == "stages/0/host.so"
        assert "reference/host.so" not in b.manifest["members"]
    rep = verify_bundle(res.path)
    assert rep.ok and any("single-stage" in n for n in rep.notes)


def test_verify_bundle_reports_ok(built):
    from terrazzo.bundle import verify_bundle

    rep = verify_bundle(built["bundle"], trust_key=built["dir"] / "key.pub.pem")
    assert rep.ok and rep.numerics == "ok" and rep.signature_verified
    assert rep.max_abs_diff is not None and rep.max_abs_diff <= 1e-5


# -- tampering: each must fail with BundleError naming the member, nothing left behind ------


def _expect_refused(path: Path, match: str, **kw) -> None:
    from terrazzo.bundle import open_bundle

    if "trust_key" not in kw and "allow_unsigned" not in kw:
        kw["trust_key"] = _SIGNER[-1]  # so the check under test is the one that refuses
    before = _tzb_dirs()
    with pytest.raises(BundleError, match=match):
        open_bundle(path, **kw)
    assert _tzb_dirs() == before  # the fresh temp dir was removed


def test_changed_byte_in_library_is_refused(built, tmp_path):
    def flip(name, data):
        if name == "stages/0/host.so":
            i = len(data) // 2
            return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
        return data

    bad = _copy_with(built["bundle"], tmp_path / "flip.tzb", change=flip)
    _expect_refused(bad, r"stages/0/host\.so.*sha256")


def test_changed_weights_are_refused(built, tmp_path):
    def flip(name, data):
        return data[:-1] + bytes([data[-1] ^ 1]) if name == "weights/stage1.safetensors" else data

    _expect_refused(_copy_with(built["bundle"], tmp_path / "w.tzb", change=flip), r"weights/stage1")


def test_missing_member_is_refused(built, tmp_path):
    bad = _copy_with(built["bundle"], tmp_path / "miss.tzb", drop={"stages/1/kernels.cu"})
    _expect_refused(bad, r"stages/1/kernels\.cu.*missing")


def test_extra_member_is_refused(built, tmp_path):
    bad = _copy_with(
        built["bundle"], tmp_path / "extra.tzb", extra=[_regular("stages/0/evil.so", b"x")]
    )
    _expect_refused(bad, r"stages/0/evil\.so.*not listed")


@pytest.mark.parametrize("name", ["../evil.txt", "stages/../../evil.txt", "/tmp/tz-evil.txt"])
def test_traversal_and_absolute_names_are_refused(built, tmp_path, name):
    bad = _copy_with(built["bundle"], tmp_path / "trav.tzb", extra=[_regular(name, b"pwned")])
    _expect_refused(bad, "member '" + name.replace(".", r"\.").replace("/", "/"))
    assert not Path("/tmp/tz-evil.txt").exists()
    assert not (Path(tempfile.gettempdir()) / "evil.txt").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_link_members_are_refused(built, tmp_path, kind):
    link = tarfile.TarInfo("stages/0/link.so")
    link.type = kind
    link.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else "plan.mlir"
    members = [_regular(n, d) for n, d in _members(built["bundle"]).items()] + [(link, None)]
    bad = _write(tmp_path / "link.tzb", members)
    _expect_refused(bad, r"stages/0/link\.so.*links are not allowed")


def test_oversized_member_and_too_many_members_are_refused(built):
    from terrazzo.bundle import BundleLimits

    _expect_refused(built["bundle"], r"reference/host\.so.*exceeds the cap|stages/\d/host\.so.*exceeds the cap",
                    limits=BundleLimits(max_member_bytes=10_000))  # fmt: skip
    _expect_refused(built["bundle"], r"more than 3 members", limits=BundleLimits(max_members=3))
    _expect_refused(
        built["bundle"], r"exceeds \d+ bytes", limits=BundleLimits(max_total_bytes=50_000)
    )


def test_signatures(built, tmp_path):
    from terrazzo.bundle import open_bundle, read_manifest

    d = built["dir"]
    _expect_refused(
        built["bundle"], r"manifest\.sig.*does not verify", trust_key=d / "other.pub.pem"
    )

    # an edited manifest (a renamed model) keeps valid JSON but breaks the signature
    def rename(name, data):
        if name != "manifest.json":
            return data
        m = json.loads(data)
        m["model"]["name"] = "evil"
        return json.dumps(m, indent=1, sort_keys=True).encode()

    edited = _copy_with(built["bundle"], tmp_path / "edit.tzb", change=rename)
    _expect_refused(edited, r"manifest\.sig.*does not verify", trust_key=d / "key.pub.pem")
    unsigned = _copy_with(built["bundle"], tmp_path / "unsigned.tzb", drop={"manifest.sig"})
    _expect_refused(unsigned, r"manifest\.sig.*missing", trust_key=d / "key.pub.pem")
    # unsigned or signed by an unknown key: refused by default (local trust), and with
    # allow_unsigned it opens, said so
    _expect_refused(unsigned, r"is unsigned", trust_key=None)
    _expect_refused(built["bundle"], r"manifest\.sig.*does not verify", trust_key=None)
    with pytest.raises(BundleError, match="is unsigned"):
        read_manifest(unsigned)
    assert read_manifest(unsigned, allow_unsigned=True)["model"]["name"] == "tiny"
    with open_bundle(unsigned, allow_unsigned=True) as b:
        assert not b.signed and not b.signature_verified


def test_garbage_files_are_refused(tmp_path):
    from terrazzo.bundle import open_bundle

    p = tmp_path / "junk.tzb"
    p.write_bytes(b"\x7fELF" + os.urandom(2000))
    with pytest.raises(BundleError):
        open_bundle(p)
    with pytest.raises(BundleError, match="does not exist"):
        open_bundle(tmp_path / "absent.tzb")
    no_manifest = _write(tmp_path / "nm.tzb", [_regular("plan.mlir", b"module {}")])
    with pytest.raises(BundleError, match=r"manifest\.json.*missing"):
        open_bundle(no_manifest)


# -- CLI --------------------------------------------------------------------------------------


def test_cli_inspect_verify_run(built, tmp_path, capsys):
    from terrazzo.cli import main

    b = str(built["bundle"])
    trust = ["--trust", str(built["dir"] / "key.pub.pem")]
    assert main(["inspect", b, "--json"]) == 2  # signed, but by a key this machine does not trust
    assert "does not verify" in capsys.readouterr().err
    assert main(["inspect", b, "--json", *trust]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "tiny" and info["inputs"][0]["name"] == "x" and len(info["outputs"]) == 1
    assert [s["device"] for s in info["stages"]] == ["cpu", "t4", "gaudi2"]
    assert info["stages"][1]["target"]["kind"] == "cuda"
    assert "Gaudi" in info["stages"][2]["fallback_reason"]

    assert main(["verify", b, "--trust", str(built["dir"] / "key.pub.pem")]) == 0
    assert "numerics ok" in capsys.readouterr().out

    x = np.random.default_rng(5).standard_normal((4, 16)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    assert (
        main(
            [
                "run",
                b,
                *trust,
                "--input",
                f"x={tmp_path / 'x.npy'}",
                "-o",
                str(out),
                "--benchmark",
                "3",
                "--json",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["latency_ms_p50"] > 0 and res["latency_ms_p90"] >= res["latency_ms_p50"]
    assert res["random_inputs"] == []
    import onnxruntime as ort

    want = ort.InferenceSession(str(built["model"]), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    got = np.load(out)
    assert float(np.abs(got[got.files[0]] - want).max()) <= 1e-5

    assert main(["run", b, *trust, "--input", "nope=x.npy"]) == 2
    assert "no such input" in capsys.readouterr().err
    assert main(["run", b, *trust, "--json"]) == 0  # a missing input gets random data
    assert json.loads(capsys.readouterr().out)["random_inputs"] == ["x"]


def test_cli_keygen(tmp_path, capsys):
    from terrazzo.cli import main

    assert main(["keygen", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k.pub.pem").read_text().startswith("-----BEGIN PUBLIC KEY")
    assert main(["keygen", str(tmp_path / "k")]) == 2


def test_tuning_database_is_applied_and_carried(built, tmp_path):
    from terrazzo.bundle import open_bundle, verify_bundle
    from terrazzo.codegen import host_target
    from terrazzo.codegen.tuning.database import TuningDatabase, TuningRecord, target_key
    from terrazzo.errors import CodegenError
    from terrazzo.pipeline import compile_model

    db = TuningDatabase(tmp_path / "records.jsonl")
    rec = TuningRecord(workload_hash="0" * 16, target_key=target_key(dict(host_target())),
                       program_json='{"steps": []}', latency_s=1e-3, kernel_name="none")  # fmt: skip
    db.add(rec)
    db.save()
    fleet = {"devices": {"cpu": {"count": 1}}}
    res = compile_model(
        built["model"],
        fleet,
        "1s",
        out_path=tmp_path / "t.tzb",
        solver="homogeneous",
        tuning_db=tmp_path / "records.jsonl",
    )
    with open_bundle(res.path) as b:
        assert b.manifest["tuning"]["count"] == 1
        assert TuningRecord.from_json(b.tuning_records.strip()) == rec
    assert verify_bundle(res.path).ok
    with pytest.raises(CodegenError, match="does not exist"):
        compile_model(
            built["model"],
            fleet,
            "1s",
            out_path=tmp_path / "u.tzb",
            tuning_db=tmp_path / "nope.jsonl",
        )


def test_file_directory_clash_in_an_unsigned_manifest_is_refused(built, tmp_path):
    import hashlib

    def add_listing(name, data):
        if name != "manifest.json":
            return data
        m = json.loads(data)
        m["members"]["plan.mlir/x"] = {"sha256": hashlib.sha256(b"x").hexdigest(), "size_bytes": 1}
        return json.dumps(m).encode()

    bad = _copy_with(built["bundle"], tmp_path / "clash.tzb", change=add_listing,
                     drop={"manifest.sig"}, extra=[_regular("plan.mlir/x", b"x")])  # fmt: skip
    _expect_refused(bad, r"member 'plan\.mlir/x' cannot be extracted", allow_unsigned=True)
