"""The placed IR as the contract: the placement→MLIR pass (golden text), reading an edited
placed IR back (each broken edit refused with one line naming the op), and plan → edit →
compile → inspect → run matching onnxruntime."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from terrazzo.errors import VerifyError
from terrazzo.ir import Graph, Op, TensorType
from terrazzo.ir.dialect import parse_graph, print_graph
from terrazzo.placement import (
    SLA,
    Fleet,
    ModelSource,
    Plan,
    Stage,
    check_placed,
    plan_to_mlir,
    read_placed,
)

GOLDEN = Path(__file__).parents[2] / "data" / "golden"
SEPARATOR = "// -----\n"
FLEET = {"devices": {"cpu": {"count": 4}, "t4": {"count": 2}}, "pricing": {"mode": "cloud"}}


def _chain() -> Graph:
    f = TensorType((2, 4), "float32")
    return Graph(
        name="chain",
        ops=(
            Op("mm", "matmul", ("x",), ("mm",), (), "matmul", 64, 96, 32, 64),
            Op("act", "relu", ("mm",), ("act",), (), "elementwise", 8, 32, 32),
            Op("out", "add", ("act",), ("out",), (), "elementwise", 8, 32, 32, 16),
        ),
        values={"x": f, "mm": f, "act": f, "out": f},
        inputs=("x",),
        outputs=("out",),
        attrs=(("source", "onnx"),),
    )


def _chain_plan() -> Plan:
    return Plan(
        solver="milp",
        gap=0.0,
        assignment={"mm": "t4", "act": "t4", "out": "cpu"},
        stages=(
            Stage(0, "t4", ("mm", "act"), 1, 0.002, 0.5),
            Stage(1, "cpu", ("out",), 1, 0.001, 0.25),
        ),
        transfers=(),
        latency_s=0.003,
        throughput_rps=300.0,
        usd_per_hour=0.75,
        usd_per_request=0.75 / 3600.0,
        energy_j_per_request=0.1,
        sla=SLA(0.05),
        rps=1.0,
    )


# -- the pass: golden text, and the IR verifies after it ----------------------------------------
def test_golden_plan_to_mlir() -> None:
    path = GOLDEN / "plan_to_mlir_chain.mlir"
    before, expected = path.read_text(encoding="utf-8").split(SEPARATOR)
    assert before.startswith("// RUN: plan_to_mlir\n")
    graph = parse_graph(before)
    assert graph == _chain()  # the text before is the unplaced graph
    assert print_graph(graph) in before
    after = plan_to_mlir(graph, _chain_plan(), ModelSource("zoo:chain", "ab" * 32))
    assert after == expected, f"{path.name}: pass output differs from the golden text"
    placed = read_placed(after)  # parses, verifies, device and stage on every op
    assert {o.name: (o.device, o.stage) for o in placed.ops} == {
        "mm": ("t4", 0),
        "act": ("t4", 0),
        "out": ("cpu", 1),
    }


# -- the verifier: broken edits, one line each naming the op ------------------------------------
def _edit(text: str, op: str, **attrs: object) -> str:
    line = next(ln for ln in text.splitlines() if f'name = "{op}"' in ln)
    new = line
    for k, v in attrs.items():
        rep = f'"{v}"' if isinstance(v, str) else str(v)
        new = re.sub(rf"{k} = (\"[^\"]*\"|\d+)", f"{k} = {rep}", new)
    return text.replace(line, new)


def _placed_chain() -> str:
    return plan_to_mlir(_chain(), _chain_plan(), ModelSource("zoo:chain", "ab" * 32))


def _refusal(text: str) -> str:
    with pytest.raises(VerifyError) as e:
        check_placed(read_placed(text), _chain(), Fleet.from_dict(FLEET))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_unedited_placement_keeps_its_stages() -> None:
    assert check_placed(read_placed(_placed_chain()), _chain(), Fleet.from_dict(FLEET)) == {
        "mm": 0,
        "act": 0,
        "out": 1,
    }


def test_device_edit_splits_the_stage_it_leaves() -> None:
    text = _edit(_placed_chain(), "mm", device="cpu")  # first op: cpu → t4 → cpu, acyclic
    got = check_placed(read_placed(text), _chain(), Fleet.from_dict(FLEET))
    assert got == {"mm": 0, "act": 1, "out": 2}


def test_refuses_unknown_device_class() -> None:
    msg = _refusal(_edit(_placed_chain(), "act", device="a100"))
    assert msg == "op 'act': device 'a100' is not a device class of the fleet (cpu, t4)"


def test_refuses_cyclic_stage_graph() -> None:
    one_stage = _edit(_placed_chain(), "out", device="t4", stage=0)
    # a middle op alone on another class: out of stage 0 and back into it
    msg = _refusal(_edit(one_stage, "act", device="cpu"))
    assert msg.startswith("op 'act': the stage graph is cyclic (stage 0 on ")
    # a stage number alone makes the same cycle
    msg = _refusal(_edit(one_stage, "act", stage=1))
    assert msg.startswith("op 'act': the stage graph is cyclic (stage ")


def test_refuses_ops_missing_from_or_not_in_the_model() -> None:
    text = _placed_chain()
    renamed = _edit(text, "out").replace('name = "out"', 'name = "out2"')
    assert _refusal(renamed) == "op 'out2' in the placed IR is not an op of model 'chain'"
    model = _chain()
    smaller = Graph(
        name="chain",
        ops=model.ops[:2],
        values={k: v for k, v in model.values.items() if k != "out"},
        inputs=("x",),
        outputs=("act",),
        attrs=model.attrs,
    )
    short = plan_to_mlir(smaller, _chain_plan(), ModelSource("zoo:chain", "ab" * 32))
    assert _refusal(short) == "op 'out' of model 'chain' is missing from the placed IR"


def test_refuses_an_op_without_placement() -> None:
    text = print_graph(_chain())
    with pytest.raises(VerifyError, match="^op 'mm' has no device and stage"):
        read_placed(text)


# -- end to end: plan → edit → compile → inspect → run ------------------------------------------
@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from terrazzo.cli import main

    d = tmp_path_factory.mktemp("placed")
    fleet = d / "fleet.yaml"
    fleet.write_text(json.dumps(FLEET))
    placed = d / "placed.mlir"
    assert main(["plan", "mlp", "--fleet", str(fleet), "--sla", "50ms", "-o", str(placed)]) == 0
    return {"dir": d, "fleet": fleet, "placed": placed}


def test_plan_writes_placed_ir_naming_its_model(planned: dict[str, Path]) -> None:
    g = read_placed(planned["placed"].read_text())
    attrs = dict(g.attrs)
    assert attrs["model"] == "zoo:mlp" and len(str(attrs["model_sha256"])) == 64
    assert attrs["sla_s"] == 0.05 and attrs["rps"] == 1.0
    assert all(o.device in ("cpu", "t4") and o.stage is not None for o in g.ops)


def test_edited_placement_compiles_inspects_and_runs(
    planned: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort

    from terrazzo import zoo
    from terrazzo.cli import main

    d, text = planned["dir"], planned["placed"].read_text()
    g = read_placed(text)
    last = g.ops[-1]
    other = "cpu" if last.device == "t4" else "t4"
    edited = d / "edited.mlir"
    edited.write_text(_edit(text, last.name, device=other))
    bundle = d / "m.tzb"
    capsys.readouterr()
    rc = main(
        ["compile", str(edited), "--fleet", str(planned["fleet"]), "-o", str(bundle), "--json"]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["plan"]["solver"] == "placed-ir"

    assert main(["inspect", str(bundle), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    devices = [s["device"] for s in info["stages"]]
    assert devices[-1] == other and info["stages"][-1]["ops"] == 1
    assert len(devices) == 2 if len({o.device for o in g.ops}) == 1 else len(devices) >= 2

    assert main(["inspect", str(bundle), "--ir"]) == 0
    ir = capsys.readouterr().out
    shown = read_placed(ir)
    assert shown.op(last.name).device == other
    assert {o.name for o in shown.ops} == {o.name for o in g.ops}
    assert dict(shown.attrs)["model"] == "zoo:mlp"

    feeds = zoo.example_inputs_numpy("mlp")
    args = ["run", str(bundle), "-o", str(d / "out.npz"), "--json"]
    for k, v in feeds.items():
        np.save(d / f"{k}.npy", v)
        args += ["--input", f"{k}={d / f'{k}.npy'}"]
    assert main(args) == 0
    capsys.readouterr()
    got = np.load(d / "out.npz")
    onnx_path = zoo.export_onnx("mlp", d)
    want = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, feeds)
    for spec, w in zip(info["outputs"], want, strict=True):
        assert float(np.abs(got[spec["name"]] - w).max()) <= 1e-4


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("unknown", r"^terrazzo compile: error: op '\w+': device 'a100' is not a device class"),
        ("cyclic", r"^terrazzo compile: error: op '\w+': the stage graph is cyclic"),
        ("missing", r"^terrazzo compile: error: op '\w+' of model 'mlp' is missing"),
        ("extra", r"^terrazzo compile: error: op 'ghost' in the placed IR is not an op"),
    ],
)
def test_cli_refuses_broken_edits_with_one_line(
    planned: dict[str, Path], capsys: pytest.CaptureFixture[str], edit: str, expected: str
) -> None:
    from terrazzo.cli import main

    text = planned["placed"].read_text()
    g = read_placed(text)
    devices = {o.device for o in g.ops}
    mid = g.ops[len(g.ops) // 2]
    if edit == "unknown":
        text = _edit(text, mid.name, device="a100")
    elif edit == "cyclic":  # a middle op alone on another class: in and out of its stage again
        other = "cpu" if mid.device == "t4" else "t4"
        assert len(devices) == 1, "the mlp plan is expected on one class"
        text = _edit(text, mid.name, device=other)
    elif edit == "missing":  # drop the graph output's producer, return its input instead
        last = g.ops[-1]
        lines = [ln for ln in text.splitlines(keepends=True) if f'name = "{last.name}"' not in ln]
        text = "".join(lines).replace(
            f'"tz.output"(%{last.name})', f'"tz.output"(%{g.ops[-2].name})'
        )
    else:
        text = text.replace(f'name = "{mid.name}"', 'name = "ghost"')
    bad = planned["dir"] / f"bad-{edit}.mlir"
    bad.write_text(text)
    capsys.readouterr()
    rc = main(["compile", str(bad), "--fleet", str(planned["fleet"]), "-o", str(bad) + ".tzb"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and re.match(expected, err[0]), err
    assert not Path(str(bad) + ".tzb").exists()
