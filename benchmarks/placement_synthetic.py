"""Synthetic placement problems (seeded) shared by the placement benchmarks.

Model-like DAGs: a main chain with residual skips and occasional parallel branches; device
classes with log-spread speeds, prices growing sub-linearly with speed, and per-op
affinities; transfers as base latency + bytes / bandwidth. The SLA sits between the fastest
and the cheapest single-class latency so that it binds.
"""

from __future__ import annotations

import numpy as np

from terrazzo.placement import SLA, Problem, make_problem


def synthetic_problem(n_ops: int, n_classes: int, seed: int = 0, rps: float = 200.0) -> Problem:
    rng = np.random.default_rng(seed)
    names = [f"op{i}" for i in range(n_ops)]
    edges: list[tuple[str, str]] = []
    for i in range(1, n_ops):
        edges.append(
            (names[i - 1], names[i]) if rng.random() > 0.1 else (names[max(0, i - 2)], names[i])
        )
        if i >= 3 and rng.random() < 0.15:
            edges.append((names[i - int(rng.integers(2, min(i, 8) + 1))], names[i]))
    edges = sorted(set(edges))
    devices = [f"dev{k}" for k in range(n_classes)]
    speed = np.exp(rng.uniform(0, np.log(200.0), n_classes))
    speed[0] = 1.0  # a cpu-like class
    price = 0.1 * speed**0.7 * rng.uniform(0.7, 1.3, n_classes)
    base_s = rng.lognormal(np.log(2e-3), 1.0, n_ops)
    affinity = rng.lognormal(0.0, 0.6, (n_ops, n_classes))
    lat = base_s[:, None] / speed[None, :] * affinity + 5e-6
    latency = {t: {d: float(lat[i, k]) for k, d in enumerate(devices)} for i, t in enumerate(names)}
    ebytes = {e: float(rng.lognormal(np.log(2e5), 1.5)) for e in edges}
    xs = {(a, b): 20e-6 for a in devices for b in devices if a != b}
    spb = {(a, b): 1.0 / 16e9 for a in devices for b in devices if a != b}
    probe = make_problem(names, devices, latency, edges=edges, sla=SLA(1e9), rps=rps,
                         usd_per_hour=dict(zip(devices, price, strict=True)), edge_bytes=ebytes,
                         transfer_s=xs, transfer_s_per_byte=spb)  # fmt: skip
    homo = []
    for k in range(n_classes):
        ev = probe.evaluate(np.full(n_ops, k, dtype=np.int64))
        homo.append((ev.usd_per_hour, ev.latency_s))
    fastest = min(h[1] for h in homo)
    cheapest_lat = min(homo)[1]
    sla = fastest + 0.5 * (cheapest_lat - fastest) if cheapest_lat > fastest else 1.2 * fastest
    return make_problem(names, devices, latency, edges=edges, sla=SLA(sla), rps=rps,
                        usd_per_hour=dict(zip(devices, price, strict=True)), edge_bytes=ebytes,
                        transfer_s=xs, transfer_s_per_byte=spb,
                        power_w=dict(zip(devices, 50 + 3 * speed, strict=True)),
                        name=f"synthetic-{n_ops}x{n_classes}-s{seed}")  # fmt: skip


def agent_problem(rps: float = 20.0) -> Problem:
    """An agent-like request: retrieve ∥ tool calls → LLM prefill → decode → tool → summarise.

    Latencies per class are illustrative (ms) for cpu, t4, l4, a100, h100.
    """
    ms = 1e-3
    dev = ["cpu", "t4", "l4", "a100", "h100"]
    price = {"cpu": 0.34, "t4": 0.53, "l4": 0.80, "a100": 3.67, "h100": 6.88}
    inf = float("inf")
    table = {
        "parse": [2, 3, 3, 3, 3],
        "embed": [40, 6, 4, 2, 1.5],
        "retrieve": [15, inf, inf, inf, inf],
        "web_tool": [120, inf, inf, inf, inf],
        "rerank": [90, 12, 8, 3, 2],
        "prefill": [inf, 900, 420, 120, 60],
        "decode": [inf, 2600, 1500, 700, 420],
        "code_tool": [60, inf, inf, inf, inf],
        "summarise_prefill": [inf, 400, 190, 55, 28],
        "summarise_decode": [inf, 1300, 750, 350, 210],
        "format": [3, 4, 4, 4, 4],
    }
    edges = [("parse", "embed"), ("embed", "retrieve"), ("parse", "web_tool"), ("retrieve", "rerank"),
             ("web_tool", "rerank"), ("rerank", "prefill"), ("prefill", "decode"), ("decode", "code_tool"),
             ("code_tool", "summarise_prefill"), ("summarise_prefill", "summarise_decode"),
             ("summarise_decode", "format")]  # fmt: skip
    latency = {
        t: {d: v * ms for d, v in zip(dev, row, strict=True) if v != inf}
        for t, row in table.items()
    }
    xs = {(a, b): 0.5 * ms for a in dev for b in dev if a != b}
    return make_problem(list(table), dev, latency, edges=edges, sla=SLA(3.0), rps=rps,
                        usd_per_hour=price, transfer_s=xs, name="agent")  # fmt: skip
