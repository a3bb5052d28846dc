"""Placement of an ir.Graph through the real cost model, and the `terrazzo plan` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from terrazzo.cli import main
from terrazzo.errors import CostModelError
from terrazzo.ir import Graph, Op, TensorType
from terrazzo.placement import SLA, Fleet, plan, plan_to_mlir

DATA = Path(__file__).parents[2] / "data"


def mlp_graph() -> Graph:
    """x[64,4096] → matmul(4096x4096) → relu → matmul(4096x1000): one large matmul-bound chain."""
    f32 = "float32"
    values = {
        "x": TensorType((64, 4096), f32),
        "mm1": TensorType((64, 4096), f32),
        "relu": TensorType((64, 4096), f32),
        "mm2": TensorType((64, 1000), f32),
    }
    w1, w2 = 4096 * 4096 * 4, 4096 * 1000 * 4
    ops = (
        Op("mm1", "matmul", ("x",), ("mm1",), op_class="matmul", flops=2 * 64 * 4096 * 4096,
           bytes_read=64 * 4096 * 4 + w1, bytes_written=64 * 4096 * 4, param_bytes=w1),
        Op("relu", "relu", ("mm1",), ("relu",), op_class="elementwise", flops=64 * 4096,
           bytes_read=64 * 4096 * 4, bytes_written=64 * 4096 * 4),
        Op("mm2", "matmul", ("relu",), ("mm2",), op_class="matmul", flops=2 * 64 * 4096 * 1000,
           bytes_read=64 * 4096 * 4 + w2, bytes_written=64 * 1000 * 4, param_bytes=w2),
    )  # fmt: skip
    return Graph("mlp", ops, values, ("x",), ("mm2",)).verify()


FLEET = Fleet.from_dict(
    {"devices": {"cpu": {"count": 8}, "t4": {}, "h100": {"count": 2}}, "pricing": {"mode": "cloud"}}
)


def test_graph_plan_with_costmodel_meets_sla_and_beats_baselines() -> None:
    g = mlp_graph()
    plans = {
        s: plan(g, FLEET, SLA(0.050), rps=200.0, solver=s) for s in ("milp", "homogeneous", "heft")
    }
    best = plans["milp"]
    assert best.latency_s <= 0.050 and best.gap <= 1e-4
    for s, p in plans.items():
        assert best.usd_per_hour <= p.usd_per_hour + 1e-9, s
    assert set(best.assignment) == {"mm1", "relu", "mm2"}
    text = plan_to_mlir(g, best)
    assert text.count("stage =") == 3


def test_graph_unknown_device_class() -> None:
    bad = Fleet.from_dict({"devices": {"cpu": {}, "warp-drive": {}}})
    with pytest.raises(CostModelError, match="warp-drive"):
        plan(mlp_graph(), bad, SLA(0.05))


def test_cli_plan_task_graph_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "plan.mlir"
    rc = main(["plan", str(DATA / "tasks" / "issue_example.yaml"), "--json", "-o", str(out)])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["placement"] == {"prefill": "hp", "decode": "co"}
    assert d["cost_usd"] == pytest.approx(0.095) and d["latency_ms"] == pytest.approx(120.0)
    assert d["solver"] == "milp" and d["gap"] <= 1e-6 and len(d["stages"]) == 2
    assert 'device = "co"' in out.read_text()


def test_cli_plan_graph_json_and_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    gj = tmp_path / "mlp.json"
    gj.write_text(json.dumps(mlp_graph().to_json()))
    rc = main(
        [
            "plan",
            str(gj),
            "--fleet",
            str(DATA / "fleets" / "mixed.yaml"),
            "--sla",
            "50ms",
            "--rps",
            "100",
            "--json",
        ]
    )
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["latency_ms"] <= 50 and d["usd_per_hour"] > 0
    rc = main(["plan", str(DATA / "tasks" / "issue_example.yaml"), "--sla", "100ms"])
    assert rc == 2
    assert "all-on hp at 105 ms" in capsys.readouterr().err
    rc = main(["plan", str(DATA / "tasks" / "issue_example.yaml"), "--solver", "heft"])
    assert rc == 0
    assert "plan by heft" in capsys.readouterr().out


def test_graph_problem_transfers_pay_the_link_latency() -> None:
    from terrazzo.costmodel import CostModel, load_catalog
    from terrazzo.placement.adapters import problem_from_graph

    cat = load_catalog()
    p = problem_from_graph(mlp_graph(), FLEET, SLA(0.050), catalog=cat)
    cm = CostModel(cat)
    i, j = FLEET.names.index("cpu"), FLEET.names.index("h100")
    link = cm.link("cpu", "h100")
    from terrazzo.costmodel.efficiency import RUNTIME_HOP_LATENCY_S

    # fixed part = the link's latency (not the 0 an empty transfer costs) plus the runtime's
    # stage hop; slope = 1/bandwidth; every class change pays the hop's host CPU time
    assert link.latency_s > 0
    assert p.xfer_base_s[i, j] == pytest.approx(link.latency_s + RUNTIME_HOP_LATENCY_S, rel=1e-6)
    assert p.xfer_usd[i, j] > 0 and p.xfer_usd[i, i] == 0.0
    assert p.xfer_s_per_byte[i, j] == pytest.approx(1.0 / link.bw_bytes_per_s, rel=1e-6)
    assert p.xfer_base_s[i, i] == 0.0
