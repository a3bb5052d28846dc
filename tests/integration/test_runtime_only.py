"""The runtime-only install: serve, run and inspect a bundle with TVM's runtime alone.

What a slim serving image (and the lent GPU machine) has: ``libtvm_runtime`` without
``libtvm_compiler``, no Relax compiler, no pydantic, onnx, transformers or Ray. Here the full
install is present, so each server and command runs in a subprocess with
``TVM_USE_RUNTIME_LIB=1`` (TVM loads the runtime library only) and an import hook that makes
the compiler-side packages unimportable: any code path that still reaches them fails the test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

BLOCKED = (
    "tvm.relax",
    "tvm.s_tir",
    "tvm.topi",
    "tvm.meta_schedule",
    "pydantic",
    "onnx",
    "onnxruntime",
    "transformers",
    "torch_mlir",
    "ray",
)

_HOOK = f"""
import importlib.abc, sys
BLOCKED = {BLOCKED!r}
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError("runtime-only test: " + name + " must not be imported")
        return None
sys.meta_path.insert(0, _Block())
"""


@pytest.fixture(scope="module")
def slim_env(tmp_path_factory) -> dict[str, str]:
    hook = tmp_path_factory.mktemp("hook")
    (hook / "sitecustomize.py").write_text(_HOOK)
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["TVM_USE_RUNTIME_LIB"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(hook), str(root), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def gpu_bundle(tmp_path_factory):
    """A bundle planned on an h200 (a CUDA stage where nvcc exists), served from its host build."""
    import onnxruntime as ort

    from terrazzo import zoo
    from terrazzo.pipeline import compile as tz_compile

    d = tmp_path_factory.mktemp("slim")
    onnx_path = zoo.export_onnx("mlp", d)
    path = tz_compile(
        str(onnx_path),
        {"devices": {"h200": {"count": 1}}},
        "50ms",
        1.0,
        d / "mlp.tzb",
        include_reference=False,
    )
    x = zoo.example_inputs_numpy("mlp")["x"]
    ref = ort.InferenceSession(str(onnx_path)).run(None, {"x": x})[0]
    return path, x, ref


def test_runtime_only_tvm_loads_no_compiler(slim_env):
    code = (
        "import tvm, tvm.base, sys; from tvm.runtime.vm import VirtualMachine; "
        "print(tvm.base._RUNTIME_ONLY, sorted(tvm.base._LOADED_LIBS), 'tvm.relax' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=slim_env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "['tvm_runtime']", "False"], out.stdout


def test_compile_refused_in_one_line(slim_env, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "terrazzo.cli", "compile", "zoo:mlp", "--fleet",
         "examples/fleets/mixed.yaml", "--sla", "50ms", "-o", str(tmp_path / "m.tzb")],
        env=slim_env, capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "runtime-only install" in out.stderr, out.stderr
    assert not (tmp_path / "m.tzb").exists()


def test_run_and_inspect_runtime_only(slim_env, gpu_bundle, tmp_path):
    path, x, ref = gpu_bundle
    code = (
        "import sys, numpy as np, terrazzo\n"
        "b = terrazzo.open_bundle(sys.argv[1])\n"
        "r = b.load_stages()\n"
        "np.save(sys.argv[2], b.run({'x': np.load(sys.argv[3])}, runners=r)[b.outputs[0].name])\n"
    )
    np.save(tmp_path / "x.npy", x)
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(tmp_path / "y.npy"), str(tmp_path / "x.npy")],
        env=slim_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ref, rtol=1e-5, atol=1e-5)
    insp = subprocess.run(
        [sys.executable, "-m", "terrazzo.cli", "inspect", str(path)],
        env=slim_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert insp.returncode == 0, insp.stderr
    assert "h200" in insp.stdout


def test_serve_runtime_only_with_stock_client(slim_env, gpu_bundle):
    import tritonclient.grpc as tc

    path, x, ref = gpu_bundle
    proc = subprocess.Popen(
        [sys.executable, "-m", "terrazzo.cli", "serve", str(path), "--port", "0",
         "--metrics-port", "0"],
        env=slim_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while not any(line.startswith("ready") for line in lines):
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line and time.monotonic() < deadline, "".join(lines)
            lines.append(line)
        out = "".join(lines)
        port = int(re.search(r"on 127\.0\.0\.1:(\d+)", out).group(1))  # type: ignore[union-attr]
        name = re.search(r"serving model '([^']+)'", out).group(1)  # type: ignore[union-attr]
        assert "host CPU build" in out  # the CUDA stage says it falls back, in words
        c = tc.InferenceServerClient(f"127.0.0.1:{port}")
        meta = c.get_model_metadata(name)
        inp = tc.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = c.infer(name, [inp], client_timeout=60).as_numpy(meta.outputs[0].name)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
