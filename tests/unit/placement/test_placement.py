"""Placement on small problems whose optimum is computed by hand, for every solver."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from terrazzo.errors import PlacementError, VerifyError
from terrazzo.placement import (
    SLA,
    SOLVERS,
    Fleet,
    Plan,
    compute_stages,
    load_task_graph,
    make_problem,
    plan,
    plan_to_mlir,
    solve,
    solve_milp,
    task_graph_to_ir,
)

DATA = Path(__file__).parents[2] / "data"
ISSUE = DATA / "tasks" / "issue_example.yaml"


# -- the task graph of the issue -----------------------------------------------------------------
def test_issue_example_sla_120ms_binding() -> None:
    """SLA 120 ms; the four placements (prefill, decode):

    hp, hp: 80 + 25       = 105 ms, 0.08 + 0.03         = 0.110 USD  (meets)
    hp, co: 80 + 10 + 30  = 120 ms, 0.08 + 0.005 + 0.01 = 0.095 USD  (meets, exactly at the SLA)
    co, hp: 130 + 0 + 25  = 155 ms                                    (misses)
    co, co: 130 + 30      = 160 ms, 0.05 + 0.01         = 0.060 USD  (misses)
    Optimum: prefill on hp, decode on co, 0.095 USD per request, 120 ms; the SLA binds.
    """
    for solver in ("milp", "heuristic", "greedy"):
        p = plan(ISSUE, solver=solver)
        assert dict(p.assignment) == {"prefill": "hp", "decode": "co"}, solver
        assert p.usd_per_request == pytest.approx(0.095)
        assert p.latency_s == pytest.approx(0.120)
        assert [s.device for s in p.stages] == ["hp", "co"]
        assert len(p.transfers) == 1 and p.transfers[0].latency_s == pytest.approx(0.010)
    assert plan(ISSUE, solver="milp").gap <= 1e-6


def test_issue_example_baselines_sla_120ms() -> None:
    """Homogeneous: all-hp 0.110 (all-co misses at 160 ms). HEFT minimises makespan: all-hp
    (105 ms). Mélange whole-model replicas: only hp meets the SLA → 0.110."""
    for solver in ("homogeneous", "heft", "melange"):
        p = plan(ISSUE, solver=solver)
        assert set(p.assignment.values()) == {"hp"}, solver
        assert p.usd_per_request == pytest.approx(0.110)
        assert p.latency_s == pytest.approx(0.105)


def test_issue_example_sla_not_binding() -> None:
    """SLA 200 ms: all-co (160 ms, 0.06 USD) is cheapest of the four and meets the SLA."""
    for solver in ("milp", "heuristic", "greedy", "homogeneous", "melange"):
        p = plan(ISSUE, sla=SLA(0.200), solver=solver)
        assert set(p.assignment.values()) == {"co"}, solver
        assert p.usd_per_request == pytest.approx(0.06)
        assert p.latency_s < 0.200


def test_issue_example_infeasible_names_binding_constraint() -> None:
    """SLA 100 ms: the fastest option is all-hp at 105 ms."""
    for solver in SOLVERS:
        with pytest.raises(PlacementError, match=r"latency ≤ 100 ms.*all-on hp at 105 ms"):
            plan(ISSUE, sla=SLA(0.100), solver=solver)


# -- a priced chain: the objective is fleet USD/hour with device integrality ---------------------
def chain_problem(sla_s: float, gpu_count: float = math.inf):
    """x → y → z at 100 rps, utilisation 1; cpu 1 USD/h, gpu 4 USD/h; 5 ms per cpu↔gpu hop.

    latency ms (cpu/gpu): x 80/2, y 10/8, z 10/9. devices = ceil(100 · busy_s).
    CCC 100 ms 10 cpu = $10 | GCC 27 ms 1 gpu + 2 cpu = $6 | GGC 25 ms 1 gpu (busy 0.010 s)
    + 1 cpu = $5 | GGG 19 ms 2 gpu = $8 | GCG 31 ms 2 gpu + 1 cpu = $9 | others ≥ $13.
    Not binding (1 s): GGC $5. Binding (24 ms): only GGG (19 ms) → $8.
    """
    ms = 1e-3
    return make_problem(
        ["x", "y", "z"],
        ["cpu", "gpu"],
        {
            "x": {"cpu": 80 * ms, "gpu": 2 * ms},
            "y": {"cpu": 10 * ms, "gpu": 8 * ms},
            "z": {"cpu": 10 * ms, "gpu": 9 * ms},
        },  # fmt: skip
        edges=[("x", "y"), ("y", "z")],
        sla=SLA(sla_s),
        rps=100.0,
        target_utilisation=1.0,
        usd_per_hour={"cpu": 1.0, "gpu": 4.0},
        count={"gpu": gpu_count},
        transfer_s={("cpu", "gpu"): 5 * ms, ("gpu", "cpu"): 5 * ms},
        power_w={"cpu": 100.0, "gpu": 200.0},
    )


EXPECTED_CHAIN = {
    # solver: (SLA 1 s, SLA 24 ms)
    "milp": ("GGC", "GGG"),
    "heuristic": ("GGC", "GGG"),
    "greedy": ("GCC", "GGG"),  # x cheapest on gpu, then y and z cheapest on cpu
    "homogeneous": ("GGG", "GGG"),  # $8 beats CCC $10
    "heft": ("GGG", "GGG"),  # makespan-optimal whatever the SLA
    "melange": ("GGG", "GGG"),  # 1 gpu + cpus for the rest costs ≥ $9
}
USD = {"GGC": 5.0, "GGG": 8.0, "GCC": 6.0}


@pytest.mark.parametrize("solver", SOLVERS)
def test_chain_known_optimum(solver: str) -> None:
    for k, sla_s in enumerate((1.0, 0.024)):
        p = solve(chain_problem(sla_s), solver)
        code = "".join("G" if p.assignment[t] == "gpu" else "C" for t in "xyz")
        assert code == EXPECTED_CHAIN[solver][k], (solver, sla_s)
        assert p.usd_per_hour == pytest.approx(USD[code])
        assert p.latency_s <= sla_s
        assert p.usd_per_request == pytest.approx(USD[code] / 360000.0)
        p.verify()


def test_chain_plan_details() -> None:
    p = solve(chain_problem(1.0), "milp")
    assert p.gap <= 1e-6 and p.solver == "milp"
    assert [(s.device, s.ops, s.replicas) for s in p.stages] == [
        ("gpu", ("x", "y"), 1),
        ("cpu", ("z",), 1),
    ]
    assert p.devices == {"gpu": 1, "cpu": 1}
    assert p.latency_s == pytest.approx(0.025)
    assert p.energy_j_per_request == pytest.approx(0.010 * 200 + 0.010 * 100)
    assert p.critical_path == ("x", "y", "z")
    assert p.throughput_rps == pytest.approx(100.0)  # gpu saturated: 1 device / 0.010 s
    assert p.usd_per_million_requests == pytest.approx(5.0 / 360000.0 * 1e6)


def test_count_binding_is_reported() -> None:
    """SLA 24 ms needs all-gpu (2 gpus at 100 rps); with one gpu nothing fits."""
    with pytest.raises(PlacementError, match=r"gpu needs 2 devices > 1 available"):
        solve(chain_problem(0.024, gpu_count=1), "milp")
    # without the latency pressure one gpu suffices: GGC
    p = solve(chain_problem(1.0, gpu_count=1), "milp")
    assert p.devices["gpu"] == 1 and p.usd_per_hour == pytest.approx(5.0)


def test_memory_forces_split() -> None:
    """Two 6 GB ops, SLA 15 ms: all-cpu takes 20 ms, all-gpu exceeds its 10 GB, so one op
    goes to each (11 ms, 1.5 USD/h)."""
    ms = 1e-3
    prob = make_problem(
        ["a", "b"], ["cpu", "gpu"],
        {"a": {"cpu": 10 * ms, "gpu": 1 * ms}, "b": {"cpu": 10 * ms, "gpu": 1 * ms}},
        edges=[("a", "b")], sla=SLA(0.015), rps=1.0, target_utilisation=1.0,
        usd_per_hour={"cpu": 1.0, "gpu": 0.5},
        mem_bytes={"a": 6e9, "b": 6e9}, device_mem_bytes={"gpu": 10e9},
    )  # fmt: skip
    for solver in ("milp", "heuristic", "greedy", "heft"):
        p = solve(prob, solver)
        assert sorted(p.assignment.values()) == ["cpu", "gpu"], solver
    with pytest.raises(PlacementError, match="closest is"):
        solve(prob, "homogeneous")  # no single class works
    with pytest.raises(PlacementError, match=r"gpu memory 11.2 GiB > 9.31 GiB"):
        solve(make_problem(
            ["a", "b"], ["gpu"], {"a": {"gpu": 1e-3}, "b": {"gpu": 1e-3}}, edges=[("a", "b")],
            sla=SLA(1.0), mem_bytes={"a": 6e9, "b": 6e9}, device_mem_bytes={"gpu": 10e9},
        ), "milp")  # fmt: skip


def test_parallel_branches_overlap_and_stages_are_acyclic() -> None:
    """a → b → c and a → c with a, c on d1 and b on d2: {a, c} is connected on d1 but must
    split, else the stage DAG has a cycle d1 → d2 → d1."""
    prob = make_problem(
        ["a", "b", "c"], ["d1", "d2"],
        {"a": {"d1": 1.0, "d2": 1.0}, "b": {"d1": 1.0, "d2": 1.0}, "c": {"d1": 1.0, "d2": 1.0}},
        edges=[("a", "b"), ("b", "c"), ("a", "c")], sla=SLA(10.0),
    )  # fmt: skip
    st = compute_stages(prob, np.array([0, 1, 0]))
    assert list(st) == [0, 1, 2]
    st = compute_stages(prob, np.array([0, 0, 0]))
    assert list(st) == [0, 0, 0]


def test_diamond_critical_path() -> None:
    """s → (p, q) → t: p and q run in parallel; latency = s + max(p, q) + t."""
    prob = make_problem(
        ["s", "p", "q", "t"], ["cpu"],
        {"s": {"cpu": 1e-3}, "p": {"cpu": 5e-3}, "q": {"cpu": 3e-3}, "t": {"cpu": 1e-3}},
        edges=[("s", "p"), ("s", "q"), ("p", "t"), ("q", "t")], sla=SLA(0.0075),
        usd_per_hour={"cpu": 1.0},
    )  # fmt: skip
    p = solve(prob, "milp")
    assert p.latency_s == pytest.approx(0.007)
    assert p.critical_path == ("s", "p", "t")
    assert len(p.stages) == 1 and p.stages[0].latency_s == pytest.approx(0.010)


def test_tbt_error_names_best_device() -> None:
    prob = make_problem(
        ["prefill", "decode"], ["l4", "h100"],
        {"prefill": {"l4": 0.5, "h100": 0.1}, "decode": {"l4": 9.0, "h100": 2.7}},
        edges=[("prefill", "decode")], sla=SLA(20.0, tbt_s=0.020), decode_steps={"decode": 100},
    )  # fmt: skip
    with pytest.raises(
        PlacementError, match=r"no device meets TBT ≤ 20 ms for decode; best is h100 at 27 ms"
    ):
        solve(prob, "milp")


def test_ttft_bounds_prefill() -> None:
    """TTFT 200 ms forces prefill on h100 (100 ms) though l4 is cheaper."""
    prob = make_problem(
        ["prefill", "decode"], ["l4", "h100"],
        {"prefill": {"l4": 0.5, "h100": 0.1}, "decode": {"l4": 1.0, "h100": 0.5}},
        edges=[("prefill", "decode")], sla=SLA(20.0, ttft_s=0.2), prefill=["prefill"],
        cost_usd={"prefill": {"l4": 1.0, "h100": 2.0}, "decode": {"l4": 1.0, "h100": 2.0}},
    )  # fmt: skip
    for solver in ("milp", "heuristic", "greedy"):
        p = solve(prob, solver)
        assert dict(p.assignment) == {"prefill": "h100", "decode": "l4"}, solver
        assert p.ttft_s == pytest.approx(0.1)


# -- Plan invariants and forms -------------------------------------------------------------------
def test_plan_json_roundtrip_and_verify() -> None:
    p = plan(ISSUE)
    d = json.loads(p.to_json_str())
    for key in ("placement", "latency_ms", "cost_usd", "usd_per_hour", "solver", "gap", "stages"):
        assert key in d
    q = Plan.from_json(d)
    assert q == p
    bad = dict(d, latency_ms=500.0)
    with pytest.raises(VerifyError, match="exceeds the SLA"):
        Plan.from_json(bad).verify()
    bad = dict(d, placement={"prefill": "co", "decode": "co"})
    with pytest.raises(VerifyError, match="assigned to co"):
        Plan.from_json(bad).verify()


def test_plan_to_mlir_has_device_and_stage_on_every_op() -> None:
    tg = load_task_graph(ISSUE)
    p = plan(tg)
    text = plan_to_mlir(task_graph_to_ir(tg), p)
    assert 'device = "hp"' in text and 'device = "co"' in text
    assert text.count("stage =") == 2
    from terrazzo.ir.dialect import parse_graph

    g = parse_graph(text)
    assert {o.name: (o.device, o.stage) for o in g.ops} == {
        "prefill": ("hp", 0),
        "decode": ("co", 1),
    }


# -- fleet and task-file validation --------------------------------------------------------------
def test_fleet_yaml(tmp_path: Path) -> None:
    f = tmp_path / "f.yaml"
    f.write_text(
        "devices: {cpu: {count: 4}, t4: {}, h100: {count: 2}}\npricing: {mode: capex, years: 3}\n"
    )
    fl = Fleet.from_yaml(f)
    assert fl.names == ("cpu", "t4", "h100")
    assert fl.count("t4") == math.inf and fl.count("h100") == 2
    opts = fl.pricing.to_tco_options()
    assert opts.pricing == "capex" and opts.years == 3
    f.write_text("devices: {cpu: {count: 0}}\n")
    with pytest.raises(PlacementError, match=r"devices.cpu.count.*got 0"):
        Fleet.from_yaml(f)
    f.write_text("devices: {cpu: {}}\npricing: {pue: 0.5}\n")
    with pytest.raises(PlacementError, match=r"pricing.pue.*0.5"):
        Fleet.from_yaml(f)
    f.write_text("devices: {cpu: {cnt: 3}}\n")
    with pytest.raises(PlacementError, match="cnt"):
        Fleet.from_yaml(f)


def test_task_graph_errors(tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text("tasks:\n  - {name: a, after: [zz], profile: {x: {latency_ms: 1}}}\n")
    with pytest.raises(PlacementError, match="unknown tasks: zz"):
        load_task_graph(f)
    f.write_text(
        "tasks:\n  - {name: a, after: [b], profile: {x: {latency_ms: 1}}}\n  - {name: b, after: [a], profile: {x: {latency_ms: 1}}}\nsla: {latency_ms: 5}\n"
    )
    with pytest.raises(PlacementError, match="cycle"):
        plan(f)
    f.write_text("tasks:\n  - {name: a, profile: {x: {latency_ms: -1}}}\n")
    with pytest.raises(PlacementError, match=r"latency_ms.*-1"):
        load_task_graph(f)


def test_task_graph_with_fleet_counts() -> None:
    fleet = Fleet.from_dict({"devices": {"co": {}}})
    p = plan(ISSUE, fleet=fleet, sla=SLA(0.2))
    assert set(p.assignment.values()) == {"co"}
    with pytest.raises(PlacementError, match="appear in no task profile"):
        plan(ISSUE, fleet=Fleet.from_dict({"devices": {"tpu": {}}}))


def test_milp_warm_start_and_time_limit_report_gap() -> None:
    prob = chain_problem(1.0)
    warm = np.array([1, 0, 0])  # GCC, feasible, $6
    res = solve_milp(prob, time_limit_s=5.0, warm_start=warm)
    assert res.objective == pytest.approx(5.0) and res.gap <= 1e-6
    assert list(res.assign) == [1, 1, 0]


def test_unknown_solver() -> None:
    with pytest.raises(PlacementError, match="unknown solver"):
        plan(ISSUE, solver="magic")
