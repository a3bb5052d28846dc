"""Build a placement ``Problem`` from an ``ir.Graph`` + fleet + cost model, or from a measured task graph.

Measured task graphs (YAML) give per-(task, device) latency and cost directly; device names
are free-form and the objective is the total cost of one request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from terrazzo.errors import CostModelError, PlacementError
from terrazzo.ir import Graph, Op, TensorType
from terrazzo.placement.fleet import SLA, Fleet
from terrazzo.placement.problem import Problem

if TYPE_CHECKING:
    from terrazzo.costmodel import Catalog, CostModel


def make_problem(
    tasks: Sequence[str],
    devices: Sequence[str],
    latency_s: Mapping[str, Mapping[str, float]],
    *,
    edges: Sequence[tuple[str, str]] = (),
    sla: SLA,
    rps: float = 1.0,
    target_utilisation: float = 0.8,
    cost_usd: Mapping[str, Mapping[str, float]] | None = None,
    usd_per_hour: Mapping[str, float] | None = None,
    count: Mapping[str, float] | None = None,
    device_mem_bytes: Mapping[str, float] | None = None,
    mem_bytes: Mapping[str, float] | None = None,
    edge_bytes: Mapping[tuple[str, str], float] | None = None,
    transfer_s: Mapping[tuple[str, str], float] | None = None,
    transfer_s_per_byte: Mapping[tuple[str, str], float] | None = None,
    transfer_usd: Mapping[tuple[str, str], float] | None = None,
    power_w: Mapping[str, float] | None = None,
    prefill: Sequence[str] = (),
    decode_steps: Mapping[str, int] | None = None,
    name: str = "problem",
) -> Problem:
    """A Problem from name-keyed tables (missing latency = cannot run; missing rest = 0/unlimited).

    Tasks are re-ordered topologically; a cycle raises PlacementError.
    """
    if rps <= 0 or not math.isfinite(rps):
        raise PlacementError(f"rps must be a positive number, got {rps}")
    if not 0 < target_utilisation <= 1:
        raise PlacementError(f"target utilisation must be in (0, 1], got {target_utilisation}")
    if not devices:
        raise PlacementError("no device classes to place on")
    g = nx.DiGraph()
    g.add_nodes_from(tasks)
    g.add_edges_from(edges)
    if len(g) != len(tasks):
        raise PlacementError(f"edges name unknown tasks: {sorted(set(g) - set(tasks))[:5]}")
    given = {t: i for i, t in enumerate(tasks)}
    try:
        order = list(nx.lexicographical_topological_sort(g, key=given.__getitem__))
    except nx.NetworkXUnfeasible:
        cyc = nx.find_cycle(g)
        raise PlacementError(f"task graph has a cycle: {' -> '.join(u for u, _ in cyc)}") from None
    pos = {t: i for i, t in enumerate(order)}
    dpos = {d: i for i, d in enumerate(devices)}
    n, nd = len(order), len(devices)
    lat = np.full((n, nd), np.inf)
    cost = np.zeros((n, nd))
    for t, row in latency_s.items():
        for d, v in row.items():
            lat[pos[t], dpos[d]] = float(v)
    for t, row in (cost_usd or {}).items():
        for d, v in row.items():
            cost[pos[t], dpos[d]] = float(v)
    e_arr = np.array([(pos[u], pos[v]) for u, v in g.edges], dtype=np.int64).reshape(-1, 2)
    eb = np.array([float((edge_bytes or {}).get((order[u], order[v]), 0.0)) for u, v in e_arr])

    def pair(m: Mapping[tuple[str, str], float] | None) -> np.ndarray:
        a = np.zeros((nd, nd))
        for (s, t), v in (m or {}).items():
            if s != t and s in dpos and t in dpos:
                a[dpos[s], dpos[t]] = float(v)
        return a

    def per_dev(m: Mapping[str, float] | None, default: float) -> np.ndarray:
        return np.array([float((m or {}).get(d, default)) for d in devices])

    pf = np.zeros(n, dtype=bool)
    for t in prefill:
        pf[pos[t]] = True
    ds = np.zeros(n, dtype=np.int64)
    for t, k in (decode_steps or {}).items():
        ds[pos[t]] = int(k)
    return Problem(
        tasks=tuple(order),
        devices=tuple(devices),
        latency_s=lat,
        cost_usd=cost,
        mem_bytes=np.array([float((mem_bytes or {}).get(t, 0.0)) for t in order]),
        edges=e_arr,
        edge_bytes=eb,
        xfer_base_s=pair(transfer_s),
        xfer_s_per_byte=pair(transfer_s_per_byte),
        xfer_usd=pair(transfer_usd),
        usd_per_hour=per_dev(usd_per_hour, 0.0),
        count=per_dev(count, math.inf),
        device_mem_bytes=per_dev(device_mem_bytes, math.inf),
        power_w=per_dev(power_w, 0.0),
        sla=sla,
        rps=rps,
        target_utilisation=target_utilisation,
        prefill=pf if pf.any() else None,
        decode_steps=ds if ds.any() else None,
        name=name,
    )


# -- measured task graphs ---------------------------------------------------------------------
class Measurement(BaseModel):
    """Measured latency and cost of one task on one device class."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    latency_ms: float = Field(description="Latency of the task on this device, ms.")
    cost_usd: float = Field(default=0.0, description="Cost of one execution, USD.")

    @field_validator("latency_ms", "cost_usd")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"must be a finite number >= 0, got {v}")
        return v


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    after: list[str] = Field(default_factory=list, description="Tasks that must finish first.")
    profile: dict[str, Measurement] = Field(description="Device class -> measurement.")

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: dict[str, Measurement]) -> dict[str, Measurement]:
        if not v:
            raise ValueError("profile is empty; measure the task on at least one device")
        return v


class TransferSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    src: str = Field(alias="from")
    dst: str = Field(alias="to")
    latency_ms: float = 0.0
    cost_usd: float = 0.0


class TaskGraph(BaseModel):
    """The measured task-graph file (see ``tests/data/tasks/issue_example.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tasks: list[TaskSpec]
    transfers: list[TransferSpec] = Field(default_factory=list)
    sla: dict[str, float] | None = None
    name: str = "tasks"

    @property
    def devices(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for t in self.tasks:
            for d in t.profile:
                seen.setdefault(d, None)
        return tuple(seen)

    def sla_from_file(self) -> SLA | None:
        if not self.sla:
            return None
        ms = {k: float(v) for k, v in self.sla.items()}
        unknown = set(ms) - {"latency_ms", "ttft_ms", "tbt_ms"}
        if unknown or "latency_ms" not in ms:
            raise PlacementError(
                f"task graph sla: expected {{latency_ms, ttft_ms?, tbt_ms?}}, found {sorted(ms)}"
            )
        return SLA(
            ms["latency_ms"] / 1e3,
            ms["ttft_ms"] / 1e3 if "ttft_ms" in ms else None,
            ms["tbt_ms"] / 1e3 if "tbt_ms" in ms else None,
        )


def is_task_graph_file(path: str | Path) -> bool:
    """True when ``path`` is a YAML file with a top-level ``tasks:`` list."""
    p = Path(path)
    if p.suffix.lower() not in (".yaml", ".yml") or not p.is_file():
        return False
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and "tasks" in data


def load_task_graph(path: str | Path) -> TaskGraph:
    """Parse and validate a measured task-graph YAML file.

    Raises:
        PlacementError: missing file, bad YAML, unknown fields, duplicate task names, unknown
            ``after`` references (the message names the offending values).
    """
    p = Path(path)
    if not p.is_file():
        raise PlacementError(f"task graph {str(p)!r} not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise PlacementError(f"task graph {str(p)!r} is not valid YAML: {e}") from None
    return parse_task_graph(data, where=str(p))


def parse_task_graph(data: Any, where: str = "task graph") -> TaskGraph:
    """Validate a task graph given as a mapping."""
    if isinstance(data, dict) and "name" not in data:
        data = {**data, "name": Path(where).stem}
    try:
        tg = TaskGraph.model_validate(data)
    except ValidationError as e:
        msgs = [
            f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
            for err in e.errors()
        ]
        raise PlacementError(f"{where}: invalid task graph: " + "; ".join(msgs)) from None
    names = [t.name for t in tg.tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PlacementError(f"{where}: duplicate task names: {', '.join(dup)}")
    unknown = sorted({a for t in tg.tasks for a in t.after if a not in names})
    if unknown:
        raise PlacementError(f"{where}: 'after' names unknown tasks: {', '.join(unknown)}")
    return tg


def problem_from_tasks(
    tg: TaskGraph,
    *,
    fleet: Fleet | None = None,
    sla: SLA | None = None,
    rps: float = 1.0,
    target_utilisation: float = 0.8,
) -> Problem:
    """A Problem whose objective is the measured cost of one request (times 3600·rps per hour).

    With a fleet, only its device classes are used and its counts apply.
    """
    sla = sla or tg.sla_from_file()
    if sla is None:
        raise PlacementError("no SLA: give --sla or an `sla: {latency_ms: ...}` section")
    devices = tg.devices
    count = None
    if fleet is not None:
        missing = [d for d in fleet.names if d not in devices]
        if missing:
            raise PlacementError(
                f"fleet device classes {missing} appear in no task profile; "
                f"profiled classes: {list(devices)}"
            )
        devices = fleet.names
        count = {d: fleet.count(d) for d in devices}
    lat = {
        t.name: {d: m.latency_ms / 1e3 for d, m in t.profile.items() if d in devices}
        for t in tg.tasks
    }
    cost = {t.name: {d: m.cost_usd for d, m in t.profile.items() if d in devices} for t in tg.tasks}
    return make_problem(
        [t.name for t in tg.tasks],
        devices,
        lat,
        edges=[(a, t.name) for t in tg.tasks for a in t.after],
        sla=sla,
        rps=rps,
        target_utilisation=target_utilisation,
        cost_usd=cost,
        count=count,
        transfer_s={(x.src, x.dst): x.latency_ms / 1e3 for x in tg.transfers},
        transfer_usd={(x.src, x.dst): x.cost_usd for x in tg.transfers},
        name=tg.name,
    )


def task_graph_to_ir(tg: TaskGraph) -> Graph:
    """An agent-level ``ir.Graph`` with one op per task (so plans print as tz MLIR)."""
    scalar = TensorType((), "float32")
    values: dict[str, TensorType] = {"request": scalar}
    after = {t.name: t.after for t in tg.tasks}
    g = nx.DiGraph()
    g.add_nodes_from(after)
    g.add_edges_from((a, t) for t, aa in after.items() for a in aa)
    given = {t.name: i for i, t in enumerate(tg.tasks)}
    ops = []
    for t in nx.lexicographical_topological_sort(g, key=given.__getitem__):
        values[t] = scalar
        ops.append(Op(t, "task", tuple(after[t]) or ("request",), (t,), op_class="other"))
    sinks = tuple(t for t in g if g.out_degree(t) == 0)
    return Graph(tg.name, tuple(ops), values, ("request",), sinks, level="agent")


# -- ir.Graph + fleet + cost model ------------------------------------------------------------
def problem_from_graph(
    graph: Graph,
    fleet: Fleet,
    sla: SLA,
    *,
    rps: float = 1.0,
    target_utilisation: float = 0.8,
    catalog: Catalog | None = None,
    cost_model: CostModel | None = None,
) -> Problem:
    """A Problem for a model or agent graph, costed by ``terrazzo.costmodel``.

    Latency per (op, class) from ``CostModel.op_latency_s``, memory from
    ``op_memory_bytes``, transfers fitted as base + bytes/bandwidth from
    ``transfer_latency_s``, prices from ``usd_per_hour`` under the fleet's pricing.
    LLM ops: ``llm_prefill`` ops bound TTFT; ``llm_decode`` ops bound TBT by latency /
    ``output_tokens`` (the cost model prices a decode op as that many steps).
    """
    from terrazzo import costmodel
    from terrazzo.costmodel.efficiency import (
        RUNTIME_HOP_CPU_S,
        RUNTIME_HOP_LATENCY_S,
        VCPU_USD_PER_HOUR,
    )

    if catalog is None:
        catalog = costmodel.load_catalog(fleet.profile or "datasheet")
    unknown = [d for d in fleet.names if d not in catalog]
    if unknown:
        raise CostModelError(
            f"unknown device classes {unknown} in the fleet; the catalog has: {', '.join(sorted(catalog))}"
        )
    cm = cost_model if cost_model is not None else costmodel.CostModel(catalog)
    specs = [catalog[d] for d in fleet.names]
    tco = fleet.pricing.to_tco_options()
    nodes = graph.ops
    per_dev = {d: cm.op_latencies_s(graph, s) for d, s in zip(fleet.names, specs, strict=True)}
    lat = {o.name: {d: float(per_dev[d][o.name]) for d in fleet.names} for o in nodes}
    measured_cost: dict[str, dict[str, float]] = {}
    if getattr(cm, "measured", None) is not None:
        for o in nodes:
            for d in fleet.names:
                c = cm.op_cost_usd(o, d)
                if c is not None:
                    measured_cost.setdefault(o.name, {})[d] = float(c)
    mem = {o.name: float(cm.op_memory_bytes(o)) for o in nodes}
    nxg = graph.to_networkx()
    edges = [(u, v) for u, v in nxg.edges]
    eb = {(u, v): float(nxg.edges[u, v]["bytes"]) for u, v in edges}
    probe = float(1 << 30)
    base: dict[tuple[str, str], float] = {}
    spb: dict[tuple[str, str], float] = {}
    # Every class change is a stage boundary, i.e. a runtime hop between stage workers: it
    # costs latency and host CPU time, so plans do not ping-pong op by op between classes.
    hop_usd: dict[tuple[str, str], float] = {}
    for a, sa in zip(fleet.names, specs, strict=True):
        for b, sb in zip(fleet.names, specs, strict=True):
            if a == b:
                continue
            # latency + bytes / bandwidth, read off at 1 byte and 1 GiB (a 0-byte transfer
            # costs nothing, so it would hide the link's fixed latency)
            t1 = float(cm.transfer_latency_s(1, sa, sb))
            tp = float(cm.transfer_latency_s(int(probe), sa, sb))
            spb[(a, b)] = max(0.0, (tp - t1) / (probe - 1))
            base[(a, b)] = max(0.0, t1 - spb[(a, b)]) + RUNTIME_HOP_LATENCY_S
            hop_usd[(a, b)] = RUNTIME_HOP_CPU_S * VCPU_USD_PER_HOUR / 3600.0
    decode: dict[str, int] = {}
    for o in nodes:
        if o.op_class == "llm_decode":
            tok = o.attr("output_tokens", o.attr("tokens", 1))
            decode[o.name] = int(tok) if isinstance(tok, int | float) and tok else 1
    return make_problem(
        [o.name for o in nodes],
        fleet.names,
        lat,
        edges=edges,
        sla=sla,
        rps=rps,
        target_utilisation=target_utilisation,
        cost_usd=measured_cost,
        usd_per_hour={
            d: float(costmodel.usd_per_hour(s, tco))
            for d, s in zip(fleet.names, specs, strict=True)
        },
        count={d: fleet.count(d) for d in fleet.names},
        device_mem_bytes={d: float(s.mem_bytes) for d, s in zip(fleet.names, specs, strict=True)},
        mem_bytes=mem,
        edge_bytes=eb,
        transfer_s=base,
        transfer_s_per_byte=spb,
        transfer_usd=hop_usd,
        power_w={d: float(s.tdp_w) for d, s in zip(fleet.names, specs, strict=True)},
        prefill=[o.name for o in nodes if o.op_class == "llm_prefill"],
        decode_steps=decode,
        name=graph.name,
    )
