"""Placement → placed tz MLIR: the pass that writes ``device`` and ``stage`` on every op.

Its text is the contract between placement and codegen: ``terrazzo plan -o placed.mlir``
writes it, a user may edit it, and ``terrazzo compile placed.mlir`` (through
``placement.plan_from_placed``) builds exactly the placement it states. The module's graph
``attrs`` name the model it came from (``model``: ``zoo:NAME`` or an absolute ``.onnx`` path,
``model_sha256``) and the plan's bounds (``sla_s``, ``rps``) so that compile can re-import the
model and check it is the same one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from terrazzo.ir import AttrValue, Graph, make_attrs
from terrazzo.placement.plan import Plan

# Graph attributes the placed IR carries besides the frontend's own (file, source, ...).
PLACED_ATTRS = (
    "model",
    "model_sha256",
    "solver",
    "sla_s",
    "sla_ttft_s",
    "sla_tbt_s",
    "rps",
    "latency_s",
    "usd_per_hour",
)


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a placed graph's model lives: ``zoo:NAME`` or an absolute ``.onnx`` path, and its sha256."""

    model: str
    sha256: str


def placed_graph(graph: Graph, plan: Plan, source: ModelSource | None = None) -> Graph:
    """``graph`` with every op's device class and (primary) stage index set from ``plan``.

    The graph's ``attrs`` gain the plan's summary (solver, SLA, rps, predicted latency and
    USD/h) and, when ``source`` is given, the model reference compile re-imports.
    """
    stage = plan.stage_of()
    g = graph.with_placement({o.name: (plan.assignment[o.name], stage[o.name]) for o in graph.ops})
    attrs: dict[str, AttrValue] = {k: v for k, v in graph.attrs if k not in PLACED_ATTRS}
    if source is not None:
        attrs["model"] = source.model
        attrs["model_sha256"] = source.sha256
    attrs["solver"] = plan.solver
    attrs["sla_s"] = float(plan.sla.latency_s)
    if plan.sla.ttft_s is not None:
        attrs["sla_ttft_s"] = float(plan.sla.ttft_s)
    if plan.sla.tbt_s is not None:
        attrs["sla_tbt_s"] = float(plan.sla.tbt_s)
    attrs["rps"] = float(plan.rps)
    attrs["latency_s"] = float(plan.latency_s)
    attrs["usd_per_hour"] = float(plan.usd_per_hour)
    return replace(g, attrs=make_attrs(attrs))


def plan_to_mlir(graph: Graph, plan: Plan, source: ModelSource | None = None) -> str:
    """tz MLIR of the placed graph (device and stage on every op, the plan in the graph attrs)."""
    from terrazzo.ir.dialect import print_graph

    return print_graph(placed_graph(graph, plan, source))
