"""What the Kubernetes manifests run, on loopback: one `terrazzo worker` process per stage on a
fixed port, and `terrazzo serve --worker STAGE=HOST:PORT` as the gateway; the stock tritonclient
gets onnxruntime's answer, a killed stage pod is ejected and re-admitted when it comes back."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from tests.unit.bundle.test_bundle import _onnx_model, forced_plan

pytestmark = pytest.mark.integration

TOKEN = "k8s-style-shared-token-0123456789"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    ort = pytest.importorskip("onnxruntime")
    from terrazzo.frontend import from_onnx
    from terrazzo.pipeline import compile_model
    from terrazzo.placement import SLA, Fleet

    d = tmp_path_factory.mktemp("static")
    model = _onnx_model(d / "tiny.onnx")
    fleet = Fleet.from_dict({"devices": {"cpu": {"count": 2}, "t4": {"count": 1}}})
    sla = SLA(latency_s=0.05)
    plan = forced_plan(from_onnx(model), fleet, sla, ["cpu", "t4"])
    res = compile_model(model, fleet, sla, out_path=d / "tiny.tzb", plan=plan)
    x = np.random.default_rng(1).standard_normal((4, 16)).astype("float32")
    (want,) = ort.InferenceSession(str(model)).run(None, {"x": x})
    return Path(res.path), x, want


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(token: str | None = TOKEN) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TERRAZZO_INTERNAL_TOKEN", None)
    if token is not None:
        env["TERRAZZO_INTERNAL_TOKEN"] = token
    return env


def _start(args: list[str], ready: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "terrazzo.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: list[str] = []
    while not any(line.startswith(ready) for line in lines):
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"{args[0]} exited: {proc.stderr.read()}")
        lines.append(line)
    return proc, "".join(lines)


def _worker(path: Path, stage: int, port: int) -> subprocess.Popen:
    proc, out = _start([
        "worker", str(path), "--stage", str(stage), "--port", str(port)], "worker:", _env())  # fmt: skip
    assert f"stage {stage}" in out and f":{port}" in out
    return proc


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def _infer(client: tc.InferenceServerClient, x: np.ndarray) -> np.ndarray:
    inp = tc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer("tiny", [inp], client_timeout=10)
    return res.as_numpy(res.get_response().outputs[0].name)


def test_gateway_with_workers_started_elsewhere(bundle):
    path, x, want = bundle
    ports = [_free_port(), _free_port()]
    workers = [_worker(path, i, p) for i, p in enumerate(ports)]
    gateway = None
    try:
        flags = [a for i, p in enumerate(ports) for a in ("--worker", f"{i}=127.0.0.1:{p}")]
        gateway, out = _start(["serve", str(path), "--port", "0", *flags], "ready", _env())
        port = int(re.search(r"on 127\.0\.0\.1:(\d+)", out).group(1))
        assert out.count("remote") == 2, out
        client = tc.InferenceServerClient(f"127.0.0.1:{port}")
        np.testing.assert_allclose(_infer(client, x), want, rtol=1e-5, atol=1e-6)

        # stage 1's pod dies: requests fail fast, the replica is ejected ...
        workers[1].kill()
        workers[1].wait()
        t0 = time.monotonic()
        with pytest.raises(InferenceServerException) as e:
            _infer(client, x)
        assert time.monotonic() - t0 < 10 and "UNAVAILABLE" in str(e.value.status())
        # ... and re-admitted when its replacement answers on the same address
        workers[1] = _worker(path, 1, ports[1])
        deadline = time.monotonic() + 15
        while True:
            try:
                got = _infer(client, x)
                break
            except InferenceServerException:
                assert time.monotonic() < deadline, "the restarted worker was not re-admitted"
                time.sleep(0.2)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert client.is_server_ready()
    finally:
        _stop(*([gateway] if gateway else []), *workers)


def test_worker_needs_the_internal_token(bundle):
    path, _, _ = bundle
    res = subprocess.run(
        [sys.executable, "-m", "terrazzo.cli", "worker", str(path), "--stage", "0",
         "--port", str(_free_port())],
        env=_env(None), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "TERRAZZO_INTERNAL_TOKEN" in err, err


def test_worker_with_a_wrong_token_is_never_admitted(bundle):
    path, _, _ = bundle
    port = _free_port()
    proc, _ = _start(["worker", str(path), "--stage", "0", "--port", str(port)], "worker:",
                     _env("some-other-token-abcdefghijk"))  # fmt: skip
    try:
        res = subprocess.run(
            [sys.executable, "-m", "terrazzo.cli", "serve", str(path), "--port", "0",
             "--worker", f"0=127.0.0.1:{port}", "--worker", f"1=127.0.0.1:{_free_port()}"],
            env=_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert res.returncode == 2, res.stdout + res.stderr
        err = res.stderr.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
    finally:
        _stop(proc)


def test_worker_batching_flags_are_checked_in_one_line(bundle):
    path, _, _ = bundle
    res = subprocess.run(
        [sys.executable, "-m", "terrazzo.cli", "worker", str(path), "--stage", "0",
         "--port", str(_free_port()), "--max-batch-size", "4", "--preferred-batch-size", "8",
         "--priority-levels", "2", "--default-queue-timeout-us", "1000"],
        env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    err = res.stderr.strip()
    assert (
        len(err.splitlines()) == 1
        and "preferred_batch_sizes must lie in 1..max_batch_size (4)" in err
    ), err
