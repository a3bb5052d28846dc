"""The placement problem as plain arrays, independent of where costs came from, and its evaluation.

A ``Problem`` is a DAG of tasks (ops) with per-(task, device class) latency and direct cost,
per-class price, availability and memory, per-edge bytes and per-class-pair transfer latency
and cost, an SLA and a traffic target. Adapters build one from an ``ir.Graph`` + fleet + cost
model or from a measured task-graph YAML; every solver reads only this.

Cost semantics (one formula for every solver): a device of class d holds every op placed on
d; ``devices[d] = ceil(rps * busy_s[d] / target_utilisation)`` where ``busy_s[d]`` is the sum
of the latencies of the ops on d for one request. Fleet USD/hour = sum over classes of
``devices[d] * usd_per_hour[d]`` + ``3600 * rps * (direct costs + transfer costs per request)``.
Latency is the critical path (ops on parallel branches overlap; transfers add latency).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from terrazzo.placement.fleet import SLA

# Relative slack on latency bounds so that a plan exactly at the SLA (80+10+30 = 120 ms) is
# feasible despite floating point and the MILP solver's feasibility tolerance.
LATENCY_RTOL = 1e-6


@dataclass(frozen=True, eq=False)
class Problem:
    """Arrays describing one placement problem; tasks are in topological order.

    Attributes:
        tasks: task (op) names, topological order.
        devices: device class names.
        latency_s: (n, D) latency of task i on class d; ``inf`` = cannot run there.
        cost_usd: (n, D) direct cost per request of task i on class d (measured graphs).
        mem_bytes: (n,) memory task i keeps resident on its device.
        edges: (m, 2) int array of (producer, consumer) task indices.
        edge_bytes: (m,) bytes crossing each edge.
        xfer_base_s / xfer_s_per_byte / xfer_usd: (D, D) transfer latency = base + bytes *
            s_per_byte, and USD per transfer, from class a to class b (zero diagonal).
        usd_per_hour: (D,) price of one device-hour of each class.
        count: (D,) devices available (``inf`` = unlimited).
        device_mem_bytes: (D,) memory of one device (``inf`` = unbounded).
        power_w: (D,) power while busy, for energy per request.
        sla: latency bounds; ``prefill`` marks tasks whose finish bounds TTFT; ``decode_steps``
            (>0) marks tasks whose per-step latency (latency / steps) bounds TBT.
        rps: traffic target, requests per second.
        target_utilisation: busy fraction a device is sized for.
    """

    tasks: tuple[str, ...]
    devices: tuple[str, ...]
    latency_s: np.ndarray
    cost_usd: np.ndarray
    mem_bytes: np.ndarray
    edges: np.ndarray
    edge_bytes: np.ndarray
    xfer_base_s: np.ndarray
    xfer_s_per_byte: np.ndarray
    xfer_usd: np.ndarray
    usd_per_hour: np.ndarray
    count: np.ndarray
    device_mem_bytes: np.ndarray
    power_w: np.ndarray
    sla: SLA
    rps: float = 1.0
    target_utilisation: float = 0.8
    prefill: np.ndarray | None = None
    decode_steps: np.ndarray | None = None
    name: str = "problem"
    objective: str = "usd_per_hour"
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- derived, cached ---------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.tasks)

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def load_factor(self) -> float:
        """Devices needed per busy-second per request: rps / target utilisation."""
        return self.rps / self.target_utilisation

    def allowed(self) -> np.ndarray:
        """(n, D) bool: task i may run on class d (finite latency, fits memory, meets TBT)."""
        if "allowed" not in self._cache:
            ok = np.isfinite(self.latency_s)
            ok &= self.mem_bytes[:, None] <= self.device_mem_bytes[None, :]
            if self.sla.tbt_s is not None and self.decode_steps is not None:
                steps = np.maximum(self.decode_steps, 1)[:, None]
                is_dec = (self.decode_steps > 0)[:, None]
                ok &= ~is_dec | (self.latency_s / steps <= self.sla.tbt_s * (1 + LATENCY_RTOL))
            self._cache["allowed"] = ok
        return self._cache["allowed"]  # type: ignore[no-any-return]

    def fluid_cost(self) -> np.ndarray:
        """(n, D) USD/hour that task i adds on class d ignoring device integrality; inf if banned."""
        if "fluid" not in self._cache:
            lat = np.where(np.isfinite(self.latency_s), self.latency_s, 0.0)
            w = (
                self.load_factor * lat * self.usd_per_hour[None, :]
                + 3600.0 * self.rps * self.cost_usd
            )
            self._cache["fluid"] = np.where(self.allowed(), w, np.inf)
        return self._cache["fluid"]  # type: ignore[no-any-return]

    def structure(self) -> dict[str, Any]:
        """Predecessor/successor edge lists and topological levels (cached)."""
        if "structure" not in self._cache:
            n = self.n
            preds: list[list[int]] = [[] for _ in range(n)]
            succs: list[list[int]] = [[] for _ in range(n)]
            for e, (u, v) in enumerate(self.edges.tolist()):
                preds[v].append(e)
                succs[u].append(e)
            level = np.zeros(n, dtype=np.int64)
            for v in range(n):
                for e in preds[v]:
                    u = int(self.edges[e, 0])
                    level[v] = max(level[v], level[u] + 1)
            height = np.zeros(n, dtype=np.int64)
            for u in range(n - 1, -1, -1):
                for e in succs[u]:
                    v = int(self.edges[e, 1])
                    height[u] = max(height[u], height[v] + 1)
            self._cache["structure"] = {
                "preds": preds,
                "succs": succs,
                "level": level,
                "height": height,
                "fwd_groups": _group_edges(self.edges[:, 1], level, self.edges),
                "bwd_groups": _group_edges(self.edges[:, 0], height, self.edges),
                "nodes_by_level": _group_nodes(level),
                "nodes_by_height": _group_nodes(height),
            }
        return self._cache["structure"]  # type: ignore[no-any-return]

    def lower_bound_usd_per_hour(self) -> float:
        """A valid lower bound on the objective (ignores SLA, transfers and integrality)."""
        w = self.fluid_cost()
        best = w.min(axis=1)
        if not np.all(np.isfinite(best)):
            return math.inf
        lb = float(best.sum())
        priced = self.usd_per_hour[self.allowed().any(axis=0)]
        if len(priced) and np.all(priced > 0):
            lb = max(lb, float(priced.min()))  # at least one device of some class runs
        return lb

    # -- evaluation --------------------------------------------------------------------------
    def transfer_latency(self, assign: np.ndarray) -> np.ndarray:
        """(m,) transfer latency of every edge under an assignment (class index per task)."""
        if len(self.edges) == 0:
            return np.zeros(0)
        a = assign[self.edges[:, 0]]
        b = assign[self.edges[:, 1]]
        return self.xfer_base_s[a, b] + self.edge_bytes * self.xfer_s_per_byte[a, b]

    def longest_paths(self, assign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Earliest finish f[i] and longest path g[i] from the start of i to a sink (incl. i)."""
        st = self.structure()
        lat = self.latency_s[np.arange(self.n), assign]
        t = self.transfer_latency(assign)
        if len(st["nodes_by_level"]) > 64:
            return _longest_paths_loop(self, lat, t)
        f = lat.copy()
        inmax = np.zeros(self.n)
        for lv, nodes in enumerate(st["nodes_by_level"]):
            if lv > 0:
                eidx = st["fwd_groups"][lv]
                np.maximum.at(inmax, self.edges[eidx, 1], f[self.edges[eidx, 0]] + t[eidx])
                f[nodes] = lat[nodes] + inmax[nodes]
        g = lat.copy()
        outmax = np.zeros(self.n)
        for h, nodes in enumerate(st["nodes_by_height"]):
            if h > 0:
                eidx = st["bwd_groups"][h]
                np.maximum.at(outmax, self.edges[eidx, 0], g[self.edges[eidx, 1]] + t[eidx])
                g[nodes] = lat[nodes] + outmax[nodes]
        return f, g

    def evaluate(self, assign: np.ndarray) -> Evaluation:
        """Exact latency, cost and feasibility of an assignment."""
        assign = np.asarray(assign, dtype=np.int64)
        idx = np.arange(self.n)
        lat = self.latency_s[idx, assign]
        f, _ = self.longest_paths(assign)
        latency = float(f.max()) if self.n else 0.0
        busy = np.bincount(
            assign, weights=np.where(np.isfinite(lat), lat, 0.0), minlength=self.num_devices
        )
        used = np.bincount(assign, minlength=self.num_devices) > 0
        devices = np.where(used, np.maximum(np.ceil(busy * self.load_factor - 1e-9), 1), 0).astype(
            np.int64
        )
        direct = float(self.cost_usd[idx, assign].sum())
        xusd = 0.0
        if len(self.edges):
            xusd = float(self.xfer_usd[assign[self.edges[:, 0]], assign[self.edges[:, 1]]].sum())
        usd_per_hour = float((devices * self.usd_per_hour).sum()) + 3600.0 * self.rps * (
            direct + xusd
        )
        mem = np.bincount(assign, weights=self.mem_bytes, minlength=self.num_devices)
        violations: list[str] = []
        if not np.all(np.isfinite(lat)):
            bad = [self.tasks[i] for i in np.flatnonzero(~np.isfinite(lat))[:3]]
            violations.append(f"tasks without a profile on their device: {', '.join(bad)}")
        allowed = self.allowed()[idx, assign]
        if self.sla.tbt_s is not None and self.decode_steps is not None and not allowed.all():
            bad_tbt = [self.tasks[i] for i in np.flatnonzero(~allowed) if self.decode_steps[i] > 0]
            if bad_tbt:
                violations.append(
                    f"TBT > {self.sla.tbt_s * 1e3:.3g} ms for {', '.join(bad_tbt[:3])}"
                )
        if latency > self.sla.latency_s * (1 + LATENCY_RTOL):
            violations.append(
                f"latency {latency * 1e3:.4g} ms > SLA {self.sla.latency_s * 1e3:.4g} ms"
            )
        ttft = None
        if self.prefill is not None and self.prefill.any():
            ttft = float(f[self.prefill].max())
            if self.sla.ttft_s is not None and ttft > self.sla.ttft_s * (1 + LATENCY_RTOL):
                violations.append(f"TTFT {ttft * 1e3:.4g} ms > SLA {self.sla.ttft_s * 1e3:.4g} ms")
        for d in range(self.num_devices):
            if mem[d] > self.device_mem_bytes[d]:
                violations.append(
                    f"{self.devices[d]} memory {mem[d] / 2**30:.3g} GiB > {self.device_mem_bytes[d] / 2**30:.3g} GiB"
                )
            if devices[d] > self.count[d]:
                violations.append(
                    f"{self.devices[d]} needs {devices[d]} devices > {int(self.count[d])} available"
                )
        energy = float((np.where(np.isfinite(lat), lat, 0.0) * self.power_w[assign]).sum())
        with np.errstate(divide="ignore"):
            cap = np.where(busy > 0, devices / np.where(busy > 0, busy, 1.0), np.inf)
        throughput = float(cap.min()) if np.isfinite(cap).any() else math.inf
        return Evaluation(
            latency_s=latency,
            ttft_s=ttft,
            usd_per_hour=usd_per_hour,
            devices=devices,
            busy_s=busy,
            energy_j=energy,
            throughput_rps=throughput,
            violations=tuple(violations),
            finish_s=f,
        )


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Exact figures of one assignment under a Problem."""

    latency_s: float
    ttft_s: float | None
    usd_per_hour: float
    devices: np.ndarray
    busy_s: np.ndarray
    energy_j: float
    throughput_rps: float
    violations: tuple[str, ...]
    finish_s: np.ndarray

    @property
    def feasible(self) -> bool:
        return not self.violations


def _longest_paths_loop(
    p: Problem, lat: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    # deep graphs (long chains) have as many levels as ops: a plain loop beats per-level numpy
    st = p.structure()
    src = p.edges[:, 0].tolist()
    dst = p.edges[:, 1].tolist()
    tl = t.tolist()
    la = lat.tolist()
    f = list(la)
    for v in range(p.n):
        best = 0.0
        for e in st["preds"][v]:
            x = f[src[e]] + tl[e]
            if x > best:
                best = x
        f[v] = la[v] + best
    g = list(la)
    for u in range(p.n - 1, -1, -1):
        best = 0.0
        for e in st["succs"][u]:
            x = g[dst[e]] + tl[e]
            if x > best:
                best = x
        g[u] = la[u] + best
    return np.array(f), np.array(g)


def _group_nodes(level: np.ndarray) -> list[np.ndarray]:
    if len(level) == 0:
        return []
    order = np.argsort(level, kind="stable")
    bounds = np.searchsorted(level[order], np.arange(int(level.max()) + 2))
    return [order[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]


def _group_edges(key_nodes: np.ndarray, level: np.ndarray, edges: np.ndarray) -> list[np.ndarray]:
    if len(level) == 0:
        return []
    nlev = int(level.max()) + 1
    if len(edges) == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(nlev)]
    lv = level[key_nodes]
    order = np.argsort(lv, kind="stable")
    bounds = np.searchsorted(lv[order], np.arange(nlev + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(nlev)]
