"""Agent placement: LLM phases on possibly different classes (P::D), KV on the link, tools on CPUs, TTFT/TBT bounds."""

from __future__ import annotations

import math

import pytest

from terrazzo.errors import PlacementError
from terrazzo.frontend.agent import AgentBuilder
from terrazzo.placement import SLA, Fleet
from terrazzo.report.agent_plan import agent_problem, plan_agent


def _agent():  # type: ignore[no-untyped-def]
    b = AgentBuilder("qa")
    q = b.input("query")
    a = b.llm(
        "answer", [q], preset="llama3-8b", max_new_tokens=512, input_tokens=4096, output_tokens=512
    )
    s = b.tool("search", [a], "numpy:ravel", latency_s=0.1)
    r = b.retrieve("docs", [s], {"rows": 1000, "dim": 64}, top_k=4)
    b.output("reply", r)
    b.loop("research", start=a, end=r, max_iterations=3, expected_iterations=1.5)
    return b.build()


FLEET = Fleet.from_dict(
    {
        "devices": {"cpu": {}, "a100-80g": {}, "h100": {}},
        "pricing": {"mode": "capex"},
        "profile": "datasheet",
    }
)


def test_problem_shapes_and_kv_edge() -> None:
    p = agent_problem(_agent(), FLEET, SLA(30.0, ttft_s=0.5, tbt_s=0.03))
    assert p.tasks == ("query", "answer.prefill", "answer.decode", "search", "docs")
    cpu = p.devices.index("cpu")
    # Tools and retrieval run on CPUs only.
    assert all(math.isinf(x) for i, x in enumerate(p.latency_s[3]) if i != cpu)
    # The KV cache (4096 tokens, FP16) rides on the prefill→decode edge.
    e = [tuple(x) for x in p.edges.tolist()].index((1, 2))
    assert p.edge_bytes[e] == 2 * 32 * 8 * 128 * 2 * 4096
    # The loop body counts 1.5 times: the tool's 100 ms becomes 150 ms.
    assert p.latency_s[3, cpu] == pytest.approx(0.15)
    assert p.decode_steps is not None and p.decode_steps[2] == 768


def test_plan_meets_ttft_and_tbt() -> None:
    sla = SLA(30.0, ttft_s=0.5, tbt_s=0.03)
    pl = plan_agent(_agent(), FLEET, sla)
    a = pl.assignment
    assert a["search"] == "cpu" and a["docs"] == "cpu"
    assert a["answer.prefill"] != "cpu" and a["answer.decode"] != "cpu"
    assert pl.ttft_s is not None and pl.ttft_s <= 0.5
    assert pl.latency_s <= 30.0


def test_infeasible_tbt_names_the_bound() -> None:
    with pytest.raises(PlacementError):
        plan_agent(_agent(), FLEET, SLA(30.0, ttft_s=0.5, tbt_s=0.0001))
