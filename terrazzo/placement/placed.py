"""Placed tz MLIR → Plan: the reverse of ``placement.mlir``, which codegen's stages come from.

``terrazzo compile placed.mlir`` reads the text with the IR's parser and verifier, checks it
against the model it names and the fleet, and turns the ``device``/``stage`` attributes into
the Plan that split and build follow. The cut is the text's: a stage is the ops that share a
``stage`` number *and* a ``device`` (so an op whose ``device`` alone was edited gets a stage
of its own), renumbered in a topological order of the stage graph. Every refusal is one
``VerifyError`` line naming an op.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np

from terrazzo.errors import VerifyError
from terrazzo.ir import Graph
from terrazzo.placement.fleet import SLA, Fleet
from terrazzo.placement.mlir import ModelSource
from terrazzo.placement.plan import Plan, build_plan

if TYPE_CHECKING:
    from terrazzo.costmodel import Catalog

PLACED_SOLVER = "placed-ir"


def read_placed(text: str) -> Graph:
    """Parse and verify placed tz MLIR; every op must carry a ``device`` and a ``stage``.

    Raises:
        VerifyError: the text is not valid tz MLIR, or an op has no placement.
    """
    from terrazzo.ir.dialect import parse_graph

    g = parse_graph(text)
    if g.level != "model":
        raise VerifyError(
            f"placed IR of {g.name!r} is a {g.level} graph; compile reads model graphs"
        )
    for o in g.ops:
        if o.device is None or o.stage is None:
            raise VerifyError(
                f"op {o.name!r} has no device and stage; placed IR needs both on every op"
            )
        if o.stage < 0:
            raise VerifyError(f"op {o.name!r}: stage {o.stage} is negative")
    return g


def placed_source(placed: Graph) -> ModelSource:
    """The model a placed graph names (graph attributes ``model`` and ``model_sha256``)."""
    attrs = dict(placed.attrs)
    model, sha = attrs.get("model"), attrs.get("model_sha256")
    if not isinstance(model, str) or not model:
        raise VerifyError(
            f"placed IR of {placed.name!r} names no model (graph attribute 'model'); "
            "write it with `terrazzo plan MODEL --fleet F --sla S -o placed.mlir`"
        )
    return ModelSource(model, sha if isinstance(sha, str) else "")


def placed_sla(placed: Graph) -> SLA | None:
    """The SLA the placed IR was planned under (graph attributes ``sla_s``…), if recorded."""
    attrs = dict(placed.attrs)
    lat = attrs.get("sla_s")
    if not isinstance(lat, int | float) or isinstance(lat, bool):
        return None

    def opt(key: str) -> float | None:
        v = attrs.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    return SLA(float(lat), opt("sla_ttft_s"), opt("sla_tbt_s"))


def placed_rps(placed: Graph) -> float | None:
    """The request rate the placed IR was planned for (graph attribute ``rps``), if recorded."""
    v = dict(placed.attrs).get("rps")
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and v > 0 else None


def check_placed(placed: Graph, model: Graph, fleet: Fleet) -> dict[str, int]:
    """Check a placed graph against its model and fleet; return op → stage index.

    Stage indices are the text's (``stage``, ``device``) groups renumbered in a topological
    order of the stage graph (ties by the text's stage number, then first op).

    Raises:
        VerifyError: one line naming the op — not an op of the model, an op of the model the
            text lacks, a kind that differs, a device class the fleet does not have, or a
            stage graph with a cycle.
    """
    model_ops = {o.name: o for o in model.ops}
    for o in placed.ops:
        m = model_ops.get(o.name)
        if m is None:
            raise VerifyError(
                f"op {o.name!r} in the placed IR is not an op of model {model.name!r}"
            )
        if m.kind != o.kind:
            raise VerifyError(
                f"op {o.name!r} is a {o.kind} in the placed IR but a {m.kind} in model {model.name!r}"
            )
    have = {o.name for o in placed.ops}
    for o in model.ops:
        if o.name not in have:
            raise VerifyError(
                f"op {o.name!r} of model {model.name!r} is missing from the placed IR"
            )
    for o in placed.ops:
        if o.device not in fleet.names:
            raise VerifyError(
                f"op {o.name!r}: device {o.device!r} is not a device class of the fleet "
                f"({', '.join(fleet.names)})"
            )
    group = {o.name: (int(o.stage or 0), str(o.device)) for o in placed.ops}
    first: dict[tuple[int, str], int] = {}
    for i, o in enumerate(model.ops):
        first.setdefault(group[o.name], i)
    sg = nx.DiGraph()
    sg.add_nodes_from(first)
    for u, v in model.to_networkx().edges:
        if group[u] != group[v]:
            sg.add_edge(group[u], group[v])
    if not nx.is_directed_acyclic_graph(sg):
        cycle = [e[0] for e in nx.find_cycle(sg)]
        members = {g: [o.name for o in model.ops if group[o.name] == g] for g in cycle}
        blame = min(cycle, key=lambda g: (len(members[g]), first[g]))
        path = " → ".join(f"stage {s} on {d}" for s, d in [*cycle, cycle[0]])
        raise VerifyError(
            f"op {members[blame][0]!r}: the stage graph is cyclic ({path}); number the stages "
            "so that each feeds only later ones, or move its neighbours with it"
        )
    order = list(nx.lexicographical_topological_sort(sg, key=lambda g: (g[0], first[g])))
    index = {g: k for k, g in enumerate(order)}
    return {name: index[g] for name, g in group.items()}


def plan_from_placed(
    placed: Graph,
    model: Graph,
    fleet: Fleet,
    sla: SLA,
    rps: float = 1.0,
    *,
    catalog: Catalog | None = None,
    target_utilisation: float = 0.8,
) -> Plan:
    """The Plan a placed graph states: its devices, its cut, costed by the cost model.

    Args:
        placed: the placed graph (``read_placed``).
        model: the model graph it was planned from, re-imported (``placed_source``).
        fleet: the fleet whose device classes the ``device`` attributes name.
        sla: the SLA to report against (a placement that misses it is built, with a note).
        rps: the traffic target replicas and costs are computed for.
        catalog: the cost-model catalog (default: the fleet's profile).
        target_utilisation: as for ``placement.plan``.

    Raises:
        VerifyError: see ``check_placed``.
    """
    from terrazzo.placement.api import to_problem

    stage_of = check_placed(placed, model, fleet)
    problem = to_problem(
        model, fleet, sla, rps, target_utilisation=target_utilisation, catalog=catalog
    )
    device_of = {o.name: str(o.device) for o in placed.ops}
    assign = np.array([problem.devices.index(device_of[t]) for t in problem.tasks])
    stages = np.array([stage_of[t] for t in problem.tasks])
    plan = build_plan(problem, assign, PLACED_SOLVER, 0.0, stage_index=stages)
    notes = ["placement read from the placed IR (not optimised)"]
    if plan.latency_s > sla.latency_s:
        notes.append(
            f"predicted latency {plan.latency_s * 1e3:.4g} ms exceeds the SLA "
            f"{sla.latency_s * 1e3:.4g} ms; built as placed"
        )
    return replace(plan, notes=tuple(notes))
