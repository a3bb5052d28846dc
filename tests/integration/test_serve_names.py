"""The served model keeps the model's names (issue 13, deliverable 4): a multi-stage bundle of an
ONNX model with several outputs (rank-0, bool, int64, an input passed through) and an int64
input, served by ``terrazzo serve`` and queried with the stock tritonclient by those names."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc

from tests.unit.pipeline.test_stages_names import (
    FLEET,
    MULTI_INPUTS,
    MULTI_OUTPUTS,
    cli,
    cut_every_op,
    multi_io_onnx,
    ort_run,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    d = tmp_path_factory.mktemp("names")
    model = multi_io_onnx(d / "multi.onnx")
    fleet = d / "fleet.yaml"
    fleet.write_text(json.dumps(FLEET))
    placed = d / "placed.mlir"
    assert (
        cli("plan", str(model), "--fleet", str(fleet), "--sla", "50ms", "-o", str(placed))[0] == 0
    )
    text, _ = cut_every_op(placed.read_text(), ("cpu", "t4"))
    (d / "cut.mlir").write_text(text)
    bundle = d / "multi.tzb"
    assert cli("compile", str(d / "cut.mlir"), "--fleet", str(fleet), "-o", str(bundle))[0] == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "terrazzo.cli", "serve", str(bundle), "--port", "0",
         "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines: list[str] = []
        while not any(line.startswith("ready") for line in lines):
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line, f"server exited: {proc.stderr.read()}"  # type: ignore[union-attr]
            lines.append(line)
        out = "".join(lines)
        port = int(re.search(r"on 127\.0\.0\.1:(\d+)", out).group(1))  # type: ignore[union-attr]
        name = re.search(r"serving model '([^']+)'", out).group(1)  # type: ignore[union-attr]
        yield tc.InferenceServerClient(f"127.0.0.1:{port}"), name, model
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _inputs(x: np.ndarray, ids: np.ndarray) -> list[Any]:
    a = tc.InferInput("x.in", list(x.shape), "FP32")
    a.set_data_from_numpy(x)
    b = tc.InferInput("ids", list(ids.shape), "INT64")
    b.set_data_from_numpy(ids)
    return [a, b]


def test_metadata_names_inputs_and_outputs_as_the_model_does(served: Any) -> None:
    c, name, _ = served
    meta = c.get_model_metadata(name)
    assert [t.name for t in meta.inputs] == list(MULTI_INPUTS)
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("output", "FP32", [2, 3]),
        ("total", "FP32", []),
        ("positive", "BOOL", [2, 3]),
        ("ids_plus", "INT64", [4]),
        ("same", "FP32", [2, 3]),
    ]


def test_outputs_asked_by_name_match_onnxruntime(served: Any) -> None:
    c, name, model = served
    x = np.array([[1, -2, 3], [np.nan, 5, -np.inf]], np.float32)
    ids = np.array([0, -7, 2**40, 3], np.int64)
    want = ort_run(model, {"x.in": x, "ids": ids})
    asked = [tc.InferRequestedOutput(n) for n in ("total", "positive", "output")]
    res = c.infer(name, _inputs(x, ids), outputs=asked)
    for n in ("total", "positive", "output"):
        got = res.as_numpy(n)
        assert got.shape == want[n].shape and got.dtype == want[n].dtype, n
        np.testing.assert_array_equal(got, want[n])  # NaN in the same places, exactly equal
    assert res.as_numpy("same") is None  # only what was asked comes back
    full = c.infer(name, _inputs(x, ids))
    for n in MULTI_OUTPUTS:
        np.testing.assert_array_equal(full.as_numpy(n), want[n])


def test_an_unknown_output_name_is_invalid_argument_naming_it(served: Any) -> None:
    c, name, _ = served
    x, ids = np.zeros((2, 3), np.float32), np.zeros(4, np.int64)
    with pytest.raises(tc.InferenceServerException) as e:
        c.infer(name, _inputs(x, ids), outputs=[tc.InferRequestedOutput("gv")])
    assert "INVALID_ARGUMENT" in str(e.value.status()) and "gv" in str(e.value.message())


def test_python_api_run_uses_the_same_names(served: Any, tmp_path: Path) -> None:
    from terrazzo.bundle import open_bundle

    _, _, model = served
    bundle = model.parent / "multi.tzb"
    with open_bundle(bundle) as b:
        got = b.run({"x.in": np.ones((2, 3), np.float32), "ids": np.arange(4)})
    assert list(got) == list(MULTI_OUTPUTS)
