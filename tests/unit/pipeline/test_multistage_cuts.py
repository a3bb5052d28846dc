"""Multi-stage plans tested (issue 13, deliverable 3): a small transformer and a small CNN cut
at every op boundary, and an 8-stage BERT on three device classes, each through the CLI
(plan → edit the placed IR → compile → run → verify) and matched against onnxruntime.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.unit.pipeline.test_stages_names import FLEET, cli, cut_every_op, ort_run


def _attention_block() -> Any:
    import torch
    from torch import nn

    class Block(nn.Module):
        """One pre-norm transformer block, d=16, 2 heads, GELU MLP."""

        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(16), nn.LayerNorm(16)
            self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)
            self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

        def forward(self, x: Any) -> Any:
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(16, dim=-1)
            q, k, v = (z.reshape(b, t, 2, 8).transpose(1, 2) for z in (q, k, v))
            att = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1)
            x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
            return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))

    return Block(), (torch.randn(1, 8, 16),)


def _small_cnn() -> Any:
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.c2 = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 5)

        def forward(self, x: Any) -> Any:
            y = nn.functional.max_pool2d(torch.relu(self.b1(self.c1(x))), 2)
            y = torch.relu(y + self.c2(y))
            return self.fc(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))

    return Net(), (torch.randn(1, 3, 16, 16),)


def _cut_and_check(tmp: Path, build: Any) -> None:
    import torch

    from terrazzo import zoo

    torch.manual_seed(0)
    model, inputs = build()
    onnx_path = zoo.export_module(model.eval(), inputs, ["x"], tmp / "m.onnx")
    fleet = tmp / "fleet.yaml"
    fleet.write_text(json.dumps(FLEET))
    placed = tmp / "placed.mlir"
    assert (
        cli("plan", str(onnx_path), "--fleet", str(fleet), "--sla", "1s", "-o", str(placed))[0] == 0
    )
    text, n_ops = cut_every_op(placed.read_text(), ("cpu",))
    (tmp / "cut.mlir").write_text(text)
    bundle = tmp / "m.tzb"
    assert cli("compile", str(tmp / "cut.mlir"), "--fleet", str(fleet), "-o", str(bundle))[0] == 0
    rc, out = cli("verify", str(bundle), "--json")
    rep = json.loads(out)
    assert rc == 0 and rep["numerics"] == "ok", rep
    assert rep["reference"].startswith("onnxruntime")
    assert sum(c["what"].startswith("stage ") for c in rep["checks"]) == n_ops

    from terrazzo.bundle import compare_arrays, open_bundle

    x = inputs[0].numpy()
    with open_bundle(bundle) as b:
        assert len(b.stages) == n_ops
        runners = b.load_stages()
        for feed in (x, np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x)):
            feed = feed.astype(np.float32)
            got = b.run({"x": feed}, runners)["output"]
            want = ort_run(onnx_path, {"x": feed})["output"]
            d, why = compare_arrays(got, want)
            assert why is None and d <= 1e-4, (d, why)


@pytest.mark.slow
def test_transformer_block_cut_at_every_op_matches_onnxruntime(tmp_path: Path) -> None:
    _cut_and_check(tmp_path, _attention_block)


@pytest.mark.slow
def test_cnn_cut_at_every_op_matches_onnxruntime(tmp_path: Path) -> None:
    _cut_and_check(tmp_path, _small_cnn)


@pytest.mark.slow
def test_bert_in_8_stages_on_3_device_classes_runs_and_verifies(tmp_path: Path) -> None:
    """The issue's done-when, as a user would: 8 contiguous stages on cpu, t4 and l4."""
    from terrazzo import zoo

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(json.dumps(FLEET))
    placed = tmp_path / "placed.mlir"
    rc, out = cli("plan", "zoo:bert", "--fleet", str(fleet), "--sla", "1s", "-o", str(placed))
    assert rc == 0, out
    lines = placed.read_text().splitlines()
    ops = [i for i, ln in enumerate(lines) if '{name = "' in ln and "stage = " in ln]
    devices = ("cpu", "t4", "l4")
    for k, i in enumerate(ops):
        s = k * 8 // len(ops)
        lines[i] = re.sub(r"stage = \d+", f"stage = {s}", lines[i])
        lines[i] = re.sub(r'device = "[^"]*"', f'device = "{devices[s % 3]}"', lines[i])
    (tmp_path / "bert8.mlir").write_text("\n".join(lines) + "\n")
    bundle = tmp_path / "bert8.tzb"
    assert (
        cli("compile", str(tmp_path / "bert8.mlir"), "--fleet", str(fleet), "-o", str(bundle))[0]
        == 0
    )
    rc, out = cli("inspect", str(bundle), "--json")
    info = json.loads(out)
    assert len(info["stages"]) == 8 and {s["device"] for s in info["stages"]} == set(devices)
    assert [o["name"] for o in info["outputs"]] == ["output"]

    feeds = zoo.example_inputs_numpy("bert")
    np.save(tmp_path / "ids.npy", feeds["input_ids"])
    rc, out = cli("run", str(bundle), "--input", f"input_ids={tmp_path / 'ids.npy'}",
                  "-o", str(tmp_path / "out.npz"), "--json")  # fmt: skip
    assert rc == 0
    got = np.load(tmp_path / "out.npz")["output"]
    want = ort_run(zoo.export_onnx("bert", tmp_path), feeds)["output"]
    assert float(np.abs(got - want).max()) <= 1e-4

    rc, out = cli("verify", str(bundle))
    assert rc == 0, out
    assert "numerics ok against onnxruntime" in out.splitlines()[0]
    assert sum(ln.strip().startswith("ok   stage ") for ln in out.splitlines()) == 8
