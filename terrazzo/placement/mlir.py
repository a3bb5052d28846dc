"""Text form of a placed graph: tz-dialect MLIR with ``device`` and ``stage`` on every op.

Uses ``terrazzo.ir.dialect.print_graph`` when the dialect is available; until then a
generic-form MLIR module (accepted by the stock parser with unregistered dialects allowed).
"""

from __future__ import annotations

import json

from terrazzo.ir import Graph, TensorType
from terrazzo.placement.plan import Plan


def placed_graph(graph: Graph, plan: Plan) -> Graph:
    """``graph`` with every op's device class and (primary) stage index set from ``plan``."""
    stage = plan.stage_of()
    return graph.with_placement(
        {o.name: (plan.assignment[o.name], stage[o.name]) for o in graph.ops}
    )


def plan_to_mlir(graph: Graph, plan: Plan) -> str:
    """tz MLIR of the placed graph, with the plan's summary as module attributes."""
    g = placed_graph(graph, plan)
    try:
        from terrazzo.ir.dialect import print_graph
    except ImportError:
        return _generic_mlir(g, plan)
    return print_graph(g)


def _ty(t: TensorType) -> str:
    elt = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64", "int64": "i64",
           "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "ui8", "bool": "i1",
           "float8": "f8E4M3FN"}[t.dtype]  # fmt: skip
    dims = "".join(f"{d}x" if d >= 0 else "?x" for d in t.shape)
    return f"tensor<{dims}{elt}>"


def _s(x: str) -> str:
    return json.dumps(x)


def _generic_mlir(g: Graph, plan: Plan) -> str:
    ids: dict[str, str] = {}
    lines = []
    args = []
    for k, v in enumerate(g.inputs):
        ids[v] = f"%arg{k}"
        args.append(f"%arg{k}: {_ty(g.values[v])}")
    attrs = (
        f"tz.solver = {_s(plan.solver)}, tz.gap = {plan.gap:.6g} : f64, "
        f"tz.latency_ms = {plan.latency_s * 1e3:.6g} : f64, tz.usd_per_hour = {plan.usd_per_hour:.6g} : f64, "
        f"tz.rps = {plan.rps:.6g} : f64, tz.sla_ms = {plan.sla.latency_s * 1e3:.6g} : f64"
    )
    lines.append('"tz.graph"() ({')
    lines.append(f"^bb0({', '.join(args)}):")
    n = 0
    for o in g.ops:
        outs = []
        for v in o.outputs:
            ids[v] = f"%{n}"
            outs.append(ids[v])
            n += 1
        ins = ", ".join(ids[v] for v in o.inputs)
        in_t = ", ".join(_ty(g.values[v]) for v in o.inputs)
        out_t = ", ".join(_ty(g.values[v]) for v in o.outputs)
        lhs = f"{', '.join(outs)} = " if outs else ""
        lines.append(
            f'  {lhs}"tz.op"({ins}) {{device = {_s(o.device or "")}, kind = {_s(o.kind)}, '
            f"name = {_s(o.name)}, op_class = {_s(o.op_class)}, stage = {o.stage} : i64}} : "
            f"({in_t}) -> ({out_t})"
        )
    ret = ", ".join(ids[v] for v in g.outputs)
    ret_t = ", ".join(_ty(g.values[v]) for v in g.outputs)
    lines.append(f'  "tz.return"({ret}) : ({ret_t}) -> ()')
    lines.append(f"}}) {{sym_name = {_s(g.name)}, level = {_s(g.level)}, {attrs}}} : () -> ()")
    return "\n".join(lines) + "\n"
