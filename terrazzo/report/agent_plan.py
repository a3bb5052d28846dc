"""Agent placement: an agent graph's tasks priced per device class (LLM phases from the cost model) → a placement Problem.

``llm.call`` becomes prefill and decode tasks; the KV cache rides on the edge between them and
is priced on the link joining their device classes. Prefill finish bounds TTFT, decode's
per-token time bounds TBT, the critical path bounds the end-to-end SLA. Tools, retrieval,
memory and inputs run on CPU classes only. Loop bodies count ``loop_expected_iterations`` times.
"""

from __future__ import annotations

import math
from typing import Any

from terrazzo.costmodel import CostModel, link_between, load_catalog, usd_per_hour
from terrazzo.errors import PlacementError
from terrazzo.frontend.agent import decompose, llm_arch_of
from terrazzo.frontend.kinds import find_kind, register_hooks
from terrazzo.ir import Graph
from terrazzo.report import phases

_MEMORY_OP_S = 1e-4  # a key-value lookup in process memory


def agent_problem(
    graph: Graph,
    fleet: Any,
    sla: Any,
    rps: float = 1.0,
    *,
    catalog: Any = None,
    target_utilisation: float = 0.8,
) -> Any:
    """Build a ``terrazzo.placement.Problem`` for an agent-level graph.

    Args:
        graph: agent graph from ``load_agent`` (``llm.call`` not yet decomposed, or decomposed).
        fleet: ``terrazzo.placement.Fleet``.
        sla: ``terrazzo.placement.SLA`` (``ttft_s``/``tbt_s`` apply to the LLM phases).
        rps: requests per second.
        catalog: device catalog (default: the fleet's profile or ``datasheet``).
        target_utilisation: busy fraction devices are sized for.

    Returns:
        The Problem; solve it with ``terrazzo.placement.solve``.
    """
    from terrazzo.placement import make_problem

    catalog = catalog or load_catalog(fleet.profile or "datasheet")
    tco = fleet.pricing.to_tco_options()
    names = list(fleet.names)
    specs = {d: catalog[d] for d in names}
    g = graph if dict(graph.attrs).get("decomposed") else decompose(graph, models=False)
    cm = CostModel(catalog)
    price = {d: usd_per_hour(specs[d], tco) for d in names}
    lat: dict[str, dict[str, float]] = {}
    cost: dict[str, dict[str, float]] = {}
    prefill: list[str] = []
    steps: dict[str, int] = {}
    kv_edges: dict[tuple[str, str], float] = {}
    renamed: dict[str, str] = {}  # kv_remote value → the prefill that produced it
    producers = g.producers()
    for op in g.ops:
        if op.op_class == "kv_transfer":  # rides on the edge between its phases
            renamed[op.outputs[0]] = producers[op.inputs[0]]
            continue
        reps = float(op.attr("loop_expected_iterations", 1.0) or 1.0)  # type: ignore[arg-type]
        # inside a branch arm: expected cost over the arms' probabilities (agent_flow)
        reps *= float(op.attr("gate_probability", 1.0) or 1.0)  # type: ignore[arg-type]
        row: dict[str, float] = {}
        extra: dict[str, float] = {}
        for d, spec in specs.items():
            t, tp = _task_latency_s(op, spec, cm)
            if math.isfinite(t):
                row[d] = t * reps
                if tp > 1:  # the other tp-1 devices of the instance are billed as direct cost
                    extra[d] = (tp - 1) * t * reps * price[d] / 3600.0
        if not row:
            raise PlacementError(
                f"agent task {op.name!r} ({op.kind}) fits no device class of the fleet {names}"
            )
        lat[op.name], cost[op.name] = row, extra
        if op.op_class == "llm_prefill":
            prefill.append(op.name)
        if op.op_class == "llm_decode":
            steps[op.name] = max(1, round(int(op.attr("output_tokens")) * reps))  # type: ignore[arg-type]
    edges: list[tuple[str, str]] = []
    for op in g.ops:
        if op.op_class == "kv_transfer":
            continue
        for v in op.inputs:
            src = renamed.get(v) or producers.get(v)
            if src is None:
                continue
            edges.append((src, op.name))
            if v in renamed:
                kv_edges[(src, op.name)] = float(g.values[v].nbytes)
    xs, xb = {}, {}
    for a in names:
        for b in names:
            if a != b:
                link = link_between(specs[a], specs[b])
                xs[(a, b)], xb[(a, b)] = link.latency_s, 1.0 / link.bw_bytes_per_s
    return make_problem(
        [o.name for o in g.ops if o.op_class != "kv_transfer"], names, lat, edges=edges, sla=sla, rps=rps,
        target_utilisation=target_utilisation, cost_usd=cost, usd_per_hour=price,
        count={d: fleet.count(d) for d in names}, edge_bytes=kv_edges, transfer_s=xs, transfer_s_per_byte=xb,
        power_w={d: specs[d].tdp_w for d in names}, prefill=prefill, decode_steps=steps, name=graph.name,
    )  # fmt: skip


def _task_latency_s(op: Any, spec: Any, cm: Any) -> tuple[float, int]:
    """(latency of one execution on one instance, TP degree); inf where the task cannot run."""
    kind = find_kind(op.kind)  # None for the operators of a decomposed model node
    if kind is not None and kind.cpu_only and spec.kind != "cpu":
        return math.inf, 1
    if kind is not None and kind.cost is not None:
        return kind.cost(op, spec, cm)
    return cm.op_latency_s(op, spec), 1


def _input_cost(op: Any, spec: Any, cm: Any) -> tuple[float, int]:
    return 0.0, 1


def _memory_cost(op: Any, spec: Any, cm: Any) -> tuple[float, int]:
    return _MEMORY_OP_S, 1


def _tool_cost(op: Any, spec: Any, cm: Any) -> tuple[float, int]:
    return float(op.attr("latency_s", 0.0)), 1


def _llm_cost(op: Any, spec: Any, cm: Any) -> tuple[float, int]:
    """An LLM phase (``llm.prefill`` / ``llm.decode``) from the phase model, with the TP it needs."""
    arch = llm_arch_of(op)
    cfg = phases.llm_config(arch, str(op.attr("preset", "custom")))
    prec = str(op.attr("dtype"))
    prec = prec if prec in ("fp16", "bf16", "fp8", "fp32") else "fp16"
    isl, osl = int(op.attr("input_tokens")), int(op.attr("output_tokens"))  # type: ignore[arg-type]
    dev = phases.phase_device(spec)
    tp = 1
    while tp <= spec.chassis_size and phases.max_batch(cfg, dev, isl + osl, tp, prec) < 1:
        tp *= 2
    if tp > spec.chassis_size:
        return math.inf, 1
    if op.op_class == "llm_prefill":
        return phases.prefill_latency_s(cfg, dev, isl, 1, tp, prec), tp
    return osl * phases.decode_step_latency_s(cfg, dev, isl + osl // 2, 1, tp, prec), tp


# Cost hooks of the built-in kinds (retrieval and model nodes: the cost model's roofline).
def _map_cost(op: Any, spec: Any, cm: Any) -> tuple[float, int]:
    """A map's calls run ``max_parallel`` at a time: ceil(items / parallel) rounds of one call."""
    items = float(op.attr("expected_items", 1.0))  # type: ignore[arg-type]
    rounds = math.ceil(items / max(1, int(op.attr("max_parallel", 1))))  # type: ignore[call-overload]
    return float(op.attr("latency_s", 0.0)) * rounds, 1  # type: ignore[arg-type]


register_hooks("branch", cost=_input_cost)
register_hooks("join", cost=_input_cost)
register_hooks("map", cost=_map_cost)
register_hooks("http", cost=_tool_cost)
register_hooks("mcp", cost=_tool_cost)
register_hooks("input", cost=_input_cost)
register_hooks("memory.load", cost=_memory_cost)
register_hooks("memory.store", cost=_memory_cost)
register_hooks("tool", cost=_tool_cost)
register_hooks("llm", cost=_llm_cost)


def plan_agent(
    graph: Graph, fleet: Any, sla: Any, rps: float = 1.0, solver: str = "milp", **kw: Any
) -> Any:
    """Place an agent graph: ``agent_problem`` then ``terrazzo.placement.solve``."""
    from terrazzo.placement import solve

    return solve(agent_problem(graph, fleet, sla, rps, **kw), solver)
