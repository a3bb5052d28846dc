"""`terrazzo serve` on a real compiled bundle: stock client answers match the model; SIGTERM drains."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tritonclient.grpc as tc

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from terrazzo.pipeline import compile as tz_compile

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)
    ).eval()
    x = torch.randn(4, 16)
    path = tz_compile(
        model,
        {"devices": {"cpu": {"count": 2}, "t4": {"count": 2}}},
        "50ms",
        1.0,
        tmp_path_factory.mktemp("bundle") / "mlp.tzb",
        example_inputs=(x,),
    )
    with torch.no_grad():
        return path, x.numpy(), model(x).numpy()


def test_cli_serve_bundle_and_sigterm_drain(bundle):
    path, x, expected = bundle
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "terrazzo.cli",
            "serve",
            str(path),
            "--port",
            "0",
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        t0 = time.monotonic()
        while not any(line.startswith("ready") for line in lines):
            line = proc.stdout.readline()
            assert line, f"server exited: {proc.stderr.read()}"
            lines.append(line)
        ready_s = time.monotonic() - t0
        out = "".join(lines)
        port = int(re.search(r"on 127\.0\.0\.1:(\d+)", out).group(1))
        assert "stage0/r0" in out and "device" in out, out
        reported_s = float(re.search(r"ready in ([\d.]+) s", out).group(1))
        assert reported_s < 10, f"terrazzo serve took {reported_s} s to be ready (spec: < 10 s)"
        c = tc.InferenceServerClient(f"127.0.0.1:{port}")
        name = re.search(r"serving model '([^']+)'", out).group(1)
        meta = c.get_model_metadata(name)
        inp = tc.InferInput(meta.inputs[0].name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = c.infer(name, [inp]).as_numpy(meta.outputs[0].name)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        results = []
        c.async_infer(name, [inp], callback=lambda result, error: results.append((result, error)))
        # Let the request reach the gateway first: a SIGTERM that lands before it arrives is
        # (correctly) answered UNAVAILABLE by the draining server, which is not what this checks.
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert results and results[0][1] is None
        print(f"terrazzo serve ready in {ready_s:.1f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _resigned(src, dst, key_pem=None):
    """A copy of the bundle signed with ``key_pem`` (None: unsigned)."""
    import io
    import tarfile

    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    with tarfile.open(src, "r:") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    members.pop("manifest.sig")
    if key_pem is not None:
        key = load_pem_private_key(key_pem.read_bytes(), None)
        members["manifest.sig"] = key.sign(members["manifest.json"])
    with tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members, key=lambda n: (n != "manifest.json", n)):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    return dst


def _serve_once(path, extra, x):
    """Start `terrazzo serve`, answer one request, stop; returns (output, stderr, answer)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "terrazzo.cli", "serve", str(path), "--port", "0",
         "--metrics-port", "0", *map(str, extra)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines: list[str] = []
        while not any(line.startswith("ready") for line in lines):
            line = proc.stdout.readline()
            assert line, f"server exited: {proc.stderr.read()}"
            lines.append(line)
        out = "".join(lines)
        port = int(re.search(r"on 127\.0\.0\.1:(\d+)", out).group(1))
        name = re.search(r"serving model '([^']+)'", out).group(1)
        c = tc.InferenceServerClient(f"127.0.0.1:{port}")
        meta = c.get_model_metadata(name)
        inp = tc.InferInput(meta.inputs[0].name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = c.infer(name, [inp]).as_numpy(meta.outputs[0].name)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        return out, proc.stderr.read(), got
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_trusts_an_explicit_key_or_runs_unsigned_only_when_allowed(bundle, tmp_path):
    """Workers re-open the bundle themselves: they get the key that verified in the parent
    (here a key the local trust directory does not hold), or the explicit --allow-unsigned."""
    from terrazzo.bundle import generate_keypair

    path, x, expected = bundle
    generate_keypair(tmp_path / "team.pem", tmp_path / "team.pub.pem")
    team = _resigned(path, tmp_path / "team.tzb", tmp_path / "team.pem")
    _, err, got = _serve_once(team, ["--trust", tmp_path / "team.pub.pem"], x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert "warning" not in err
    unsigned = _resigned(path, tmp_path / "unsigned.tzb")
    refused = subprocess.run(
        [sys.executable, "-m", "terrazzo.cli", "serve", str(unsigned), "--port", "0",
         "--metrics-port", "0"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and "is unsigned" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    _, err, got = _serve_once(unsigned, ["--allow-unsigned"], x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert "warning: --allow-unsigned" in err and "unverified" in err
