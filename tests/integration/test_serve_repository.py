"""A model repository (issue 15, deliverable 1): two compiled bundles in Triton's layout behind one
gRPC endpoint, answered by the stock tritonclient; version policy; explicit load/unload of one
model while the other serves traffic; bad bundles and configs fail alone and clearly."""

from __future__ import annotations

import io
import json
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from terrazzo.runtime.repository import ModelRepository, VersionPolicy, serve_repository
from terrazzo.runtime.server import ServeOptions

pytestmark = pytest.mark.integration
FLEET = {"devices": {"cpu": {"count": 2}, "t4": {"count": 2}}}


def _compile(out: Path, d_in: int, d_out: int, seed: int) -> tuple[Path, np.ndarray, np.ndarray]:
    torch = pytest.importorskip("torch")
    from terrazzo.pipeline import compile as tz_compile

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(d_in, 8), torch.nn.ReLU(), torch.nn.Linear(8, d_out)
    ).eval()
    x = torch.randn(2, d_in)
    path = tz_compile(model, FLEET, "50ms", 1.0, out, example_inputs=(x,))
    with torch.no_grad():
        return Path(path), x.numpy(), model(x).numpy()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("bundles")
    return {"a": _compile(d / "a.tzb", 4, 3, 0), "b": _compile(d / "b.tzb", 6, 2, 1)}


def _layout(root: Path, bundles: dict[str, Any]) -> Path:
    for name, versions in (("alpha", (1,)), ("beta", (1, 2))):
        src = bundles["a" if name == "alpha" else "b"][0]
        for v in versions:
            (root / name / str(v)).mkdir(parents=True)
            shutil.copy(src, root / name / str(v) / "model.tzb")
    return root


@pytest.fixture()
def repo(tmp_path: Path, bundles: dict[str, Any]) -> Iterator[ModelRepository]:
    with serve_repository(
        _layout(tmp_path / "models", bundles),
        ServeOptions(metrics_port=0, http_port=0),
        control_mode="explicit",
        load_models=("*",),
    ) as r:
        yield r


def test_http_serves_every_model_of_the_directory(
    repo: ModelRepository, bundles: dict[str, Any]
) -> None:
    """The KServe v2 HTTP port of a repository answers the stock tritonclient.http for both models."""
    import tritonclient.http as th

    assert repo.http_port is not None
    c = th.InferenceServerClient(f"127.0.0.1:{repo.http_port}")
    try:
        assert c.is_server_live() and c.is_server_ready()
        for model, key in (("alpha", "a"), ("beta", "b")):
            _, x, y = bundles[key]
            meta = c.get_model_metadata(model)
            assert meta["name"] == model and c.is_model_ready(model)
            for binary in (False, True):
                inp = th.InferInput(meta["inputs"][0]["name"], list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=binary)
                out = th.InferRequestedOutput(meta["outputs"][0]["name"], binary_data=binary)
                r = c.infer(model, [inp], outputs=[out])
                np.testing.assert_allclose(
                    r.as_numpy(meta["outputs"][0]["name"]), y, rtol=1e-4, atol=1e-5
                )
        assert meta["versions"] == ["2"]
        with pytest.raises(InferenceServerException) as e:
            c.get_model_metadata("gamma")
        assert "gamma" in e.value.message()
    finally:
        c.close()


def _infer(c: tc.InferenceServerClient, model: str, x: np.ndarray, version: str = "") -> Any:
    meta = c.get_model_metadata(model, version)
    inp = tc.InferInput(meta.inputs[0].name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = c.infer(model, [inp], model_version=version)
    return r.as_numpy(meta.outputs[0].name)


def test_two_bundles_one_endpoint_config_index_and_versions(
    repo: ModelRepository, bundles: dict[str, Any]
) -> None:
    c = tc.InferenceServerClient(f"127.0.0.1:{repo.port}")
    _, xa, ya = bundles["a"]
    _, xb, yb = bundles["b"]
    np.testing.assert_allclose(_infer(c, "alpha", xa), ya, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_infer(c, "beta", xb), yb, rtol=1e-4, atol=1e-5)
    assert c.is_server_ready() and c.is_model_ready("alpha") and c.is_model_ready("beta", "2")
    assert "model_repository" in c.get_server_metadata().extensions
    # latest:1 by default: beta v1 is on disk but not served
    assert not c.is_model_ready("beta", "1")
    index = [(m.name, m.version, m.state) for m in c.get_model_repository_index().models]
    assert index == [
        ("alpha", "1", "READY"),
        ("beta", "1", "UNAVAILABLE"),
        ("beta", "2", "READY"),
    ]
    cfg = c.get_model_config("beta").config
    meta = c.get_model_metadata("beta")
    assert cfg.name == "beta" and cfg.platform == "terrazzo"
    assert [t.name for t in cfg.input] == [t.name for t in meta.inputs]
    assert [list(t.dims) for t in cfg.input] == [list(t.shape) for t in meta.inputs]
    assert list(cfg.input[0].dims)[-1] == 6 and list(cfg.output[0].dims)[-1] == 2
    assert len(cfg.instance_group) >= 1 and all(g.count >= 1 for g in cfg.instance_group)
    assert meta.versions == ["2"]
    streamed: list[Any] = []
    done = threading.Event()
    c.start_stream(callback=lambda result, error: (streamed.append((result, error)), done.set()))
    inp = tc.InferInput(meta.inputs[0].name, list(xb.shape), "FP32")
    inp.set_data_from_numpy(xb)
    c.async_stream_infer("beta", [inp])
    assert done.wait(30)
    c.stop_stream()
    result, error = streamed[0]
    assert error is None and result.get_response().model_version == "2"
    stats = c.get_inference_statistics().model_stats
    assert {(s.name, s.version) for s in stats} == {("alpha", "1"), ("beta", "2")}
    assert all(s.inference_count >= 1 for s in stats)
    assert repo.metrics_port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{repo.metrics_port}/metrics") as page:
        text = page.read().decode()
    for model, version in (("alpha", "1"), ("beta", "2")):
        pattern = rf'terrazzo_requests_total{{[^}}]*model="{model}"[^}}]*version="{version}"'
        assert re.search(pattern, text), text[:2000]
    for call in (
        lambda: _infer(c, "gamma", xa),
        lambda: _infer(c, "beta", xb, version="1"),
        lambda: c.get_model_config("alpha", "7"),
        lambda: c.get_inference_statistics("gamma"),
        lambda: c.load_model("gamma"),
        lambda: c.unload_model("gamma"),
    ):
        with pytest.raises(InferenceServerException) as e:
            call()
        assert e.value.status() == "StatusCode.NOT_FOUND", e.value.message()
    # a per-model config.json switches beta to every version, on its next load
    (repo.root / "beta" / "config.json").write_text(json.dumps({"version_policy": {"all": {}}}))
    c.load_model("beta")
    assert c.is_model_ready("beta", "1") and c.is_model_ready("beta", "2")
    np.testing.assert_allclose(_infer(c, "beta", xb, version="1"), yb, rtol=1e-4, atol=1e-5)
    # a config given with the load request wins over config.json (Triton's load override)
    c.load_model("beta", config=json.dumps({"version_policy": {"specific": {"versions": [1]}}}))
    assert repo.loaded()["beta"] == [1] and not c.is_model_ready("beta", "2")
    with pytest.raises(InferenceServerException, match="load config: version_policy.specific"):
        c.load_model("beta", config=json.dumps({"version_policy": {"specific": {}}}))
    c.close()


def test_unload_and_load_one_model_while_the_other_serves(
    repo: ModelRepository, bundles: dict[str, Any]
) -> None:
    c = tc.InferenceServerClient(f"127.0.0.1:{repo.port}")
    _, xa, ya = bundles["a"]
    _, xb, yb = bundles["b"]
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []

    def traffic() -> None:
        tcl = tc.InferenceServerClient(f"127.0.0.1:{repo.port}")
        while not stop.is_set():
            try:
                np.testing.assert_allclose(_infer(tcl, "beta", xb), yb, rtol=1e-4, atol=1e-5)
                counts["ok"] += 1
            except Exception as e:  # counted and reported below
                counts["failed"] += 1
                errors.append(str(e))
        tcl.close()

    t = threading.Thread(target=traffic)
    t.start()
    try:
        time.sleep(0.3)
        before = counts["ok"]
        t0 = time.perf_counter()
        c.unload_model("alpha")
        unload_s = time.perf_counter() - t0
        assert not c.is_model_ready("alpha")
        with pytest.raises(InferenceServerException) as e:
            _infer(c, "alpha", xa)
        assert e.value.status() == "StatusCode.NOT_FOUND"
        assert repo.loaded() == {"beta": [2]}
        t0 = time.perf_counter()
        c.load_model("alpha")
        load_s = time.perf_counter() - t0
        np.testing.assert_allclose(_infer(c, "alpha", xa), ya, rtol=1e-4, atol=1e-5)
        during = counts["ok"] - before
        time.sleep(0.2)
    finally:
        stop.set()
        t.join(timeout=30)
    assert counts["failed"] == 0, errors[:3]
    assert during > 0, "no traffic reached beta during the unload/load"
    print(
        f"beta served {counts['ok']} requests, {during} during alpha's unload "
        f"({unload_s:.2f} s) + load ({load_s:.2f} s), 0 failed"
    )
    c.close()


def test_bad_bundle_and_bad_config_fail_alone(
    repo: ModelRepository, bundles: dict[str, Any]
) -> None:
    c = tc.InferenceServerClient(f"127.0.0.1:{repo.port}")
    _, xb, yb = bundles["b"]
    bad = repo.root / "tampered" / "1"
    bad.mkdir(parents=True)
    with (
        tarfile.open(bundles["a"][0], "r:") as src,
        tarfile.open(bad / "model.tzb", "w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for info in src.getmembers():
            data = src.extractfile(info).read() if info.isfile() else None  # type: ignore[union-attr]
            if data and info.name.endswith(".so"):
                data = data[:100] + bytes([data[100] ^ 1]) + data[101:]  # one flipped bit
            dst.addfile(info, io.BytesIO(data) if data is not None else None)
    with pytest.raises(InferenceServerException) as e:
        c.load_model("tampered")
    assert e.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert "tampered" in e.value.message() and "\n" not in e.value.message()
    index = {(m.name, m.state): m.reason for m in c.get_model_repository_index().models}
    assert index[("tampered", "UNAVAILABLE")]
    np.testing.assert_allclose(_infer(c, "beta", xb), yb, rtol=1e-4, atol=1e-5)

    (repo.root / "alpha" / "config.json").write_text(
        json.dumps({"version_policy": {"latest": {"num_versions": "two"}}})
    )
    with pytest.raises(InferenceServerException) as e:
        c.load_model("alpha")
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "version_policy.latest.num_versions" in e.value.message()
    assert c.is_model_ready("alpha")  # the old load keeps serving
    (repo.root / "alpha" / "config.json").write_text("{not json")
    with pytest.raises(InferenceServerException, match="alpha/config.json: not valid JSON"):
        c.load_model("alpha")
    (repo.root / "alpha" / "config.json").write_text(json.dumps({"max_batch": 4}))
    with pytest.raises(InferenceServerException, match="unknown field 'max_batch'"):
        c.load_model("alpha")
    bad_batching = {"max_batch_size": 4, "dynamic_batching": {"priority_levels": -1}}
    (repo.root / "alpha" / "config.json").write_text(json.dumps(bad_batching))
    with pytest.raises(
        InferenceServerException, match=r"alpha/config.json: dynamic_batching.priority_levels"
    ):
        c.load_model("alpha")
    # Triton-style batching in config.json is accepted; this bundle was compiled for a fixed
    # batch of 2, so ModelConfig says batching stays off and why
    (repo.root / "alpha" / "config.json").write_text(
        json.dumps({"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": 100}})
    )
    c.load_model("alpha")
    cfg = c.get_model_config("alpha").config
    assert cfg.max_batch_size == 0 and "off" in cfg.parameters["batching"].string_value
    c.close()


def test_version_policy_parsing() -> None:
    assert VersionPolicy.parse_cli("latest:2").select([1, 2, 3]) == [2, 3]
    assert VersionPolicy.parse_cli("all").select([3, 1]) == [1, 3]
    assert VersionPolicy.parse_cli("specific:1,3").select([1, 2, 3]) == [1, 3]
    for bad in ("latest:0", "newest", "specific:", "all:2"):
        with pytest.raises(Exception, match="version-policy"):
            VersionPolicy.parse_cli(bad)


def test_cli_serves_a_directory_and_polls_for_new_models(
    tmp_path: Path, bundles: dict[str, Any]
) -> None:
    root = tmp_path / "models"
    root.mkdir()
    shutil.copy(bundles["a"][0], root / "alpha.tzb")  # the flat form: version 1
    proc = subprocess.Popen(
        [sys.executable, "-m", "terrazzo.cli", "serve", str(root), "--port", "0",
         "--model-control-mode", "poll", "--repository-poll-secs", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines: list[str] = []
        while not any(line.startswith("ready") for line in lines):
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line, f"server exited: {proc.stderr.read()}"  # type: ignore[union-attr]
            lines.append(line)
        out = "".join(lines)
        assert "alpha v1" in out, out
        port = int(re.search(r"on 127\.0\.0\.1:(\d+)", out).group(1))  # type: ignore[union-attr]
        c = tc.InferenceServerClient(f"127.0.0.1:{port}")
        _, xa, ya = bundles["a"]
        np.testing.assert_allclose(_infer(c, "alpha", xa), ya, rtol=1e-4, atol=1e-5)
        with pytest.raises(InferenceServerException, match="model control mode 'poll'"):
            c.load_model("alpha")
        (root / "beta" / "3").mkdir(parents=True)
        shutil.copy(bundles["b"][0], root / "beta" / "3" / "model.tzb")
        end = time.monotonic() + 30
        while not c.is_model_ready("beta", "3") and time.monotonic() < end:
            time.sleep(0.2)
        _, xb, yb = bundles["b"]
        np.testing.assert_allclose(_infer(c, "beta", xb), yb, rtol=1e-4, atol=1e-5)
        (root / "alpha.tzb").unlink()
        while c.is_model_ready("alpha") and time.monotonic() < end:
            time.sleep(0.2)
        assert not c.is_model_ready("alpha")
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
