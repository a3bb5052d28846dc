"""The placement heuristic against the MILP on seeded synthetic graphs, bounds and time limits."""

from __future__ import annotations

import importlib.util
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from terrazzo.placement import solve, solve_heuristic, solve_milp
from terrazzo.placement.api import lower_bound
from terrazzo.placement.heuristic import class_subsets, shed_devices
from terrazzo.placement.milp import lp_lower_bound

_SYN = Path(__file__).parents[3] / "benchmarks" / "placement_synthetic.py"


def _synthetic():  # the benchmarks' seeded generator, loaded without making benchmarks a package
    if "placement_synthetic" not in sys.modules:
        spec = importlib.util.spec_from_file_location("placement_synthetic", _SYN)
        mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        sys.modules["placement_synthetic"] = mod
    return sys.modules["placement_synthetic"]


# (ops, classes, seed): the first is the report's 10 × 6 case (heuristic was 4.02 vs 1.15
# USD/h, stuck on one class); the others need two or three classes with one device each.
CASES = [(10, 6, 16), (10, 6, 116), (20, 6, 26), (10, 10, 20), (30, 6, 136), (50, 10, 60)]


@pytest.mark.parametrize(("n", "d", "seed"), CASES)
def test_heuristic_within_2pct_of_proven_milp(n: int, d: int, seed: int) -> None:
    p = _synthetic().synthetic_problem(n, d, seed=seed)
    res = solve_milp(p, time_limit_s=30.0)
    assert res.status == "Optimal" and res.assign is not None
    h = solve_heuristic(p, time_limit_s=10.0)
    assert h is not None and p.evaluate(h).feasible
    usd = p.evaluate(h).usd_per_hour
    assert usd <= res.objective * 1.02 + 1e-9
    assert usd >= res.bound - 1e-6  # the heuristic cannot beat a proven optimum


def test_cpu_only_tasks_raise_no_runtime_warning() -> None:
    """Tasks with an inf latency on every accelerator (tools on CPUs) once gave inf * 0 = nan."""
    p = _synthetic().agent_problem(rps=20.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        a = solve_heuristic(p, time_limit_s=5.0)
    assert a is not None and p.evaluate(a).feasible
    assert all(
        p.devices[a[p.tasks.index(t)]] == "cpu" for t in ("retrieve", "web_tool", "code_tool")
    )


def test_lp_bound_sits_between_fluid_bound_and_optimum() -> None:
    p = _synthetic().synthetic_problem(20, 6, seed=26)
    lp = lp_lower_bound(p, time_limit_s=10.0)
    opt = solve_milp(p, time_limit_s=30.0).objective
    assert p.lower_bound_usd_per_hour() - 1e-9 <= lp <= opt + 1e-6
    bound, how = lower_bound(p)
    assert bound == pytest.approx(lp) and "LP relaxation" in how
    plan = solve(p, "heuristic", time_limit_s=5.0)
    assert plan.gap == pytest.approx(1.0 - lp / plan.usd_per_hour, rel=1e-6)
    assert any("LP relaxation" in note for note in plan.notes)


def test_class_subsets_cover_every_task_and_are_sorted() -> None:
    p = _synthetic().agent_problem()
    subs = class_subsets(p, 3)
    assert subs and [s[0] for s in subs] == sorted(s[0] for s in subs)
    allowed = p.allowed()
    cpu = p.devices.index("cpu")
    for lb, sub in subs:
        assert 2 <= len(sub) <= 3 and cpu in sub  # tools run only on CPUs
        assert allowed[:, list(sub)].any(axis=1).all()
        assert lb >= p.usd_per_hour[list(sub)].sum() - 1e-9


def test_shed_devices_drops_a_device_single_moves_cannot() -> None:
    """Five independent tasks, 0.3 device-loads each on 'a' (4 USD/h) and 'b' (1 USD/h).

    All on a: 1.5 loads → 2 devices = 8 USD/h. Moving one task to b leaves a at 1.2 (still 2
    devices) and rents a b device: 9 USD/h, worse. Moving two at once: a 0.9 → 1 device, b
    0.6 → 1 device = 5 USD/h. Optimum: all on b, 1.5 → 2 devices = 2 USD/h.
    """
    from terrazzo.placement import SLA, make_problem

    names = [f"t{i}" for i in range(5)]
    lat = {t: {"a": 0.003, "b": 0.003} for t in names}
    p = make_problem(names, ["a", "b"], lat, sla=SLA(1.0), rps=100.0,
                     usd_per_hour={"a": 4.0, "b": 1.0}, target_utilisation=1.0)  # fmt: skip
    one = np.array([1, 0, 0, 0, 0])
    assert p.evaluate(one).usd_per_hour == pytest.approx(9.0)
    start = np.zeros(5, dtype=np.int64)
    assert p.evaluate(start).usd_per_hour == pytest.approx(8.0)
    out = shed_devices(p, start, p.allowed(), time.perf_counter() + 5.0)
    assert p.evaluate(out).usd_per_hour <= 5.0 + 1e-9
    assert solve(p, "heuristic").usd_per_hour == pytest.approx(2.0)


def test_milp_honours_its_time_limit_on_200_ops() -> None:
    p = _synthetic().synthetic_problem(200, 10, seed=210)
    warm = solve_heuristic(p, time_limit_s=5.0)
    t0 = time.perf_counter()
    res = solve_milp(p, time_limit_s=0.5, warm_start=warm)
    assert time.perf_counter() - t0 < 5.0
    assert res.assign is not None and p.evaluate(res.assign).feasible
    assert 0.0 <= res.gap <= 1.0 and math.isfinite(res.bound)


def test_search_state_keeps_device_counts_in_step_with_moves() -> None:
    """_Search keeps per-class device counts incrementally; they must equal a fresh evaluation."""
    from terrazzo.placement.heuristic import _Search

    p = _synthetic().synthetic_problem(30, 6, seed=136)
    rng = np.random.default_rng(0)
    s = _Search(p, np.zeros(p.n, dtype=np.int64))
    for _ in range(40):
        i = int(rng.integers(p.n))
        b = int(rng.integers(p.num_devices))
        if b != s.a[i]:
            s.apply([i], b)
        ev = p.evaluate(s.a)
        assert np.array_equal(s.dev, ev.devices.astype(float))
        assert float(s.dev_usd.sum()) == pytest.approx(float((ev.devices * p.usd_per_hour).sum()))


def test_heuristic_plan_notes_split_search_and_bound_time() -> None:
    p = _synthetic().synthetic_problem(20, 6, seed=26)
    plan = solve(p, "heuristic", time_limit_s=5.0)
    note = next(n for n in plan.notes if "; search " in n)
    search_s = float(note.split("; search ")[1].split(" s")[0])
    bound_s = float(note.split("bound ")[-1].split(" s")[0])
    assert 0.0 < search_s and 0.0 < bound_s
    assert search_s + bound_s <= plan.solve_time_s * 1.01 + 1e-3


@pytest.mark.slow
def test_heuristic_200_ops_10_classes_is_fast_and_matches_the_milp_incumbent() -> None:
    """Issue 4's ≤ 1 s target (200 ops × 10 classes), with slack for 2 shared cores: the
    search takes < 2.5 s of CPU and finds the MILP's best-known plan (4.2425 USD/h)."""
    p = _synthetic().synthetic_problem(200, 10, seed=210)
    t0 = time.process_time()
    a = solve_heuristic(p, time_limit_s=7.0)
    cpu_s = time.process_time() - t0
    assert a is not None and p.evaluate(a).feasible
    assert p.evaluate(a).usd_per_hour == pytest.approx(4.242456812226358, rel=1e-6)
    assert cpu_s < 2.5


def test_lp_bound_without_transfers_is_a_weaker_valid_bound() -> None:
    p = _synthetic().synthetic_problem(20, 6, seed=26)
    full = lp_lower_bound(p, time_limit_s=10.0)
    no_xfer = lp_lower_bound(p, time_limit_s=10.0, transfers=False)
    assert p.lower_bound_usd_per_hour() - 1e-9 <= no_xfer <= full + 1e-9
    assert np.any(p.xfer_base_s > 0)  # the problem itself keeps its transfers
    # quick bounds of large graphs (edges × classes > 1500) drop the transfers; small keep them
    big = _synthetic().synthetic_problem(200, 10, seed=210)
    bound, how = lower_bound(big, quick=True)
    assert "without transfers" in how
    assert bound == pytest.approx(lp_lower_bound(big, transfers=False), rel=1e-6)
    assert "without transfers" not in lower_bound(p, quick=True)[1]
