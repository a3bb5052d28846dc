"""IR pass (Graph → Graph): fuse chains of elementwise ops into the op that produces their input.

An elementwise op joins its producer's group when the value between them has exactly one
consumer (the elementwise op), is not a graph output, is the producer's only output, and
both ops sit on the same device and stage. The fused op keeps the producer's name, kind and
op class, sums FLOPs and parameter bytes, drops the intermediate values' bytes, and records
``fused`` (the absorbed kinds, in order) and ``members`` (the original op names, which are
the Relax bindings codegen cuts stages from). It takes the place of the group's last op,
which keeps the op order topological.
"""

from __future__ import annotations

from dataclasses import replace

from terrazzo.ir.graph import Graph, Op, make_attrs

# Op classes that can absorb elementwise consumers: tensor operators, not agent-level nodes.
_PRODUCER_CLASSES = frozenset(
    {"matmul", "conv", "elementwise", "reduction", "softmax", "norm", "data_movement", "other"}
)


def fuse_elementwise(graph: Graph) -> Graph:
    """Fuse elementwise chains into their producers.

    Args:
        graph: A verified graph (model or agent level; agent-level nodes never fuse).

    Returns:
        The fused, verified graph (``relax_mod`` is kept); ``graph`` itself if nothing fuses.
    """
    graph.verify()
    producer = graph.producers()
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    by_name = {o.name: o for o in graph.ops}
    group_of: dict[str, str] = {}  # op name → name of its group's root
    members: dict[str, list[Op]] = {}  # root → ops of the group, in order
    for op in graph.ops:
        root = _absorbing_root(op, by_name, producer, consumers, outputs, group_of, members)
        if root is None:
            group_of[op.name] = op.name
            members[op.name] = [op]
        else:
            group_of[op.name] = root
            members[root].append(op)
    if all(len(m) == 1 for m in members.values()):
        return graph
    last_of = {m[-1].name: root for root, m in members.items()}
    ops: list[Op] = []
    dropped: set[str] = set()
    for op in graph.ops:
        root = last_of.get(op.name)
        if root is None:
            continue
        group = members[root]
        if len(group) == 1:
            ops.append(op)
            continue
        fused, internal = _fuse(group, graph)
        ops.append(fused)
        dropped |= internal
    values = {k: t for k, t in graph.values.items() if k not in dropped}
    return graph.with_ops(ops, values=values).verify()


def _absorbing_root(
    op: Op,
    by_name: dict[str, Op],
    producer: dict[str, str],
    consumers: dict[str, list[str]],
    outputs: set[str],
    group_of: dict[str, str],
    members: dict[str, list[Op]],
) -> str | None:
    """The root of the group ``op`` joins, or None if it starts its own group."""
    if op.op_class != "elementwise" or len(op.outputs) != 1:
        return None
    for v in op.inputs:
        src = producer.get(v)
        if src is None or v in outputs or set(consumers.get(v, ())) != {op.name}:
            continue
        root = group_of[src]
        tail = members[root][-1]
        first = by_name[root]
        if tail.name != src or tail.outputs != (v,) or first.op_class not in _PRODUCER_CLASSES:
            continue
        if (tail.device, tail.stage) != (op.device, op.stage):
            continue
        return root
    return None


def _fuse(group: list[Op], graph: Graph) -> tuple[Op, set[str]]:
    """One op standing for ``group``, and the intermediate values it hides."""
    internal = {v for o in group[:-1] for v in o.outputs}
    inputs: list[str] = []
    for o in group:
        for v in o.inputs:
            if v not in internal and v not in inputs:
                inputs.append(v)
    hidden_read = sum(graph.values[v].nbytes for o in group for v in o.inputs if v in internal)
    hidden_written = sum(graph.values[v].nbytes for v in internal)
    head = group[0]
    attrs = head.attr_dict
    fused_kinds = list(attrs.get("fused", ()))  # type: ignore[arg-type]
    names = list(attrs.get("members", (head.name,)))  # type: ignore[arg-type]
    for o in group[1:]:
        fused_kinds += [o.kind, *o.attr_dict.get("fused", ())]  # type: ignore[misc]
        names += list(o.attr_dict.get("members", (o.name,)))  # type: ignore[arg-type]
    attrs["fused"] = tuple(fused_kinds)
    attrs["members"] = tuple(names)
    fused = replace(
        head,
        inputs=tuple(inputs),
        outputs=group[-1].outputs,
        attrs=make_attrs(attrs),
        flops=sum(o.flops for o in group),
        bytes_read=max(0, sum(o.bytes_read for o in group) - hidden_read),
        bytes_written=max(0, sum(o.bytes_written for o in group) - hidden_written),
        param_bytes=sum(o.param_bytes for o in group),
    )
    return fused, internal
