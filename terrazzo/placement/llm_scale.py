"""LLM-scale placement: operator-level prefill/decode graphs → a P::D pipeline plan with a certified gap.

Method (docs/llm-planner.md):

* **Symmetry.** Every decoder layer has the same ops, so each (device class, TP degree, batch)
  option is costed once per layer by summing the op-level rooflines of one layer; embedding
  and lm_head are costed separately and ride with the first / last stage.
* **Decomposition.** Prefill and decode are planned separately (they share only the TTFT
  budget, which reserves a fixed KV-transfer allowance) and each is a chain of contiguous
  layer ranges (pipeline stages), each on one (class, TP) with its own integer replica count.
  For a batch ``b`` and a decode pacing ``τ`` the chain is a shortest path over layer
  boundaries (a DP); the latency bound is priced by a Lagrange multiplier μ.
* **Bound.** For any μ ≥ 0, DP(μ) − μ·budget is a lower bound of the constrained problem
  (weak duality). Decode memory depends on the plan's token pacing τ (a stage instance
  holds the KV of ``b·τ/T_s`` sequences), so τ is split into intervals [τ_lo, τ_hi]: the
  bound uses τ_hi for time and τ_lo for memory (a relaxation of every plan with τ inside),
  feasible plans use τ_hi for both. The reported gap is (cost − min bound) / cost over
  every (batch, interval) cell; a cell whose bound is above the incumbent is pruned.
* **Stages do not ping-pong.** Stages are contiguous layer ranges (one class per range, so
  A→B→A can only occur with ≥ ``min_layers_per_stage`` layers in B); each boundary costs a
  transfer hop (latency of the activations over the link) inside the SLA, and
  every stage pays a fixed ``stage_penalty_usd_per_hour`` (default 0.5% of the phase's best
  whole-model cost), so a split must pay for itself.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse.csgraph import csgraph_from_dense, dijkstra

from terrazzo.costmodel.catalog import Catalog, DeviceSpec, load_catalog
from terrazzo.costmodel.efficiency import (
    DEFAULT_LAUNCH_OVERHEAD_S,
    LINK_LATENCY_S,
    default_efficiency,
)
from terrazzo.costmodel.llm import MEM_UTILISATION, allreduce_latency_s, dtype_bytes
from terrazzo.costmodel.transfer import Link, link_between
from terrazzo.errors import PlacementError
from terrazzo.ir.graph import Graph, Op
from terrazzo.placement.llm_graph import TP_ALLREDUCE_OPS, LLMGraphs

TP_DEGREES = (1, 2, 4, 8)
_NET_LATENCY_S = LINK_LATENCY_S["network"]
DECODE_BATCHES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
PREFILL_BATCHES = (1, 2, 4, 8, 16)
_DTYPE_KEY = {"fp16": "fp16", "bf16": "bf16", "fp8": "fp8", "fp4": "fp4"}


@dataclass(frozen=True, slots=True)
class LLMTraffic:
    """Offered load and SLA: ``rps`` requests/s of ``isl`` prompt and ``osl`` output tokens."""

    rps: float
    isl: int
    osl: int
    ttft_s: float
    tbt_s: float
    utilisation: float = 0.8

    def __post_init__(self) -> None:
        bad = {k: getattr(self, k) for k in ("rps", "isl", "osl", "ttft_s", "tbt_s")
               if not getattr(self, k) > 0}  # fmt: skip
        if bad or not 0 < self.utilisation <= 1:
            raise PlacementError(f"LLM traffic needs positive rps/isl/osl/ttft/tbt and "
                                 f"0 < utilisation ≤ 1, found {bad or self.utilisation}")  # fmt: skip

    @property
    def decode_tokens_per_s(self) -> float:
        return self.rps * self.osl


@dataclass(frozen=True, slots=True)
class LLMStage:
    """Layers [first_layer, end_layer) of one phase on ``replicas`` groups of ``tp`` devices."""

    phase: str
    device: str
    tp: int
    first_layer: int
    end_layer: int
    replicas: int
    step_s: float
    usd_per_hour: float

    @property
    def layers(self) -> int:
        return self.end_layer - self.first_layer

    def to_json(self) -> dict[str, Any]:
        return {"phase": self.phase, "device": self.device, "tp": self.tp,
                "first_layer": self.first_layer, "end_layer": self.end_layer,
                "replicas": self.replicas, "step_s": self.step_s,
                "usd_per_hour": self.usd_per_hour}  # fmt: skip


@dataclass(frozen=True, slots=True)
class LLMPlan:
    """A P::D plan (or a replica mix) with cost, latency and, for the planner, a certified gap.

    ``lower_bound_usd_per_hour`` ≤ the optimum of the same plan space; ``gap`` =
    (usd_per_hour − bound) / usd_per_hour. Baselines carry the gap of their own (smaller) space.
    """

    solver: str
    stages: tuple[LLMStage, ...]
    prefill_batch: int
    decode_batch: int
    ttft_s: float
    tbt_s: float
    usd_per_hour: float
    tokens_per_s: float
    lower_bound_usd_per_hour: float
    gap: float
    solve_time_s: float
    notes: tuple[str, ...] = ()
    mix: Mapping[str, int] = field(default_factory=dict)

    @property
    def tokens_per_s_per_usd_hour(self) -> float:
        """Output tokens/s per USD/hour of fleet (higher is better)."""
        return self.tokens_per_s / self.usd_per_hour

    def phase_stages(self, phase: str) -> tuple[LLMStage, ...]:
        return tuple(s for s in self.stages if s.phase == phase)

    def assignment(self, graph: Graph) -> dict[str, str]:
        """op name → device class for one phase graph (embedding with the first stage)."""
        phase = str(dict(graph.attrs)["phase"])
        st = self.phase_stages(phase)
        out: dict[str, str] = {}
        for o in graph.ops:
            layer = _layer(o)
            layer = min(max(layer, 0), st[-1].end_layer - 1)
            out[o.name] = next(s.device for s in st if s.first_layer <= layer < s.end_layer)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"solver": self.solver, "stages": [s.to_json() for s in self.stages],
                "prefill_batch": self.prefill_batch, "decode_batch": self.decode_batch,
                "ttft_s": self.ttft_s, "tbt_s": self.tbt_s, "usd_per_hour": self.usd_per_hour,
                "tokens_per_s": self.tokens_per_s,
                "tokens_per_s_per_usd_hour": self.tokens_per_s_per_usd_hour,
                "lower_bound_usd_per_hour": self.lower_bound_usd_per_hour, "gap": self.gap,
                "solve_time_s": self.solve_time_s, "notes": list(self.notes),
                "mix": dict(self.mix)}  # fmt: skip


def _layer(o: Op) -> int:
    """Decoder layer of an op (-1: embedding, ``layers``: final norm and lm_head)."""
    v = o.attr("layer", -1)
    return v if isinstance(v, int) else -1


# -- per-layer costs (symmetry) ---------------------------------------------------------------
def _signature(o: Op) -> tuple[Any, ...]:
    return (o.name.split(".", 1)[-1], o.op_class, o.flops, o.bytes_read, o.bytes_written,
            o.param_bytes)  # fmt: skip


def _split(graph: Graph, layers: int) -> tuple[list[Op], list[Op], list[Op]]:
    """(embedding ops, ops of layer 0, head ops); checks all layers are identical."""
    by_layer: dict[int, list[Op]] = {}
    for o in graph.ops:
        by_layer.setdefault(_layer(o), []).append(o)
    sig0 = [_signature(o) for o in by_layer.get(0, [])]
    for k in range(1, layers):
        if [_signature(o) for o in by_layer.get(k, [])] != sig0:
            raise PlacementError(f"graph {graph.name!r}: layer {k} differs from layer 0; the "
                                 "LLM-scale planner needs identical decoder layers")  # fmt: skip
    return by_layer.get(-1, []), by_layer[0], by_layer.get(layers, [])


@dataclass(frozen=True, slots=True)
class _Options:
    """Per (class, tp) option arrays for one phase and batch."""

    dev: tuple[str, ...]
    tp: np.ndarray
    usd_per_hour: np.ndarray  # per TP group
    layer_s: np.ndarray
    embed_s: np.ndarray
    head_s: np.ndarray
    mem_bytes: np.ndarray  # usable per TP group
    w_layer: float
    w_embed: float
    w_head: float


def _ops_time(ops: Sequence[Op], dev: DeviceSpec, tp: int, batch: int, dtype: str,
              tokens: int, d_model: int) -> float:  # fmt: skip
    peak = dev.peak_flops_per_s(_DTYPE_KEY.get(dtype, dtype))
    total = 0.0
    for o in ops:
        eff = default_efficiency(dev.kind, o.op_class)
        comp = batch * o.flops / tp / (peak * eff.compute)
        mem = (o.param_bytes + batch * (o.bytes_read + o.bytes_written)) / tp
        total += max(comp, mem / (dev.mem_bw_bytes_per_s * eff.memory))
        total += DEFAULT_LAUNCH_OVERHEAD_S[dev.kind]
        if o.name.split(".", 1)[-1] in TP_ALLREDUCE_OPS:
            total += allreduce_latency_s(batch * tokens * d_model * dtype_bytes(dtype), tp, dev)
    return total


def _options(
    graphs: LLMGraphs, phase: str, batch: int, fleet: Sequence[DeviceSpec], prune: bool = True
) -> _Options:
    cfg = graphs.cfg
    graph = graphs.prefill if phase == "prefill" else graphs.decode
    emb, lay, head = _split(graph, cfg.layers)
    tokens = graphs.isl if phase == "prefill" else 1
    rows: list[tuple[str, int, float, float, float, float, float]] = []
    for dev in fleet:
        for tp in TP_DEGREES:
            if tp > dev.chassis_size or cfg.kv_heads % tp:
                continue
            args = (dev, tp, batch, graphs.dtype, tokens, cfg.d_model)
            rows.append((dev.name, tp, tp * float(dev.cloud_usd_per_hour or 0.0),
                         _ops_time(lay, *args), _ops_time(emb, *args), _ops_time(head, *args),
                         MEM_UTILISATION * tp * dev.mem_bytes))  # fmt: skip
    # exact dominance: an option no faster on every range, no cheaper and with no more memory
    # than another never appears in an optimal chain (replicas = ceil(rate·T/(b·u)) is monotone)
    keep = []
    for a in rows:
        dominated = any(
            b[2] <= a[2]
            and b[3] <= a[3]
            and b[4] <= a[4]
            and b[5] <= a[5]
            and b[6] >= a[6]
            and b[:2] != a[:2]
            and (b[2:] != a[2:] or b[:2] < a[:2])
            for b in rows
        )
        if not (prune and dominated):
            keep.append(a)
    rows = keep
    return _Options(
        tuple(r[0] for r in rows), np.array([r[1] for r in rows]),
        np.array([r[2] for r in rows]), np.array([r[3] for r in rows]),
        np.array([r[4] for r in rows]), np.array([r[5] for r in rows]),
        np.array([r[6] for r in rows]), float(sum(o.param_bytes for o in lay)),
        float(sum(o.param_bytes for o in emb)), float(sum(o.param_bytes for o in head)),
    )  # fmt: skip


# -- the DP over layer boundaries --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Cell:
    """Stage tables of one (phase, batch, τ interval): arrays [option, start, end]."""

    phase: str
    batch: int
    tau_hi: float
    time_s: np.ndarray
    cost: np.ndarray  # inf where infeasible (memory, lengths)
    cost_lb: np.ndarray  # the relaxed memory check (τ_lo)
    budget_s: float
    hop_s: float
    hop_lb_s: float
    opts: _Options
    hop_pair: np.ndarray  # exact hop latency [previous option, next option]


def _base_tables(o: _Options, layers: int, batch: int, rate: float, util: float,
                 min_layers: int, penalty: float) -> tuple[np.ndarray, ...]:  # fmt: skip
    """τ-independent parts per [option, start, end]: (time_s, weight bytes, k, cost or inf)."""
    n = layers + 1
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    k = (j - i).astype(float)
    t = (k[None] * o.layer_s[:, None, None] + (i == 0)[None] * o.embed_s[:, None, None]
         + (j == layers)[None] * o.head_s[:, None, None])  # fmt: skip
    w = k * o.w_layer + (i == 0) * o.w_embed + (j == layers) * o.w_head
    replicas = np.ceil(rate * t / (batch * util) - 1e-9)
    ok = (k >= min_layers) | ((k > 0) & (i == 0) & (j == layers))
    cost = np.where(ok[None], replicas * o.usd_per_hour[:, None, None] + penalty, np.inf)
    return t, w, k, cost


def _with_memory(base: tuple[np.ndarray, ...], o: _Options, batch: int, kv_layer_seq: float,
                 tau_mem: float | None) -> np.ndarray:  # fmt: skip
    """The cost table with inf where a stage instance cannot hold its weights and KV.

    Resident sequences per instance: ``b·τ/T`` when decode is paced at τ, else ``b``.
    """
    t, w, k, cost = base
    with np.errstate(divide="ignore", invalid="ignore"):
        seqs = batch * (tau_mem / t if tau_mem else 1.0)
        mem = w[None] + seqs * kv_layer_seq * k[None]
    return np.where(mem <= o.mem_bytes[:, None, None], cost, np.inf)


def _dp(cell_cost: np.ndarray, time_s: np.ndarray, mu: float, hop_s: float
        ) -> tuple[float, float, float, list[tuple[int, int, int]]]:  # fmt: skip
    """Shortest path 0 → L of Σ cost + μ·(time + hops): (value, cost, time, [(opt, i, j)])."""
    val = cell_cost + mu * time_s
    best = val.min(axis=0)
    arg = val.argmin(axis=0)
    n = best.shape[0]
    # a DAG over layer boundaries; every edge weight is > 0, so Dijkstra (C code) is exact
    w = np.triu(best, 1)
    w[1:] += mu * hop_s
    dist, pred = dijkstra(csgraph_from_dense(w, null_value=np.inf), indices=0,
                          return_predecessors=True)  # fmt: skip
    if not math.isfinite(dist[-1]):
        return math.inf, math.inf, math.inf, []
    f = dist
    prev = pred
    path: list[tuple[int, int, int]] = []
    jj = n - 1
    while jj > 0:
        ii = int(prev[jj])
        path.append((int(arg[ii, jj]), ii, jj))
        jj = ii
    path.reverse()
    cost = float(sum(cell_cost[o, i, j] for o, i, j in path))
    t = float(sum(time_s[o, i, j] for o, i, j in path)) + hop_s * (len(path) - 1)
    return float(f[-1]), cost, t, path


def _exact_chain(cost: np.ndarray, time_s: np.ndarray, hop_pair: np.ndarray, budget: float,
                 ub: float) -> tuple[float, list[tuple[int, int, int]] | None]:  # fmt: skip
    """Exact resource-constrained shortest path by Pareto labels (cost, time) per boundary and
    last option; the hop between two stages is the exact link of their two (class, TP) options.

    Returns (min cost, path) among chains with time ≤ ``budget`` and cost < ``ub``, or
    (``ub``, None) when there is none (then ``ub`` is a valid bound of the cell).
    """
    n = cost.shape[1]
    hop_s = float(hop_pair.min())
    fin = np.isfinite(cost)
    # cheapest cost-to-go and fastest time-to-go (μ = 0 DPs on the reversed chain)
    h = np.full(n, np.inf)
    tg = np.full(n, np.inf)
    h[-1] = tg[-1] = 0.0
    cmin = cost.min(axis=0)
    tmin = np.where(fin, time_s, np.inf).min(axis=0)
    for i in range(n - 2, -1, -1):
        h[i] = np.min(cmin[i, i + 1 :] + h[i + 1 :])
        hop = hop_s * (np.arange(i + 1, n) < n - 1)
        tg[i] = np.min(tmin[i, i + 1 :] + tg[i + 1 :] + hop)
    # [end, start, option], contiguous: one gather per end boundary
    cost_t = np.ascontiguousarray(cost.transpose(2, 1, 0))
    time_t = np.ascontiguousarray(time_s.transpose(2, 1, 0))
    # all labels so far, flat: node, cost, time, parent label, option
    node = np.zeros(1, dtype=np.int64)
    lc = np.zeros(1)
    lt = np.zeros(1)
    par = np.full(1, -1)
    lop = np.full(1, -1)
    n_opts = cost.shape[0]
    for j in range(1, n):
        src = np.nonzero(node < j)[0]
        if not src.size:
            continue
        ns = node[src]
        c = lc[src][:, None] + cost_t[j][ns]
        prev = lop[src]
        hop = np.where(prev[:, None] >= 0, hop_pair[np.maximum(prev, 0)], 0.0)
        t = lt[src][:, None] + time_t[j][ns] + hop
        keep = (c + h[j] < ub) & (t + tg[j] <= budget)
        if not keep.any():
            continue
        li, ko = np.nonzero(keep)
        c, t = c[li, ko], t[li, ko]
        # Pareto per last option (the next hop depends on it)
        order = np.lexsort((t, c, ko))
        # segmented running minimum in one pass: shift each option's times below all earlier
        # options' (sorted ascending by option), so earlier groups never dominate later ones
        big = 2.0 * (float(t.max()) + 1.0)
        v = t[order] - ko[order] * big
        pareto = v < np.minimum.accumulate(np.concatenate([[np.inf], v[:-1]]))
        sel = order[pareto]
        node = np.concatenate([node, np.full(sel.size, j)])
        lc = np.concatenate([lc, c[sel]])
        lt = np.concatenate([lt, t[sel]])
        par = np.concatenate([par, src[li[sel]]])
        lop = np.concatenate([lop, ko[sel]])
    del n_opts
    at_end = np.nonzero(node == n - 1)[0]
    if not at_end.size:
        return ub, None
    k = int(at_end[np.argmin(lc[at_end])])
    best = float(lc[k])
    path: list[tuple[int, int, int]] = []
    while par[k] >= 0:
        path.append((int(lop[k]), int(node[par[k]]), int(node[k])))
        k = int(par[k])
    path.reverse()
    return best, path


def _solve_cell(c: _Cell, target: float, gap: float, incumbent: float = math.inf, mu_iters: int = 5
                ) -> tuple[float, float, list[tuple[int, int, int]] | None]:  # fmt: skip
    """(lower bound, best feasible cost, its path) of one cell; stops once bound ≥ target."""
    v0, _, _, _ = _dp(c.cost_lb, c.time_s, 0.0, c.hop_lb_s)
    lb = v0
    if lb >= target:
        return lb, math.inf, None
    _, cost, t, path = _dp(c.cost, c.time_s, 0.0, c.hop_s)
    if path and t <= c.budget_s:
        return lb, cost, path
    # price the latency budget: bisect μ on the relaxed DP for the bound, on the real one for plans
    best_cost, best_path = math.inf, None
    lo, hi = 0.0, 1.0
    for _ in range(60):
        _, cost, t, path = _dp(c.cost, c.time_s, hi, c.hop_s)
        if not path or t <= c.budget_s:
            break
        hi *= 4.0
    for _ in range(mu_iters):
        mu = 0.5 * (lo + hi)
        v, _, tl, _ = _dp(c.cost_lb, c.time_s, mu, c.hop_lb_s)
        if math.isfinite(v):
            lb = max(lb, v - mu * c.budget_s)
        _, cost, t, path = _dp(c.cost, c.time_s, mu, c.hop_s)
        if path and t <= c.budget_s:
            if cost < best_cost:
                best_cost, best_path = cost, path
            hi = mu
        else:
            lo = mu
        if lb >= target or (best_cost < math.inf and lb >= best_cost * (1 - gap / 2)):
            break
    if lb < target and lb < best_cost * (1 - gap / 2):
        # the Lagrangian left a duality gap: close it with the exact label search
        ub = min(target, best_cost)
        lb_exact, _ = _exact_chain(c.cost_lb, c.time_s, c.hop_pair, c.budget_s, ub)
        lb = max(lb, lb_exact)
        cost_exact, path_exact = _exact_chain(
            c.cost, c.time_s, c.hop_pair, c.budget_s, min(best_cost, incumbent)
        )
        if path_exact is not None and cost_exact < best_cost:
            best_cost, best_path = cost_exact, path_exact
    return lb, best_cost, best_path


def _hop_s(fleet: Sequence[DeviceSpec], nbytes: float) -> tuple[float, float]:
    """(max, min) latency of moving ``nbytes`` between any two devices of the fleet."""
    lat = [link_between(a, b, same_chassis=False).transfer_latency_s(nbytes) if a.name != b.name
           else link_between(a, b, same_chassis=True).transfer_latency_s(nbytes)
           for a in fleet for b in fleet]  # fmt: skip
    return max(lat), min(lat)


def _hop_pairs(o: _Options, fleet: Sequence[DeviceSpec], nbytes: float) -> np.ndarray:
    """Latency of ``nbytes`` from each option's group to each other's: the scale-up link when
    both groups fit in one chassis of one class, else PCIe (CPU↔accelerator) or the network."""
    by = {d.name: d for d in fleet}
    n = len(o.dev)
    out = np.zeros((n, n))
    for a in range(n):
        for b in range(n):
            da, db = by[o.dev[a]], by[o.dev[b]]
            same = da.name == db.name and int(o.tp[a] + o.tp[b]) <= da.chassis_size
            if same or da.name != db.name:
                link = link_between(da, db, same_chassis=same)
            else:  # two groups of one class that do not share a chassis
                link = Link("network", da.scaleout_bw_bytes_per_s, _NET_LATENCY_S)
            out[a, b] = link.transfer_latency_s(nbytes)
    return out


def _priced(fleet: Iterable[DeviceSpec]) -> list[DeviceSpec]:
    return [d for d in fleet if d.cloud_usd_per_hour]


@dataclass(frozen=True, slots=True)
class LLMPlannerOptions:
    """Knobs of the LLM-scale planner (defaults are the documented ones)."""

    min_layers_per_stage: int = 4
    #: fixed USD/hour charged per stage (its hop, NICs, scheduler); None: ``stage_penalty_frac``
    #: of the phase's best whole-model single-stage cost, so a split must pay for itself
    stage_penalty_usd_per_hour: float | None = None
    stage_penalty_frac: float = 0.005
    tau_intervals: int = 8
    tau_min_frac: float = 0.2
    gap_target: float = 0.01
    time_budget_s: float = 2.0


def _kv_allowance_s(graphs: LLMGraphs, fleet: Sequence[DeviceSpec], batch: int) -> float:
    """TTFT reserve for the KV of the last prefilled layer (streamed layer by layer)."""
    per_layer = graphs.cfg.kv_bytes_per_token(graphs.dtype) / graphs.cfg.layers * graphs.isl
    return _hop_s(fleet, per_layer * batch)[0]


def _single_stage(o: _Options, layers: int, batch: int, rate: float, util: float,
                  kv_seq: float, budget: float) -> tuple[float, int, float]:  # fmt: skip
    """(cost, option, step) of the cheapest whole-model stage (residency b) or (inf, -1, 0)."""
    t = layers * o.layer_s + o.embed_s + o.head_s
    mem = layers * o.w_layer + o.w_embed + o.w_head + batch * kv_seq * layers
    cost = np.ceil(rate * t / (batch * util) - 1e-9) * o.usd_per_hour
    cost = np.where((mem <= o.mem_bytes) & (t <= budget), cost, np.inf)
    k = int(np.argmin(cost))
    return float(cost[k]), k, float(t[k])


def _phase_plan(graphs: LLMGraphs, traffic: LLMTraffic, fleet: Sequence[DeviceSpec],
                phase: str, opt: LLMPlannerOptions, deadline: float,
                single_stage: bool = False) -> tuple[float, float, list[LLMStage], int, float]:  # fmt: skip
    """(bound, cost, stages, batch, latency) of the cheapest chain for one phase.

    Cells (batch × τ interval) are visited in the order of a fluid bound that needs no table
    (rate/(b·u) · the cheapest per-layer price, ignoring memory and rounding); a cell is
    opened only while that bound is below the incumbent.
    """
    cfg = graphs.cfg
    L = cfg.layers
    eb = dtype_bytes(graphs.dtype)
    kv_layer_tok = cfg.kv_bytes_per_token(graphs.dtype) / L
    min_layers = L if single_stage else opt.min_layers_per_stage
    prefill = phase == "prefill"
    rate = traffic.rps if prefill else traffic.decode_tokens_per_s
    kv_seq = kv_layer_tok * (graphs.isl if prefill else graphs.isl + graphs.osl)
    # (fluid bound, batch, τ_lo, τ_hi, latency budget)
    specs: list[tuple[float, int, float, float, float]] = []
    opts: dict[int, _Options] = {}
    for b in PREFILL_BATCHES if prefill else DECODE_BATCHES:
        o = opts[b] = _options(graphs, phase, b, fleet)
        fluid = rate / (b * traffic.utilisation) * float(
            L * np.min(o.usd_per_hour * o.layer_s) + np.min(o.usd_per_hour * o.embed_s)
            + np.min(o.usd_per_hour * o.head_s))  # fmt: skip
        if prefill:
            budget = traffic.ttft_s - _kv_allowance_s(graphs, fleet, b)
            if budget > 0:
                specs.append((fluid, b, 0.0, 0.0, budget))
        else:
            # τ intervals, refined on demand below (branch and bound on the pacing)
            edges = np.geomspace(opt.tau_min_frac * traffic.tbt_s, traffic.tbt_s,
                                 opt.tau_intervals)  # fmt: skip
            lows = np.concatenate([[0.0], edges[:-1]])
            specs += [(fluid, b, float(lo), float(hi), float(hi))
                      for lo, hi in zip(lows, edges, strict=True)]  # fmt: skip
    # seed: the best whole-model single stage (exact, residency b); in single-stage mode the
    # enumeration is the whole search and its bound is its cost
    seed: tuple[float, int, int, float] = (math.inf, 0, -1, 0.0)
    for b in opts:
        budget = (
            traffic.tbt_s if not prefill else traffic.ttft_s - _kv_allowance_s(graphs, fleet, b)
        )
        c1, k1, t1 = _single_stage(opts[b], L, b, rate, traffic.utilisation, kv_seq, budget)
        if c1 < seed[0]:
            seed = (c1, b, k1, t1)
    if opt.stage_penalty_usd_per_hour is not None:
        penalty = opt.stage_penalty_usd_per_hour
    else:
        ref = seed[0] if math.isfinite(seed[0]) else min(x[0] for x in specs) if specs else 0.0
        penalty = opt.stage_penalty_frac * ref
    seed = (seed[0] + penalty, *seed[1:])
    base: dict[int, tuple[np.ndarray, ...]] = {}
    hops: dict[int, tuple[float, float]] = {}
    pairs: dict[int, np.ndarray] = {}
    best: tuple[float, _Cell | None, list[tuple[int, int, int]] | None] = (math.inf, None, None)
    if math.isfinite(seed[0]):
        best = (seed[0], None, None)
    # best-first branch and bound: (bound, batch, τ_lo, τ_hi, budget, level) with level 0 = fluid
    # bound, 1 = μ=0 DP bound, 2 = solved (Lagrangian + exact labels)
    heap: list[tuple[float, int, float, float, float, int]] = [
        (f, b, lo, hi, bud, 0) for f, b, lo, hi, bud in ([] if single_stage else specs)
    ]
    heapq.heapify(heap)
    final_lb = math.inf  # bounds of cells that cannot be refined further
    while heap:
        lb0, b, lo_tau, hi_tau, budget, level = heap[0]
        target = best[0] * (1 - opt.gap_target / 2) if math.isfinite(best[0]) else math.inf
        if lb0 >= target or time.perf_counter() > deadline:
            break
        heapq.heappop(heap)
        if level == 2:
            # evaluated and still below the target: split the pacing interval
            if prefill or hi_tau <= lo_tau * 1.002:
                final_lb = min(final_lb, lb0)
                continue
            mid = math.sqrt(lo_tau * hi_tau) if lo_tau > 0 else hi_tau / 2
            heapq.heappush(heap, (lb0, b, lo_tau, mid, mid, 0))
            heapq.heappush(heap, (lb0, b, mid, hi_tau, hi_tau, 0))
            continue
        o = opts[b]
        if b not in base:
            base[b] = _base_tables(o, L, b, rate, traffic.utilisation, min_layers,
                                   penalty)  # fmt: skip
        t = base[b][0]
        cost = _with_memory(base[b], o, b, kv_seq, hi_tau or None)
        cost_lb = cost if lo_tau == hi_tau else _with_memory(base[b], o, b, kv_seq, lo_tau or None)
        nbytes = b * cfg.d_model * eb * (graphs.isl if prefill else 1)
        hop_hi, hop_lo = hops.setdefault(b, _hop_s(fleet, nbytes))
        if b not in pairs:
            pairs[b] = _hop_pairs(o, fleet, nbytes)
        cell = _Cell(phase, b, hi_tau, t, cost, cost_lb, budget, hop_hi, hop_lo, o, pairs[b])
        # a cell whose fastest chain misses the budget holds no plan at all
        t_min = _dp(np.where(np.isfinite(cost_lb), t, np.inf), t, 0.0, hop_lo)[0]
        if t_min > budget:
            continue
        if level == 0:
            v0 = _dp(cost_lb, t, 0.0, hop_lo)[0]
            heapq.heappush(heap, (max(v0, lb0), b, lo_tau, hi_tau, budget, 1))
            continue
        lb, c, path = _solve_cell(cell, target, opt.gap_target, best[0])
        if path is not None and c < best[0] - 1e-9:
            best = (c, cell, path)
        if math.isfinite(lb):
            heapq.heappush(heap, (max(lb, lb0), b, lo_tau, hi_tau, budget, 2))
    bounds = [final_lb, seed[0] if single_stage else math.inf]
    if heap:
        bounds.append(heap[0][0])
    cost_best, cell_best, path_best = best
    if (cell_best is None or path_best is None) and math.isfinite(seed[0]):
        c1, b1, k1, t1 = seed
        o = opts[b1]
        reps = math.ceil(rate * t1 / (b1 * traffic.utilisation) - 1e-9)
        st = LLMStage(phase, o.dev[k1], int(o.tp[k1]), 0, L, reps, t1, c1)
        return min([*bounds, c1]), c1, [st], b1, t1
    if cell_best is None or path_best is None:
        raise PlacementError(
            f"no {phase} plan meets the SLA (TTFT {traffic.ttft_s * 1e3:g} ms, TBT "
            f"{traffic.tbt_s * 1e3:g} ms) on {', '.join(d.name for d in fleet)} for {cfg.name}"
        )
    stages: list[LLMStage] = []
    o = cell_best.opts
    lat = sum(float(cell_best.hop_pair[a[0], b[0]]) for a, b in itertools.pairwise(path_best))
    for opt_i, i, j in path_best:
        ts = float(cell_best.time_s[opt_i, i, j])
        lat += ts
        reps = math.ceil(rate * ts / (cell_best.batch * traffic.utilisation) - 1e-9)
        stages.append(LLMStage(phase, o.dev[opt_i], int(o.tp[opt_i]), i, j, reps, ts,
                               float(cell_best.cost[opt_i, i, j])))  # fmt: skip
    return min(bounds), cost_best, stages, cell_best.batch, lat


def plan_llm(graphs: LLMGraphs, traffic: LLMTraffic, fleet: Sequence[str | DeviceSpec],
             options: LLMPlannerOptions | None = None, catalog: Catalog | None = None,
             solver: str = "llm-pipeline", single_stage: bool = False) -> LLMPlan:  # fmt: skip
    """The cheapest P::D pipeline plan for ``graphs`` under ``traffic``'s SLA, with its bound.

    Args:
        graphs: prefill and decode operator graphs (``build_llm_graphs``).
        traffic: load and TTFT/TBT bounds.
        fleet: device classes (catalog names or specs); unpriced classes are skipped.
        options: stage rule, penalty, gap target and time budget.
        single_stage: restrict each phase to one stage on one class (the P::D baseline).

    Raises:
        PlacementError: no plan meets the SLA (one line naming the bounds and the fleet).
    """
    opt = options or LLMPlannerOptions()
    start = time.perf_counter()
    cat = catalog or load_catalog()
    devs = _priced(d if isinstance(d, DeviceSpec) else cat[d] for d in fleet)
    if not devs:
        raise PlacementError("LLM planner: no device class in the fleet has a price")
    deadline = start + 0.9 * opt.time_budget_s
    lb_p, c_p, st_p, b_p, ttft = _phase_plan(graphs, traffic, devs, "prefill", opt,
                                            start + 0.3 * opt.time_budget_s, single_stage)  # fmt: skip
    lb_d, c_d, st_d, b_d, tbt = _phase_plan(graphs, traffic, devs, "decode", opt, deadline,
                                           single_stage)  # fmt: skip
    usd = c_p + c_d
    lb = min(lb_p + lb_d, usd)
    ttft += _kv_allowance_s(graphs, devs, b_p)
    notes = (
        f"{len(graphs.prefill.ops) + len(graphs.decode.ops)} ops, {graphs.cfg.layers} identical "
        "layers costed once (symmetry)",
        f"min {opt.min_layers_per_stage} layers per stage; hops priced in TTFT/TBT",
    )
    return LLMPlan(solver, tuple(st_p + st_d), b_p, b_d, ttft, tbt, usd,
                   traffic.decode_tokens_per_s, lb, (usd - lb) / usd,
                   time.perf_counter() - start, notes)  # fmt: skip


def plan_llm_single_class(graphs: LLMGraphs, traffic: LLMTraffic,
                         fleet: Sequence[str | DeviceSpec], catalog: Catalog | None = None
                         ) -> LLMPlan:  # fmt: skip
    """Best single-class P::D: whole model on one TP group of class A (prefill), B (decode)."""
    return plan_llm(graphs, traffic, fleet, LLMPlannerOptions(time_budget_s=60.0), catalog,
                    solver="single-class-pd", single_stage=True)  # fmt: skip


def plan_llm_melange(graphs: LLMGraphs, traffic: LLMTraffic, fleet: Sequence[str | DeviceSpec],
                 catalog: Catalog | None = None, time_limit_s: float = 10.0) -> LLMPlan:  # fmt: skip
    """Mélange-style mix: whole-model replicas (prefill and decode on the same replica), an ILP
    picks replicas per (class, TP) to carry ``rps`` at minimum USD/hour.

    A replica alternates prefill batches of ``bp`` prompts and decode steps of ``b``
    sequences; mean TBT = step·(1 + prefill time / decode time), TTFT = prefill + one step.
    """
    start = time.perf_counter()
    cat = catalog or load_catalog()
    devs = _priced(d if isinstance(d, DeviceSpec) else cat[d] for d in fleet)
    cfg, L = graphs.cfg, graphs.cfg.layers
    kv_tok = cfg.kv_bytes_per_token(graphs.dtype)
    ctx = graphs.isl + graphs.osl
    best: dict[tuple[str, int], tuple[float, float, int, int, float, float]] = {}
    pre = {bp: _options(graphs, "prefill", bp, devs, prune=False) for bp in PREFILL_BATCHES}
    dec = {b: _options(graphs, "decode", b, devs, prune=False) for b in DECODE_BATCHES}
    w = graphs.cfg.weight_bytes(graphs.dtype)
    for bp, po in pre.items():
        tp_all = L * po.layer_s + po.embed_s + po.head_s
        for b, do in dec.items():
            td_all = L * do.layer_s + do.embed_s + do.head_s
            for k in range(len(po.dev)):
                busy = tp_all[k] / bp + graphs.osl * td_all[k] / b
                tbt = td_all[k] * (1 + (tp_all[k] / bp) / (graphs.osl * td_all[k] / b))
                ttft = tp_all[k] + td_all[k]
                mem = w + (b * ctx + bp * graphs.isl) * kv_tok
                if tbt > traffic.tbt_s or ttft > traffic.ttft_s or mem > po.mem_bytes[k]:
                    continue
                cap = traffic.utilisation / busy
                key = (po.dev[k], int(po.tp[k]))
                if key not in best or cap / po.usd_per_hour[k] > best[key][0] / best[key][1]:
                    best[key] = (cap, float(po.usd_per_hour[k]), bp, b, ttft, tbt)
    if not best:
        raise PlacementError(f"no whole-model replica meets the SLA (TTFT {traffic.ttft_s * 1e3:g} "
                             f"ms, TBT {traffic.tbt_s * 1e3:g} ms) for {cfg.name}")  # fmt: skip
    keys = list(best)
    cap = np.array([best[k][0] for k in keys])
    price = np.array([best[k][1] for k in keys])
    res = milp(price, constraints=[LinearConstraint(cap[None, :], traffic.rps, np.inf)],
               integrality=np.ones(len(keys)), bounds=Bounds(0, np.inf),
               options={"time_limit": time_limit_s})  # fmt: skip
    if res.x is None:
        raise PlacementError(f"Mélange ILP found no mix: {res.message}")
    y = np.round(res.x).astype(int)
    usd = float(price @ y)
    bound = float(getattr(res, "mip_dual_bound", usd) or usd)
    mix = {f"{k[0]}x{k[1]}": int(n) for k, n in zip(keys, y, strict=True) if n}
    used = [k for k, n in zip(keys, y, strict=True) if n]
    stages = tuple(LLMStage("both", k[0], k[1], 0, L, int(n), 0.0, float(best[k][1] * n))
                   for k, n in zip(keys, y, strict=True) if n)  # fmt: skip
    return LLMPlan("melange", stages, max(best[k][2] for k in used),
                   max(best[k][3] for k in used), max(best[k][4] for k in used),
                   max(best[k][5] for k in used), usd, traffic.decode_tokens_per_s,
                   min(bound, usd), max(0.0, (usd - bound) / usd),
                   time.perf_counter() - start, mix=mix)  # fmt: skip


def llm_fleet_default() -> tuple[str, ...]:
    """The ≥ 8-class fleet of the LLM-scale benchmark (CPUs included; priced classes only)."""
    return ("cpu", "cpu-epyc", "t4", "a10g", "l4", "a40", "l40s", "a100-80g", "h100", "h200",
            "b200", "mi300x", "gaudi2")  # fmt: skip
