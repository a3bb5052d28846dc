"""Hostile bundles and inputs through the real CLI: each is refused in one line with exit 2, no
code from the bundle runs, and nothing is left in the temp dir.

The bundles are written with ``write_bundle`` around a stage library built here with the system
C compiler whose constructor writes a marker file: if the library is ever loaded (dlopen), the
marker exists. ``run --allow-unsigned`` is the positive control that shows the marker works.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from terrazzo.errors import BundleError

CLI = "import sys; from terrazzo.cli import main; sys.exit(main())"
REPO = Path(__file__).resolve().parents[3]

_MARKER_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void tz_marker(void) {
    const char *p = getenv("TZ_MARKER");
    if (!p) return;
    FILE *f = fopen(p, "w");
    if (f) { fputs("constructor ran\n", f); fclose(f); }
}
"""


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Keys, the marker library and bundles around it: unsigned, signed by the trusted local
    key, signed by an untrusted key, and with 64 zero bytes as the signature."""
    from terrazzo.bundle import StageContent, TensorSpec, generate_keypair, write_bundle

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:  # pragma: no cover - the project's machines have a C compiler
        pytest.fail("no C compiler (cc) to build the marker library")
    d = tmp_path_factory.mktemp("trust")
    (d / "marker.c").write_text(_MARKER_C)
    lib = d / "marker.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(d / "marker.c")], check=True)
    generate_keypair(d / "other.pem", d / "other.pub.pem")
    generate_keypair(d / "team.pem", d / "team.pub.pem")
    x, y = TensorSpec("x", "float32", (2,)), TensorSpec("y", "float32", (2,))
    stage = StageContent(
        index=0, device="cpu", target={"kind": "llvm"}, fallback_reason=None, inputs=(x,),
        outputs=(y,), weights={"w": np.zeros(2, np.float32)}, files={"host.so": lib},
    )  # fmt: skip

    def bundle(name: str, sign_key) -> Path:
        return write_bundle(
            d / name, name="marker", inputs=[x], outputs=[y], stages=[stage],
            plan_mlir="module {}\n", sign_key=sign_key,
        )  # fmt: skip

    out = {
        "dir": d,
        "unsigned": bundle("unsigned.tzb", None),
        "local": bundle("local.tzb", True),
        "other": bundle("other.tzb", d / "other.pem"),
        "team": bundle("team.tzb", d / "team.pem"),
    }
    members = _members(out["local"])
    members["manifest.sig"] = bytes(64)
    out["zeros"] = _write(d / "zeros.tzb", [_regular(n, b) for n, b in members.items()])
    return out


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _regular(name: str, data: bytes, **pax: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.pax_headers = dict(pax)
    return info, data


def _write(path: Path, members, fmt=tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _manifest_for(members: dict[str, bytes]) -> bytes:
    """A well-formed manifest listing ``members`` (so only the attack can refuse the bundle)."""
    return json.dumps({
        "format": "terrazzo-bundle", "format_version": 2, "model": {"name": "m"},
        "inputs": [], "outputs": [], "stages": [],
        "members": {n: {"sha256": hashlib.sha256(b).hexdigest(), "size_bytes": len(b)}
                    for n, b in members.items()},
    }).encode()  # fmt: skip


def cli(args, tmp_path: Path, env: dict[str, str] | None = None, timeout: float = 180):
    """Run ``terrazzo ARGS`` in a fresh process with its own empty TMPDIR and the marker path.

    Returns:
        (returncode, stderr lines, stdout, the marker file, the TMPDIR).
    """
    tmpdir = tmp_path / f"tmpdir-{len(list(tmp_path.glob('tmpdir-*')))}"
    tmpdir.mkdir()
    marker = tmp_path / "marker"
    marker.unlink(missing_ok=True)
    e = {**os.environ, "TMPDIR": str(tmpdir), "TZ_MARKER": str(marker),
         "PYTHONPATH": str(REPO), **(env or {})}  # fmt: skip
    p = subprocess.run(
        [sys.executable, "-c", CLI, *map(str, args)], env=e, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    return p.returncode, p.stderr.strip().splitlines(), p.stdout, marker, tmpdir


def assert_refused(args, tmp_path, match: str, env=None, command: str | None = None) -> str:
    """rc 2, exactly one stderr line (``terrazzo CMD: error: ...`` matching), no marker, and an
    empty temp dir."""
    import re

    rc, err, out, marker, tmpdir = cli(args, tmp_path, env)
    assert rc == 2, (rc, err, out[-2000:])
    assert len(err) == 1, err
    assert err[0].startswith(f"terrazzo {command or args[0]}: error: "), err
    assert re.search(match, err[0]), err[0]
    assert not marker.exists(), "code from the bundle ran"
    assert os.listdir(tmpdir) == [], os.listdir(tmpdir)
    return err[0]


# -- 1. signed by default: nothing unverified loads ---------------------------------------------

COMMANDS = ["run", "verify", "inspect", "serve"]


def _argv(command: str, bundle: Path, *extra: str) -> list[str]:
    if command == "serve":  # OS-picked ports: a serve that wrongly started would not collide
        return ["serve", str(bundle), "--port", "0", "--metrics-port", "0", *extra]
    return [command, str(bundle), *extra]


@pytest.mark.parametrize("command", COMMANDS)
def test_unsigned_bundle_is_refused_and_its_code_never_loads(kit, tmp_path, command):
    assert_refused(_argv(command, kit["unsigned"]), tmp_path, r"is unsigned.*--allow-unsigned")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("which", ["other", "zeros"])
def test_untrusted_or_zero_signature_is_refused(kit, tmp_path, command, which):
    """Another key's signature, or 64 zero bytes, used to pass as 'present, not checked'."""
    assert_refused(_argv(command, kit[which]), tmp_path, r"manifest\.sig.*does not verify")


def test_allow_unsigned_loads_the_code_with_one_warning(kit, tmp_path):
    """Positive control: the marker library's constructor does run once the policy lets it."""
    rc, err, _, marker, tmpdir = cli(["run", kit["unsigned"], "--allow-unsigned"], tmp_path)
    assert marker.exists()  # the library was dlopened: the refusals above are real
    assert err[0].startswith("terrazzo run: warning: --allow-unsigned:")
    assert "unsigned" in err[0] and "unverified" in err[0]
    # not a TVM library: refused in one line after loading, extraction removed
    assert rc == 2 and len(err) == 2 and "not a loadable TVM library" in err[1], err
    assert os.listdir(tmpdir) == []


def test_inspect_and_verify_with_allow_unsigned_report_it(kit, tmp_path):
    rc, err, out, marker, _ = cli(["inspect", kit["other"], "--allow-unsigned", "--json"], tmp_path)
    assert rc == 0 and len(err) == 1 and "no trusted key verifies" in err[0]
    assert json.loads(out)["signature"].startswith("does not verify")
    assert not marker.exists()  # inspect never loads code, even when allowed


def test_trusted_keys_come_from_flag_env_and_trust_dir(kit, tmp_path):
    team, d = kit["team"], kit["dir"]
    # the local trust does not know the team key
    assert_refused(["inspect", team], tmp_path, r"does not verify")
    # --trust (and the old serve spelling --trust-key) names it
    for flag in ("--trust", "--trust-key"):
        rc, err, out, _, _ = cli(["inspect", team, flag, d / "team.pub.pem", "--json"], tmp_path)
        assert rc == 0 and err == [], err
        assert json.loads(out)["signature"].startswith("verified")
    # --trust replaces the local trust: the locally signed bundle is then refused
    assert_refused(["inspect", kit["local"], "--trust", d / "team.pub.pem"], tmp_path,
                   r"does not verify")  # fmt: skip
    # TERRAZZO_TRUST: files or directories
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(d / "team.pub.pem", keys / "team.pem")
    rc, err, _, _, _ = cli(["inspect", team], tmp_path, env={"TERRAZZO_TRUST": str(keys)})
    assert rc == 0 and err == [], err
    # a trust directory under another TERRAZZO_HOME
    home = tmp_path / "home"
    (home / "trusted").mkdir(parents=True)
    shutil.copy(d / "team.pub.pem", home / "trusted" / "team.pem")
    rc, err, _, _, _ = cli(["inspect", team], tmp_path, env={"TERRAZZO_HOME": str(home)})
    assert rc == 0 and err == [], err
    assert_refused(["inspect", kit["local"]], tmp_path, r"does not verify",
                   env={"TERRAZZO_HOME": str(home)})  # fmt: skip
    # an empty home: no trusted key at all, and the message says where to put one
    empty = tmp_path / "empty-home"
    msg = assert_refused(["inspect", team], tmp_path, r"no trusted keys",
                         env={"TERRAZZO_HOME": str(empty)})  # fmt: skip
    assert "--trust" in msg and str(empty / "trusted") in msg


def test_python_api_follows_the_same_policy(kit):
    from terrazzo import open_bundle
    from terrazzo.bundle import read_manifest, verify_bundle

    for which, match in [("unsigned", "is unsigned"), ("other", "does not verify"),
                         ("zeros", "does not verify")]:  # fmt: skip
        for fn in (open_bundle, read_manifest, verify_bundle):
            with pytest.raises(BundleError, match=match):
                fn(kit[which])
    with open_bundle(kit["local"]) as b:  # compile's default: the local key, trusted here
        assert b.signature_verified and b.signer is not None
        assert b.worker_trust() == {"keys": [b.signer.raw.hex()], "allow_unsigned": False}
    with open_bundle(kit["team"], trust=kit["dir"] / "team.pub.pem") as b:
        assert b.signature_verified
    with open_bundle(kit["team"], trust_key=kit["dir"] / "team.pub.pem") as b:  # older name
        assert b.signature_verified
    with open_bundle(kit["unsigned"], allow_unsigned=True) as b:
        assert not b.signed and not b.signature_verified
        assert b.worker_trust() == {"keys": [], "allow_unsigned": True}


def test_local_key_is_private_and_trusted(kit, tmp_path):
    from terrazzo.bundle import local_key_paths, trust_dir

    priv, pub = local_key_paths()
    assert str(priv).startswith(os.environ["TERRAZZO_HOME"])  # tests never touch the real home
    assert priv.stat().st_mode & 0o777 == 0o600
    assert (trust_dir() / "local.pub.pem").read_bytes() == pub.read_bytes()
    rc, err, out, _, _ = cli(["keygen"], tmp_path)
    assert rc == 0 and str(priv) in out and err == []


# -- 2. extraction that cannot be inflated -----------------------------------------------------


def _sparse_bomb(tmp_path: Path, fmt: str) -> Path:
    """A bundle whose one member is a GNU tar sparse file of 1 GiB, written by GNU tar."""
    tar = shutil.which("tar")
    if tar is None or "GNU" not in subprocess.run([tar, "--version"], capture_output=True,
                                                  text=True).stdout:  # fmt: skip
        pytest.fail("GNU tar is needed to write sparse members")
    src = tmp_path / f"src-{fmt}"
    (src / "weights").mkdir(parents=True)
    sparse = src / "weights" / "stage0.safetensors"
    subprocess.run(["truncate", "-s", "1G", str(sparse)], check=True)
    with open(sparse, "r+b") as f:  # one data block at the start, the rest a hole
        f.write(b"\x01" * 4096)
    listed = {"weights/stage0.safetensors": b""}
    manifest = json.loads(_manifest_for(listed))
    manifest["members"]["weights/stage0.safetensors"]["size_bytes"] = 1 << 30
    (src / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / f"bomb-{fmt}.tzb"
    subprocess.run([tar, "--sparse", f"--format={fmt}", "-cf", str(out), "-C", str(src),
                    "manifest.json", "weights/stage0.safetensors"], check=True)  # fmt: skip
    return out


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_sparse_tar_bomb_is_refused_before_anything_is_written(tmp_path, fmt):
    bomb = _sparse_bomb(tmp_path, fmt)
    assert bomb.stat().st_size < 2 << 20  # ~1 MB on disk, 1 GiB once expanded
    for command in ("run", "inspect", "verify"):
        assert_refused([command, bomb], tmp_path, r"weights/stage0\.safetensors.*sparse")


def _plain_bundle(tmp_path: Path, name: str, extra=(), manifest: bytes | None = None) -> Path:
    data = {"plan.mlir": b"module {}\n"}
    members = [_regular("manifest.json", manifest or _manifest_for(data))]
    members += [_regular(n, b) for n, b in data.items()]
    return _write(tmp_path / name, members + list(extra))


def _device(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info, None


def _link(name: str, kind: bytes, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


HOSTILE = {
    # PAX headers that change sizes or paths, or carry anything but plain metadata
    "pax-size": ([_regular("x.bin", b"a" * 100, size="100")], r"x\.bin.*PAX 'size'"),
    "pax-path": ([_regular("x.bin", b"a", path="plan.mlir")], r"PAX 'path'"),
    "pax-linkpath": ([_regular("x.bin", b"a", linkpath="/etc/passwd")], r"PAX header 'linkpath'"),
    "pax-sparse-key": ([_regular("x.bin", b"a", **{"GNU.sparse.size": "1073741824"})],
                       r"x\.bin.*sparse"),
    # already refused before this issue: regression tests
    "traversal": ([_regular("../evil.txt", b"pwned")], r"member '\.\./evil\.txt'.*traversal"),
    "nested-traversal": ([_regular("stages/../../evil.txt", b"x")], r"traversal"),
    "absolute": ([_regular("/tmp/tz-evil.txt", b"x")], r"absolute names"),
    "symlink": ([_link("lib.so", tarfile.SYMTYPE, "/etc/passwd")], r"links are not allowed"),
    "hardlink": ([_link("lib.so", tarfile.LNKTYPE, "plan.mlir")], r"links are not allowed"),
    "device": ([_device("dev.so")], r"only regular files"),
    "fifo": ([_link("fifo", tarfile.FIFOTYPE, "")], r"only regular files"),
    "duplicate": ([_regular("plan.mlir", b"module {}\n")], r"plan\.mlir.*twice"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused_in_one_line(tmp_path, case):
    extra, match = HOSTILE[case]
    bad = _plain_bundle(tmp_path, f"{case}.tzb", extra)
    assert_refused(["run", bad], tmp_path, match)
    assert not Path("/tmp/tz-evil.txt").exists()


def test_global_pax_header_is_refused(tmp_path):
    bad = tmp_path / "global.tzb"
    with tarfile.open(bad, "w", format=tarfile.PAX_FORMAT, pax_headers={"path": "evil"}) as tar:
        info, data = _regular("plan.mlir", b"module {}\n")
        tar.addfile(info, io.BytesIO(data))
    assert_refused(["inspect", bad], tmp_path, r"global PAX header")


def test_truncated_bundle_is_refused(kit, tmp_path):
    data = kit["local"].read_bytes()
    cut = tmp_path / "cut.tzb"
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert_refused(["run", cut], tmp_path, r"truncated|corrupt tar")


def test_deep_manifest_is_refused_by_depth_before_parsing(tmp_path):
    deep = b"[" * 200_000 + b"]" * 200_000  # a RecursionError traceback before
    bad = _plain_bundle(tmp_path, "deep.tzb", manifest=deep)
    for command in ("run", "inspect", "verify", "serve"):
        assert_refused(_argv(command, bad), tmp_path, r"manifest\.json.*nested 200000 deep")
    with pytest.raises(BundleError, match="nested"):  # the API too, and plan.json likewise
        from terrazzo.bundle import read_manifest

        read_manifest(bad)


def test_huge_manifest_is_refused_by_size(tmp_path):
    big = b'{"pad": "' + b"a" * (17 << 20) + b'"}'
    bad = _plain_bundle(tmp_path, "big.tzb", manifest=big)
    assert_refused(["inspect", bad], tmp_path, r"manifest\.json.*exceeds the cap of 16777216")


def test_caps_refuse_and_leave_nothing(tmp_path, monkeypatch):
    from terrazzo.bundle import BundleLimits, open_bundle

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    payload = {"a.bin": os.urandom(5000), "b.bin": os.urandom(5000)}
    members = [_regular("manifest.json", _manifest_for(payload))]
    members += [_regular(n, b) for n, b in payload.items()]
    ok = _write(tmp_path / "ok.tzb", members)
    for limits, match in [(BundleLimits(max_member_bytes=4000), r"a\.bin.*exceeds the cap"),
                          (BundleLimits(max_total_bytes=8000), r"b\.bin.*exceeds 8000")]:  # fmt: skip
        with pytest.raises(BundleError, match=match):
            open_bundle(ok, limits=limits, allow_unsigned=True)
    assert os.listdir(tmp_path / "t") == []
    with open_bundle(ok, allow_unsigned=True) as b:
        assert (b.root / "a.bin").read_bytes() == payload["a.bin"]


def test_bytes_written_are_counted_while_streaming(tmp_path, monkeypatch):
    """Second line of defence: with the header checks (sparse type, extent) switched off, the
    1 GiB sparse member is still stopped by the count of bytes actually read, which may not
    exceed the bundle file's own size; nothing is written and the temp dir is removed."""
    from terrazzo.bundle import open_bundle

    bomb = _sparse_bomb(tmp_path, "gnu")
    monkeypatch.setattr("terrazzo.bundle._read._check_member_type", lambda info: None)
    monkeypatch.setattr("terrazzo.bundle._read._check_extent", lambda info, n: None)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    with pytest.raises(BundleError, match=r"stage0\.safetensors.*would exceed.*written"):
        open_bundle(bomb, allow_unsigned=True)
    assert os.listdir(tmp_path / "t") == []


# -- 3. one line instead of tracebacks ----------------------------------------------------------


def test_hollow_onnx_initializer_is_one_line(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[2**20, 2**20])  # no data
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2**20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2**20])], [w],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(tmp_path / "hollow.onnx"))
    (tmp_path / "fleet.yaml").write_text("devices:\n  cpu: {count: 1}\n")
    for command in ("plan", "compile"):
        assert_refused(
            [command, tmp_path / "hollow.onnx", "--fleet", tmp_path / "fleet.yaml", "--sla", "50ms"],
            tmp_path, r"tensor 'W' declared \[1048576, 1048576\].*holds 0 elements",
        )  # fmt: skip


def test_binary_fleet_file_is_one_line(tmp_path):
    fleet = tmp_path / "fleet.bin"
    fleet.write_bytes(bytes(range(256)) * 8)
    assert_refused(["plan", "mlp", "--fleet", fleet, "--sla", "50ms"], tmp_path,
                   r"fleet file .*fleet\.bin.* not UTF-8")  # fmt: skip
