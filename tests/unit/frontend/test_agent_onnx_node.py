"""Agent model nodes given as ONNX files compile into the agent bundle and run like torch ones."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
AGENTS = ROOT / "examples" / "agents"


@pytest.mark.slow
def test_onnx_model_node_matches_its_torch_twin(tmp_path: Path) -> None:
    import torch

    from terrazzo.pipeline import compile_agent
    from terrazzo.placement import Fleet
    from terrazzo.runtime.agent_plan import run_agent_bundle

    sys.path.insert(0, str(AGENTS))
    try:
        import voice_models
    finally:
        sys.path.remove(str(AGENTS))
    tts = voice_models.text_to_speech()
    onnx_path = tmp_path / "tts.onnx"
    torch.onnx.export(tts, (torch.zeros((1, 16), dtype=torch.int64),), str(onnx_path),
                      input_names=["tokens"], output_names=["speech"], opset_version=17, dynamo=False)  # fmt: skip
    import onnx

    m = onnx.load(str(onnx_path))
    m.ir_version = 9
    onnx.save(m, str(onnx_path))

    spec = yaml.safe_load((AGENTS / "voice_agent.yaml").read_text())
    for node in spec["nodes"]:
        for key in ("torch", "function"):
            if key in node:  # make the spec's relative paths absolute for the copy in tmp_path
                node[key] = str(AGENTS / node[key])
    spec_onnx = {**spec, "nodes": [dict(n) for n in spec["nodes"]]}
    tts_node = next(n for n in spec_onnx["nodes"] if n["name"] == "tts")
    tts_node.pop("torch"), tts_node.pop("example_inputs", None)
    tts_node["onnx"] = str(onnx_path)
    paths = {}
    for name, s in (("torch", spec), ("onnx", spec_onnx)):
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(s))
        paths[name] = p
    fleet = Fleet.model_validate(
        {"devices": {"cpu": {}, "h100": {}, "a100-80g": {}}, "pricing": {"mode": "cloud"}}
    )
    audio = np.random.default_rng(0).standard_normal((1, 1600)).astype(np.float32)
    outs = {}
    for name, p in paths.items():
        res = compile_agent(p, fleet, "2s", tmp_path / f"{name}.tzb", device_builds=False)
        outs[name] = run_agent_bundle(res.path, {"audio": audio})
    np.testing.assert_allclose(
        outs["onnx"]["speech"], outs["torch"]["speech"], rtol=1e-4, atol=1e-5
    )
