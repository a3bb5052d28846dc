"""LLM-scale planner: a ≥ 1000-op Llama-70B graph, a certified gap, no ping-pong, clear errors."""

from __future__ import annotations

import itertools
import math

import pytest

from terrazzo.costmodel.catalog import load_catalog
from terrazzo.costmodel.llm import LLMConfig, get_preset
from terrazzo.errors import PlacementError
from terrazzo.placement import (
    LLMPlannerOptions,
    LLMTraffic,
    build_llm_graphs,
    llm_fleet_default,
    llm_scale,
    plan_llm,
    plan_llm_melange,
    plan_llm_single_class,
)

TRAFFIC = LLMTraffic(rps=200, isl=1024, osl=256, ttft_s=2.0, tbt_s=0.05)


@pytest.fixture(scope="module")
def graphs():
    return build_llm_graphs(get_preset("llama3-70b"), TRAFFIC.isl, TRAFFIC.osl)


@pytest.fixture(scope="module")
def plans(graphs):
    fleet = llm_fleet_default()
    return (
        plan_llm(graphs, TRAFFIC, fleet),
        plan_llm_single_class(graphs, TRAFFIC, fleet),
        plan_llm_melange(graphs, TRAFFIC, fleet),
    )


def test_graph_is_operator_level_and_large(graphs) -> None:
    assert len(graphs.prefill.ops) >= 1000 and len(graphs.decode.ops) >= 1000
    kinds = {o.kind for o in graphs.decode.ops}
    assert {"rms_norm", "matmul", "attention", "silu_mul", "add", "take"} <= kinds
    # the ops carry the whole model: weights sum to the preset's parameter bytes
    cfg = graphs.cfg
    assert sum(o.param_bytes for o in graphs.decode.ops) == pytest.approx(cfg.weight_bytes(), 1e-6)


def test_fleet_has_eight_classes_with_cpus() -> None:
    cat = load_catalog()
    fleet = [cat[d] for d in llm_fleet_default()]
    assert len(fleet) >= 8 and any(d.kind == "cpu" for d in fleet)


def test_gap_is_certified_and_within_one_percent(plans) -> None:
    plan, single, melange = plans
    assert plan.lower_bound_usd_per_hour <= plan.usd_per_hour
    assert plan.gap == pytest.approx(
        (plan.usd_per_hour - plan.lower_bound_usd_per_hour) / plan.usd_per_hour
    )
    assert plan.gap <= 0.01
    # the planner's space holds both whole-model baselines' P::D plans: never worse
    assert plan.usd_per_hour <= single.usd_per_hour + 1e-9
    assert plan.lower_bound_usd_per_hour <= single.usd_per_hour
    assert plan.ttft_s <= TRAFFIC.ttft_s and plan.tbt_s <= TRAFFIC.tbt_s
    assert melange.usd_per_hour > 0 and melange.mix


def test_time_budget_returns_a_certified_bound(graphs, plans) -> None:
    """A tiny budget may loosen the gap, but what it reports is still a valid bound."""
    full = plans[0]
    quick = plan_llm(graphs, TRAFFIC, llm_fleet_default(), LLMPlannerOptions(time_budget_s=0.05))
    assert quick.lower_bound_usd_per_hour <= full.usd_per_hour + 1e-9
    assert full.lower_bound_usd_per_hour <= quick.usd_per_hour + 1e-9
    assert quick.gap == pytest.approx(
        (quick.usd_per_hour - quick.lower_bound_usd_per_hour) / quick.usd_per_hour
    )


def test_no_ping_pong(graphs, plans) -> None:
    plan = plans[0]
    min_layers = LLMPlannerOptions().min_layers_per_stage
    for phase in ("prefill", "decode"):
        st = plan.phase_stages(phase)
        assert st[0].first_layer == 0 and st[-1].end_layer == graphs.cfg.layers
        assert all(a.end_layer == b.first_layer for a, b in itertools.pairwise(st))
        assert all(s.layers >= min_layers for s in st)
        for a, b, c in zip(st, st[1:], st[2:], strict=False):
            assert not (a.device == c.device != b.device and b.layers < min_layers)
    # the op → device map follows the stages: device changes at most (stages − 1) times
    assign = plan.assignment(graphs.decode)
    seq = [assign[o.name] for o in graphs.decode.ops]
    changes = sum(x != y for x, y in itertools.pairwise(seq))
    assert changes <= len(plan.phase_stages("decode")) - 1


def test_infeasible_sla_is_one_clear_line(graphs) -> None:
    tight = LLMTraffic(rps=10, isl=1024, osl=256, ttft_s=2.0, tbt_s=1e-4)
    with pytest.raises(PlacementError) as e:
        plan_llm(graphs, tight, llm_fleet_default())
    msg = str(e.value)
    assert "\n" not in msg and "TBT 0.1 ms" in msg and "no decode plan" in msg


def test_bound_against_brute_force() -> None:
    """On a tiny model, every chain is enumerated: bound ≤ true optimum ≤ planner's cost."""
    cfg = LLMConfig.llama("tiny", 6, 2048, 16, 8, 5632, 32000)
    g = build_llm_graphs(cfg, 256, 64)
    tr = LLMTraffic(rps=40, isl=256, osl=64, ttft_s=0.2, tbt_s=0.004)
    cat = load_catalog()
    fleet = [cat[d] for d in ("cpu", "l4", "a10g")]
    opt = LLMPlannerOptions(
        min_layers_per_stage=2, stage_penalty_usd_per_hour=0.0, time_budget_s=30.0, gap_target=1e-6
    )
    plan = plan_llm(g, tr, fleet, opt)
    # brute force over the decode phase: chains with parts ≥ 2, any option, any batch
    L, rate = cfg.layers, tr.decode_tokens_per_s
    kv_seq = cfg.kv_bytes_per_token() / L * (g.isl + g.osl)
    parts = [p for n in (1, 2, 3) for p in itertools.product(range(2, L + 1), repeat=n)
             if sum(p) == L]  # fmt: skip
    best = math.inf
    for b in llm_scale.DECODE_BATCHES:
        o = llm_scale._options(g, "decode", b, fleet, prune=False)
        pairs = llm_scale._hop_pairs(o, fleet, b * cfg.d_model * 2)
        for p in parts:
            for ch in itertools.product(range(len(o.dev)), repeat=len(p)):
                starts = [sum(p[:k]) for k in range(len(p))]
                ts = [p[k] * o.layer_s[c] + (starts[k] == 0) * o.embed_s[c]
                      + (starts[k] + p[k] == L) * o.head_s[c] for k, c in enumerate(ch)]  # fmt: skip
                tau = sum(ts) + sum(pairs[x, y] for x, y in itertools.pairwise(ch))
                if tau > tr.tbt_s:
                    continue
                ok, cost = True, 0.0
                for k, c in enumerate(ch):
                    w = p[k] * o.w_layer + (starts[k] == 0) * o.w_embed
                    w += (starts[k] + p[k] == L) * o.w_head
                    if w + b * tau / ts[k] * kv_seq * p[k] > o.mem_bytes[c]:
                        ok = False
                        break
                    cost += (
                        math.ceil(rate * ts[k] / (b * tr.utilisation) - 1e-9) * o.usd_per_hour[c]
                    )
                if ok:
                    best = min(best, cost)
    decode_cost = sum(s.usd_per_hour for s in plan.phase_stages("decode"))
    prefill_cost = plan.usd_per_hour - decode_cost
    assert math.isfinite(best)
    assert plan.lower_bound_usd_per_hour - prefill_cost <= best + 1e-6
    assert decode_cost >= best - 1e-6
