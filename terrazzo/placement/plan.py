"""The output of placement: op → device class, contiguous stages, replicas, transfers and costs.

Codegen cuts the model into the plan's stages; the runtime starts ``replicas`` workers per
stage; the report reads the costs. ``plan_to_mlir`` prints the placed graph as tz MLIR.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import networkx as nx
import numpy as np

from terrazzo.errors import VerifyError
from terrazzo.placement.fleet import SLA
from terrazzo.placement.problem import LATENCY_RTOL, Problem


@dataclass(frozen=True, slots=True)
class Stage:
    """A maximal connected group of ops on one device class; ``ops`` in topological order.

    ``latency_s`` is the stage's busy time per request (sum of its ops' latencies).
    ``traffic_share`` < 1 only for whole-model replica mixes (Mélange): the same ops appear
    in several stages on different classes, each serving that share of the requests.
    """

    index: int
    device: str
    ops: tuple[str, ...]
    replicas: int
    latency_s: float
    usd_per_hour: float
    traffic_share: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "device": self.device,
            "ops": list(self.ops),
            "replicas": self.replicas,
            "latency_s": self.latency_s,
            "usd_per_hour": self.usd_per_hour,
            "traffic_share": self.traffic_share,
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Stage:
        return Stage(
            int(d["index"]),
            str(d["device"]),
            tuple(d["ops"]),
            int(d["replicas"]),
            float(d["latency_s"]),
            float(d["usd_per_hour"]),
            float(d.get("traffic_share", 1.0)),
        )


@dataclass(frozen=True, slots=True)
class Transfer:
    """A value crossing from one stage (device class) to another."""

    src_op: str
    dst_op: str
    src_stage: int
    dst_stage: int
    src_device: str
    dst_device: str
    nbytes: int
    latency_s: float
    usd: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "src_op": self.src_op,
            "dst_op": self.dst_op,
            "src_stage": self.src_stage,
            "dst_stage": self.dst_stage,
            "src_device": self.src_device,
            "dst_device": self.dst_device,
            "nbytes": self.nbytes,
            "latency_s": self.latency_s,
            "usd": self.usd,
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Transfer:
        return Transfer(
            d["src_op"], d["dst_op"], int(d["src_stage"]), int(d["dst_stage"]), d["src_device"],
            d["dst_device"], int(d["nbytes"]), float(d["latency_s"]), float(d.get("usd", 0.0)),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Plan:
    """A placement with its predicted latency, throughput and cost.

    ``gap`` is a proven bound on the relative distance to the optimum of the same Problem
    (0.0 = optimal; for heuristics and baselines it is measured against a simple lower
    bound, so it is loose). ``devices`` is the number of devices of each class the fleet
    needs at ``rps``.
    """

    solver: str
    gap: float
    assignment: Mapping[str, str]
    stages: tuple[Stage, ...]
    transfers: tuple[Transfer, ...]
    latency_s: float
    throughput_rps: float
    usd_per_hour: float
    usd_per_request: float
    energy_j_per_request: float
    sla: SLA
    rps: float
    devices: Mapping[str, int] = field(default_factory=dict)
    critical_path: tuple[str, ...] = ()
    ttft_s: float | None = None
    solve_time_s: float = 0.0
    target_utilisation: float = 0.8
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for n in ("assignment", "devices"):
            v = getattr(self, n)
            if not isinstance(v, MappingProxyType):
                object.__setattr__(self, n, MappingProxyType(dict(v)))

    @property
    def usd_per_million_requests(self) -> float:
        return self.usd_per_request * 1e6

    def stage_of(self) -> dict[str, int]:
        """op → index of its (primary) stage."""
        out: dict[str, int] = {}
        for s in sorted(self.stages, key=lambda s: -s.traffic_share):
            for o in s.ops:
                out.setdefault(o, s.index)
        return out

    def verify(self) -> Plan:
        """Check the plan's invariants; return self or raise VerifyError."""
        where = f"plan ({self.solver})"
        idx = [s.index for s in self.stages]
        if idx != list(range(len(self.stages))):
            raise VerifyError(
                f"{where}: stage indices must be 0..{len(self.stages) - 1}, found {idx}"
            )
        share: dict[str, float] = {}
        for s in self.stages:
            if s.replicas < 1:
                raise VerifyError(f"{where}: stage {s.index} has {s.replicas} replicas")
            for o in s.ops:
                if o not in self.assignment:
                    raise VerifyError(f"{where}: stage {s.index} holds unknown op {o!r}")
                if s.traffic_share == 1.0 and self.assignment[o] != s.device:
                    raise VerifyError(
                        f"{where}: op {o!r} assigned to {self.assignment[o]} but sits in stage "
                        f"{s.index} on {s.device}"
                    )
                share[o] = share.get(o, 0.0) + s.traffic_share
        bad = [o for o in self.assignment if abs(share.get(o, 0.0) - 1.0) > 1e-6]
        if bad:
            raise VerifyError(
                f"{where}: ops not covered exactly once by stages: {', '.join(bad[:5])}"
            )
        for t in self.transfers:
            if t.src_stage >= t.dst_stage:
                raise VerifyError(
                    f"{where}: transfer {t.src_op}->{t.dst_op} goes from stage {t.src_stage} to "
                    f"{t.dst_stage}; stage indices must follow the stage DAG's topological order"
                )
        if self.latency_s > self.sla.latency_s * (1 + LATENCY_RTOL):
            raise VerifyError(
                f"{where}: latency {self.latency_s * 1e3:.4g} ms exceeds the SLA "
                f"{self.sla.latency_s * 1e3:.4g} ms"
            )
        if self.rps > 0 and self.usd_per_hour > 0:
            expect = self.usd_per_hour / (3600.0 * self.rps)
            if not math.isclose(expect, self.usd_per_request, rel_tol=1e-6):
                raise VerifyError(f"{where}: usd_per_request {self.usd_per_request} != {expect}")
        if not 0.0 <= self.gap or math.isnan(self.gap):
            raise VerifyError(f"{where}: gap must be >= 0, found {self.gap}")
        return self

    # -- serialisation -----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "solver": self.solver,
            "gap": self.gap,
            "placement": dict(self.assignment),
            "latency_ms": self.latency_s * 1e3,
            "ttft_ms": None if self.ttft_s is None else self.ttft_s * 1e3,
            "cost_usd": self.usd_per_request,
            "usd_per_hour": self.usd_per_hour,
            "usd_per_million_requests": self.usd_per_million_requests,
            "throughput_rps": self.throughput_rps if math.isfinite(self.throughput_rps) else None,
            "energy_j_per_request": self.energy_j_per_request,
            "rps": self.rps,
            "target_utilisation": self.target_utilisation,
            "sla": self.sla.to_json(),
            "devices": dict(self.devices),
            "stages": [s.to_json() for s in self.stages],
            "transfers": [t.to_json() for t in self.transfers],
            "critical_path": list(self.critical_path),
            "solve_time_s": self.solve_time_s,
            "notes": list(self.notes),
        }

    def to_json_str(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    @staticmethod
    def from_json(d: Mapping[str, Any] | str) -> Plan:
        if isinstance(d, str):
            d = json.loads(d)
        assert isinstance(d, Mapping)
        tp = d.get("throughput_rps")
        return Plan(
            solver=d["solver"],
            gap=float(d["gap"]),
            assignment=dict(d["placement"]),
            stages=tuple(Stage.from_json(s) for s in d["stages"]),
            transfers=tuple(Transfer.from_json(t) for t in d["transfers"]),
            latency_s=float(d["latency_ms"]) / 1e3,
            throughput_rps=math.inf if tp is None else float(tp),
            usd_per_hour=float(d["usd_per_hour"]),
            usd_per_request=float(d["cost_usd"]),
            energy_j_per_request=float(d["energy_j_per_request"]),
            sla=SLA.from_json(d["sla"]),
            rps=float(d["rps"]),
            devices={k: int(v) for k, v in d.get("devices", {}).items()},
            critical_path=tuple(d.get("critical_path", ())),
            ttft_s=None if d.get("ttft_ms") is None else float(d["ttft_ms"]) / 1e3,
            solve_time_s=float(d.get("solve_time_s", 0.0)),
            target_utilisation=float(d.get("target_utilisation", 0.8)),
            notes=tuple(d.get("notes", ())),
        )


def compute_stages(problem: Problem, assign: np.ndarray) -> np.ndarray:
    """Stage index of every task: contiguous groups on one class, stage DAG acyclic.

    A task's level counts the device changes on the worst path from a source to it. Ops of
    one class and one level that are joined by same-class edges form a stage; every edge
    between different stages strictly increases the level, so the stage DAG is acyclic (a
    stage that would otherwise re-enter itself through another class is split).
    """
    n = problem.n
    level = np.zeros(n, dtype=np.int64)
    st = problem.structure()
    for v in range(n):
        for e in st["preds"][v]:
            u = int(problem.edges[e, 0])
            level[v] = max(level[v], level[u] + int(assign[u] != assign[v]))
    # A task without inputs (a constant reshape of a bias, a weight transform) can run as late
    # as its consumers allow: at level 0 it would form a one-op stage of its own (a CNN's bias
    # reshapes on the class that runs the second half made 17 one-op stages and t4→t4 hops).
    for u in range(n - 1, -1, -1):
        if len(st["preds"][u]) or not len(st["succs"][u]):
            continue
        late = min(
            int(level[int(problem.edges[e, 1])])
            - int(assign[u] != assign[int(problem.edges[e, 1])])
            for e in st["succs"][u]
        )
        level[u] = max(level[u], late)
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for u, v in problem.edges.tolist():
        if assign[u] == assign[v] and level[u] == level[v]:
            ru, rv = find(u), find(v)
            if ru != rv:
                parent[max(ru, rv)] = min(ru, rv)
    roots = [find(i) for i in range(n)]
    # order stages by (level, first task position) — a topological order of the stage DAG
    key = {}
    for i in range(n):
        r = roots[i]
        if r not in key:
            key[r] = (int(level[i]), i)
    ordered = sorted(key, key=lambda r: key[r])
    index = {r: k for k, r in enumerate(ordered)}
    return np.array([index[r] for r in roots], dtype=np.int64)


def build_plan(
    problem: Problem,
    assign: np.ndarray,
    solver: str,
    gap: float,
    solve_time_s: float = 0.0,
    notes: tuple[str, ...] = (),
    stage_index: np.ndarray | None = None,
) -> Plan:
    """Turn an assignment (class index per task) into a Plan with stages, transfers and costs.

    ``stage_index`` (stage per task) fixes the cut instead of ``compute_stages``; the caller
    guarantees one device class per stage and indices in a topological order of the stage DAG
    (``placement.plan_from_placed`` checks both for a hand-edited placed IR).
    """
    assign = np.asarray(assign, dtype=np.int64)
    ev = problem.evaluate(assign)
    if stage_index is None:
        stage_idx = compute_stages(problem, assign)
    else:
        stage_idx = np.asarray(stage_index, dtype=np.int64)
    names = problem.tasks
    lat = problem.latency_s[np.arange(problem.n), assign]
    stages: list[Stage] = []
    nst = int(stage_idx.max()) + 1 if problem.n else 0
    members: list[list[int]] = [[] for _ in range(nst)]
    for i in range(problem.n):
        members[stage_idx[i]].append(i)
    stages_on = np.bincount([int(assign[m[0]]) for m in members], minlength=problem.num_devices)
    for s, mem in enumerate(members):
        d = int(assign[mem[0]])
        busy = float(lat[mem].sum())
        replicas = max(1, math.ceil(busy * problem.load_factor - 1e-9))
        share = busy / ev.busy_s[d] if ev.busy_s[d] > 0 else 1.0 / stages_on[d]
        usd = float(ev.devices[d] * problem.usd_per_hour[d] * share)
        usd += 3600.0 * problem.rps * float(problem.cost_usd[mem, d].sum())
        stages.append(
            Stage(s, problem.devices[d], tuple(names[i] for i in mem), replicas, busy, usd)
        )
    transfers: list[Transfer] = []
    xlat = problem.transfer_latency(assign)
    for e, (u, v) in enumerate(problem.edges.tolist()):
        if stage_idx[u] != stage_idx[v]:
            a, b = int(assign[u]), int(assign[v])
            transfers.append(
                Transfer(
                    names[u],
                    names[v],
                    int(stage_idx[u]),
                    int(stage_idx[v]),
                    problem.devices[a],
                    problem.devices[b],
                    int(problem.edge_bytes[e]),
                    float(xlat[e]),
                    float(problem.xfer_usd[a, b]),
                )  # fmt: skip
            )
    # critical path through networkx: node weights on edges into the node plus transfers
    g = nx.DiGraph()
    g.add_node("__src__")
    for i in range(problem.n):
        g.add_edge("__src__", i, w=float(lat[i]))
    for e, (u, v) in enumerate(problem.edges.tolist()):
        g.add_edge(u, v, w=float(xlat[e] + lat[v]))
    path = nx.dag_longest_path(g, weight="w")
    crit = tuple(names[i] for i in path if i != "__src__")
    usd_h = ev.usd_per_hour
    return Plan(
        solver=solver,
        gap=float(max(0.0, gap)),
        assignment={names[i]: problem.devices[int(assign[i])] for i in range(problem.n)},
        stages=tuple(stages),
        transfers=tuple(transfers),
        latency_s=ev.latency_s,
        throughput_rps=ev.throughput_rps * problem.target_utilisation,
        usd_per_hour=usd_h,
        usd_per_request=usd_h / (3600.0 * problem.rps),
        energy_j_per_request=ev.energy_j,
        sla=problem.sla,
        rps=problem.rps,
        devices={
            problem.devices[d]: int(ev.devices[d])
            for d in range(problem.num_devices)
            if ev.devices[d]
        },
        critical_path=crit,
        ttft_s=ev.ttft_s,
        solve_time_s=solve_time_s,
        target_utilisation=problem.target_utilisation,
        notes=notes,
    )


def relative_gap(value: float, bound: float) -> float:
    """(value - bound) / value, clipped to [0, 1]; 0 when both are 0."""
    if not math.isfinite(bound) or value <= 0:
        return 0.0 if value <= bound + 1e-12 else 1.0
    gap = (value - bound) / value
    return 0.0 if gap < 1e-9 else float(min(1.0, gap))
