"""Node kinds as data: a kind registered here (and nowhere else) compiles and runs; the plan.json contract is validated."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import yaml

from terrazzo.errors import BundleError, FrontendError
from terrazzo.frontend.agent_schema import AgentNodeEntry
from terrazzo.frontend.agent_spec import NodeSpecBase
from terrazzo.frontend.kinds import (
    Lowered,
    NodeKind,
    node_kind,
    register_kind,
    unregister_kind,
)

FLEET = {"devices": {"cpu": {"count": 4}}, "pricing": {"mode": "cloud"}}


# -- a new kind, in this file only: `scale` multiplies its input by a constant on a CPU worker ---
class ScaleNode(NodeSpecBase):
    type: Literal["scale"]
    factor: float = 2.0


class ScaleEntry(AgentNodeEntry):
    device: str
    factor: float


def scale_runner(input: str, output: str, factor: float) -> Any:
    """The runner factory a worker builds (``module:function`` in the stage's RunnerSpec)."""
    return lambda values: {output: (np.asarray(values[input]) * factor).astype(np.float32)}


SCALE = NodeKind(
    "scale",
    "scale.call",
    ScaleNode,
    ScaleEntry,
    lower=lambda node, cx: Lowered({"factor": node.factor}, cx.values[cx.inputs[0]]),
    op_class="other",
    cpu_only=True,
    cost=lambda op, spec, cm: (1e-4, 1),
    build=lambda op, cx: {"device": cx.assignment[op.name], "factor": float(op.attr("factor"))},
    runner=lambda b, n, st: b.add(
        n.device,
        st.preds,
        [st.out],
        f"{__name__}:scale_runner",
        {"input": st.preds[0], "output": st.out, "factor": n.factor},
    ),  # fmt: skip
)


class AddOne:
    """The model node after the new kind: ``x * 3 + 1`` (no weights)."""

    def __new__(cls) -> Any:
        import torch

        class _M(torch.nn.Module):
            def forward(self, x: Any) -> Any:
                return x * 3.0 + 1.0

        return _M()


def make_model() -> Any:
    return AddOne()


@pytest.fixture()
def scale_kind():
    register_kind(SCALE, replace=True)
    yield SCALE
    unregister_kind("scale")


def _spec(tmp_path: Path) -> Path:
    spec = {
        "name": "scaled",
        "nodes": [
            {"type": "input", "name": "x", "shape": [1, 4], "dtype": "float32"},
            {"type": "scale", "name": "twice", "factor": 2.0},
            {"type": "model", "name": "affine", "torch": f"{__name__}:make_model",
             "example_inputs": {"x": {"shape": [1, 4], "dtype": "float32"}}},
            {"type": "output", "name": "y"},
        ],
        "edges": ["x -> twice", "twice -> affine", "affine -> y"],
    }  # fmt: skip
    path = tmp_path / "scaled.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def scaled_bundle(tmp_path_factory) -> Path:
    from terrazzo.pipeline import compile_agent
    from terrazzo.placement import Fleet

    tmp = tmp_path_factory.mktemp("kinds")
    register_kind(SCALE, replace=True)
    try:
        res = compile_agent(_spec(tmp), Fleet.model_validate(FLEET), 5.0, tmp / "scaled.tzb")
    finally:
        unregister_kind("scale")
    assert res.devices == {"x": "cpu", "twice": "cpu", "affine": "cpu"}
    return res.path


def test_a_kind_registered_in_one_file_compiles_and_runs_in_process(scaled_bundle, scale_kind):
    from terrazzo.bundle import open_bundle
    from terrazzo.frontend import load_agent
    from terrazzo.ir.dialect import print_graph
    from terrazzo.runtime.agent_plan import LocalAgent, agent_serving_plan, runner_kind

    g = load_agent(_spec(scaled_bundle.parent))
    op = next(o for o in g.ops if o.name == "twice")
    assert op.kind == "scale.call" and op.attr("factor") == 2.0
    assert '"scale.call"' in print_graph(g)  # the tz dialect's generic op carries the kind
    with open_bundle(scaled_bundle) as b:
        entry = b.agent.node("twice")
    assert isinstance(entry, ScaleEntry) and entry.factor == 2.0
    plan = agent_serving_plan(scaled_bundle)
    assert [runner_kind(s) for s in plan.stages] == ["scale_runner", "model_stage"]
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    env = LocalAgent(plan)({"x": x})
    np.testing.assert_allclose(env["y"], x * 2.0 * 3.0 + 1.0, rtol=1e-6)


def test_unregistered_kind_is_refused_with_the_known_ones(tmp_path):
    from terrazzo.frontend import load_agent

    with pytest.raises(FrontendError, match=r"unknown node type; expected one of input, .*output"):
        load_agent(_spec(tmp_path))


def test_registry_refuses_clashes(scale_kind):
    with pytest.raises(ValueError, match="already registered"):
        register_kind(SCALE)
    assert node_kind("scale.call") is SCALE and node_kind("llm.decode").type == "llm"
    with pytest.raises(KeyError, match="unknown agent node kind 'nope'"):
        node_kind("nope")
    with pytest.raises(ValueError, match="structural"):
        register_kind(NodeKind("output", "o.x", ScaleNode, ScaleEntry, lambda n, c: None))


def test_every_builtin_kind_has_all_its_hooks():
    import terrazzo.pipeline  # noqa: F401  (build hooks)
    import terrazzo.report  # noqa: F401  (cost hooks)
    import terrazzo.runtime.agent_plan  # noqa: F401  (runner hooks)
    from terrazzo.frontend.kinds import missing_hooks, node_kinds

    kinds = {k.type: k for k in node_kinds()}
    assert {"input", "model", "llm", "tool", "retrieve", "memory.load", "memory.store"} <= set(
        kinds
    )
    assert {t: missing_hooks(k) for t, k in kinds.items() if missing_hooks(k)} == {}


# -- the plan.json contract ----------------------------------------------------------------------
def _rewrite_agent(src: Path, dst: Path, edit) -> Path:
    """Copy a bundle with an edited plan.json agent section, re-hashed in the manifest."""
    with tarfile.open(src, "r:") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    pj = json.loads(members["plan.json"])
    edit(pj["agent"])
    data = json.dumps(pj).encode()
    members["plan.json"] = data
    manifest = json.loads(members["manifest.json"])
    manifest["members"]["plan.json"].update(
        sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data)
    )
    members["manifest.json"] = json.dumps(manifest).encode()
    # re-signed with the local (trusted) key: a trusted signer's malformed section
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from terrazzo.bundle import ensure_local_key

    key = load_pem_private_key(ensure_local_key().read_bytes(), None)
    members["manifest.sig"] = key.sign(members["manifest.json"])  # type: ignore[call-arg]
    with tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return dst


def _drop_device(agent: dict) -> None:
    del next(n for n in agent["nodes"] if n["name"] == "affine")["device"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_drop_device, r"nodes: node 'affine': device: Field required"),
        (
            lambda a: a.update(schema_version=99),
            r"schema_version: 99 is not 1, the version this terrazzo reads",
        ),
        (
            lambda a: a["nodes"][1].update(kind="teleport"),
            r"nodes: node 'twice': unknown kind 'teleport'",
        ),
        (lambda a: a["outputs"].update(z="ghost"), r"output 'z': unknown node 'ghost'"),
        (lambda a: a.update(nodes="none"), r"nodes: expected a list"),
    ],
)
def test_malformed_agent_section_is_refused_in_one_line(
    scaled_bundle, scale_kind, tmp_path, edit, expected
):
    from terrazzo.bundle import open_bundle

    bad = _rewrite_agent(scaled_bundle, tmp_path / "bad.tzb", edit)
    with pytest.raises(
        BundleError, match=r"plan\.json 'agent' section is malformed: " + expected
    ) as e:
        open_bundle(bad)
    assert "\n" not in str(e.value)


def test_cli_refuses_a_malformed_agent_section_with_exit_2(
    scaled_bundle, scale_kind, tmp_path, capsys
):
    from terrazzo.cli import main

    bad = _rewrite_agent(scaled_bundle, tmp_path / "bad.tzb", _drop_device)
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "node 'affine': device: Field required" in err


def test_untouched_copy_still_opens(scaled_bundle, scale_kind, tmp_path):
    from terrazzo.bundle import open_bundle

    same = _rewrite_agent(scaled_bundle, tmp_path / "same.tzb", lambda a: None)
    with open_bundle(same) as b:
        assert b.agent.schema_version == 1 and b.agent.loops == {}
