"""The tz MLIR dialects (IR → canonical text): op definitions as data, IRDL loading, print/parse.

Terrazzo's text form is MLIR in a small family of IRDL-defined dialects, loaded at run time
into an ``torch_mlir.ir`` context so the stock MLIR parser and verifier check every file:

- ``tz``: model graphs. ``tz.graph`` holds one block whose arguments are the graph inputs;
  each granular operator is one op carrying its analysis as attributes (``name``,
  ``op_class``, ``flops``, ``bytes_read``, ``bytes_written``, ``param_bytes``; optional
  ``attrs`` dictionary, placement ``device``/``stage``, and ``results`` when the op's
  output value names are not just its own name); ``tz.output`` marks one graph output.
- ``agent``, ``input``, ``llm``, ``tool``, ``memory``, ``retrieve``, ``model``: the agent
  level of the paper's Fig. 7 (``agent.graph``, ``input.query``, ``llm.call``,
  ``tool.invoke``, ``memory.load``/``memory.store``, and the decomposed ``llm.prefill``,
  ``llm.kv_transfer``, ``llm.decode``), plus ``agent.output``.

Choice of ops: common operator kinds get a named op (``matmul`` → ``tz.matmul``,
``nn.conv2d`` → ``tz.conv2d``, ...) so files read naturally and the verifier checks their
shape; every other kind prints as the generic ``tz.op`` with a required ``kind``
attribute. IRDL binds one type per operand *definition*, so a variadic operand list must be
homogeneous; an op whose operand or result types do not fit its named op's signature falls
back to ``tz.op`` and, when those types are mixed, to ``tz.op_mixed`` (runs of equal types as
segments, ``operandSegmentSizes``/``resultSegmentSizes``). The printer decides this from
the op alone, so printing is a deterministic function of the graph.

Values are builtin ``tensor<...>`` types (``?`` for dynamic dims, agent level only). MLIR
drops SSA names on parse, so names travel in attributes (``name``, ``results``, the
graph's ``inputs``); SSA names are sanitised copies for the reader.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from terrazzo.ir.graph import OP_CLASSES

if TYPE_CHECKING:
    from terrazzo.ir.graph import Graph

# Variadicity of an operand or result definition (IRDL keywords).
SINGLE, OPTIONAL, VARIADIC = "single", "optional", "variadic"

# Attributes every compute op must carry (the analysis the cost model reads).
ANALYSIS_ATTRS = ("flops", "bytes_read", "bytes_written", "param_bytes")
# Attributes an op may carry besides the required ones, in print order.
OPTIONAL_OP_ATTRS = ("attrs", "device", "stage", "results")

# Segment counts of ``tz.op_mixed``: how many runs of equal types it can hold.
MIXED_OPERAND_GROUPS = 16
MIXED_RESULT_GROUPS = 8

GENERIC_OP = "tz.op"
MIXED_OP = "tz.op_mixed"
GRAPH_OPS = {"model": "tz.graph", "agent": "agent.graph"}
OUTPUT_OPS = {"model": "tz.output", "agent": "agent.output"}


@dataclass(frozen=True, slots=True)
class OpSpec:
    """One compute op of the dialects: its MLIR name, the Terrazzo kind it prints, its signature.

    ``kind`` is None for the generic ops (which carry ``kind`` as an attribute).
    ``operands``/``results`` are ``(name, variadicity)`` pairs.
    """

    op_name: str
    kind: str | None
    operands: tuple[tuple[str, str], ...]
    results: tuple[tuple[str, str], ...]
    summary: str


_FIRST_REST = (("first", SINGLE), ("rest", VARIADIC))
_ONE = (("out", SINGLE),)
_ARGS = (("args", VARIADIC),)

# Named model-level ops: Terrazzo kind (the Relax operator name) → op. Operands: the first
# input plus any others (weights are Relax constants, so counts vary); all but the first share
# one type. One result.
_MODEL_KINDS = {
    "matmul": "tz.matmul",
    "nn.conv1d": "tz.conv1d",
    "nn.conv2d": "tz.conv2d",
    "nn.dense": "tz.dense",
    "add": "tz.add",
    "subtract": "tz.subtract",
    "multiply": "tz.multiply",
    "divide": "tz.divide",
    "power": "tz.power",
    "maximum": "tz.maximum",
    "minimum": "tz.minimum",
    "nn.relu": "tz.relu",
    "nn.gelu": "tz.gelu",
    "nn.gelu_tanh": "tz.gelu_tanh",
    "nn.silu": "tz.silu",
    "sigmoid": "tz.sigmoid",
    "tanh": "tz.tanh",
    "exp": "tz.exp",
    "sqrt": "tz.sqrt",
    "rsqrt": "tz.rsqrt",
    "nn.softmax": "tz.softmax",
    "nn.layer_norm": "tz.layer_norm",
    "nn.rms_norm": "tz.rms_norm",
    "nn.batch_norm": "tz.batch_norm",
    "nn.max_pool2d": "tz.max_pool2d",
    "nn.avg_pool2d": "tz.avg_pool2d",
    "nn.adaptive_avg_pool2d": "tz.adaptive_avg_pool2d",
    "mean": "tz.mean",
    "sum": "tz.sum",
    "reshape": "tz.reshape",
    "permute_dims": "tz.permute_dims",
    "concat": "tz.concat",
    "take": "tz.take",
    "strided_slice": "tz.strided_slice",
    "astype": "tz.astype",
}

OP_SPECS: tuple[OpSpec, ...] = (
    *(
        OpSpec(op, kind, _FIRST_REST, _ONE, f"the {kind} operator")
        for kind, op in _MODEL_KINDS.items()
    ),
    # Agent level (paper Fig. 7) and its decomposed LLM phases.
    OpSpec("input.query", "input.query", _ARGS, _ONE, "a user query entering the agent"),
    OpSpec("llm.call", "llm.call", _ARGS, _ONE, "one LLM call (prefill + decode)"),
    OpSpec("llm.prefill", "llm.prefill", _ARGS, _ONE, "LLM prefill: prompt → KV cache"),
    OpSpec(
        "llm.kv_transfer",
        "llm.kv_transfer",
        (("kv", SINGLE),),
        _ONE,
        "moves a KV cache between devices",
    ),
    OpSpec("llm.decode", "llm.decode", _ARGS, _ONE, "LLM decode: KV cache → tokens"),
    OpSpec("tool.invoke", "tool.invoke", _ARGS, _ONE, "a tool call"),
    OpSpec("memory.load", "memory.load", _ARGS, _ONE, "reads agent memory"),
    OpSpec("memory.store", "memory.store", _ARGS, (("out", OPTIONAL),), "writes agent memory"),
    OpSpec("retrieve.topk", "retrieve.topk", _ARGS, _ONE, "top-k retrieval"),
    OpSpec("model.call", "model.call", _ARGS, _ONE, "a whole model as one agent node"),
    # Agent programs (terrazzo.frontend.agent_flow): control flow as gated data flow.
    OpSpec(
        "agent.branch",
        "agent.branch",
        (("value", SINGLE),),
        _ONE,
        "picks one arm from a value (ops downstream of an arm carry its gate)",
    ),
    OpSpec(
        "agent.join",
        "agent.join",
        _ARGS,
        _ONE,
        "fan-in: the value of the arm that ran, or every input merged",
    ),
    OpSpec(
        "agent.map",
        "agent.map",
        (("items", SINGLE),),
        _ONE,
        "fan-out over a list's elements, fan-in of the results",
    ),
    # Generic fallbacks: any kind, homogeneous or mixed operand/result types.
    OpSpec(GENERIC_OP, None, _ARGS, (("outs", VARIADIC),), "any operator (kind attribute)"),
    OpSpec(
        MIXED_OP,
        None,
        tuple((f"g{i}", VARIADIC) for i in range(MIXED_OPERAND_GROUPS)),
        tuple((f"r{i}", VARIADIC) for i in range(MIXED_RESULT_GROUPS)),
        "any operator with mixed operand or result types",
    ),
)

SPEC_BY_OP = {s.op_name: s for s in OP_SPECS}
SPEC_BY_KIND = {s.kind: s for s in OP_SPECS if s.kind is not None}


def irdl_text() -> str:
    """The IRDL module that defines every dialect above (MLIR text, deterministic)."""
    by_dialect: dict[str, list[str]] = {}
    for spec in OP_SPECS:
        dialect, _, mnemonic = spec.op_name.partition(".")
        by_dialect.setdefault(dialect, []).append(_irdl_compute_op(mnemonic, spec))
    for level in ("model", "agent"):
        dialect, _, graph = GRAPH_OPS[level].partition(".")
        by_dialect.setdefault(dialect, []).append(
            f"  irdl.operation @{graph} {{\n"
            '    %name = irdl.base "#builtin.string"\n'
            '    %inputs = irdl.base "#builtin.array"\n'
            '    irdl.attributes {"sym_name" = %name, "inputs" = %inputs}\n'
            "    %body = irdl.region\n"
            "    irdl.regions(body: %body)\n"
            "  }"
        )
        out = OUTPUT_OPS[level].partition(".")[2]
        by_dialect[dialect].append(
            f"  irdl.operation @{out} {{\n    %t = irdl.any\n    irdl.operands(value: %t)\n  }}"
        )
    by_dialect["tz"].insert(0, "  irdl.type @text {\n  }")  # agent text values: !tz.text
    parts = [
        f"irdl.dialect @{d} {{\n" + "\n".join(ops) + "\n}" for d, ops in sorted(by_dialect.items())
    ]
    return "\n".join(parts) + "\n"


def _irdl_compute_op(mnemonic: str, spec: OpSpec) -> str:
    classes = ", ".join(f"%c_{c}" for c in sorted(OP_CLASSES))
    lines = [f"  irdl.operation @{mnemonic} {{", '    %name = irdl.base "#builtin.string"']
    lines += [f'    %c_{c} = irdl.is "{c}"' for c in sorted(OP_CLASSES)]
    lines.append(f"    %op_class = irdl.any_of({classes})")
    lines += [f'    %{a} = irdl.base "#builtin.integer"' for a in ANALYSIS_ATTRS]
    required = ["name", "op_class", *ANALYSIS_ATTRS]
    if spec.kind is None:
        lines.append('    %kind = irdl.base "#builtin.string"')
        required.insert(1, "kind")
    lines.append("    irdl.attributes {" + ", ".join(f'"{a}" = %{a}' for a in required) + "}")
    for what, defs in (("operands", spec.operands), ("results", spec.results)):
        if not defs:
            continue
        for name, _ in defs:
            lines.append(f"    %{what[0]}_{name} = irdl.any")
        sig = ", ".join(
            f"{name}: {'' if var == SINGLE else var + ' '}%{what[0]}_{name}" for name, var in defs
        )
        lines.append(f"    irdl.{what}({sig})")
    lines.append("  }")
    return "\n".join(lines)


_LOCK = threading.Lock()
_CONTEXT: Any = None


def mlir_context() -> Any:
    """A ``torch_mlir.ir.Context`` with every Terrazzo dialect loaded (created once, cached).

    Graph ops are marked ``NoTerminator`` (their blocks end with ordinary ops; graph outputs
    are ``tz.output``/``agent.output`` ops), which IRDL itself cannot express.
    """
    global _CONTEXT
    with _LOCK:
        if _CONTEXT is None:
            from torch_mlir import ir
            from torch_mlir.dialects import irdl

            ctx = ir.Context()
            ctx.allow_unregistered_dialects = False
            with ctx, ir.Location.unknown():
                irdl.load_dialects(ir.Module.parse(irdl_text()))
                for op_name in GRAPH_OPS.values():
                    ir.NoTerminatorTrait.attach(op_name)
            _CONTEXT = ctx
        return _CONTEXT


# Verifier rules of agent programs (terrazzo.frontend.agent_flow), beyond what IRDL checks:
# op kind → (fewest inputs, most inputs or None, required attributes).
AGENT_OP_RULES: dict[str, tuple[int, int | None, tuple[str, ...]]] = {
    "agent.branch": (1, 1, ("arms", "default")),
    "agent.join": (1, None, ("mode",)),
    "agent.map": (1, 1, ("function",)),
}
JOIN_MODES = ("first", "all")


def verify_agent_program(graph: Graph) -> None:
    """Check an agent graph's control flow: branch/join/map arity and attributes, gates, bounded loops.

    Every op's ``gates`` must name an ``agent.branch`` op defined before it and one of that
    branch's arms; every loop needs ``max_iterations >= 1`` and ops at both ends. Called by
    ``Graph.verify`` for agent graphs, so hand-written MLIR is held to the same rules as specs.

    Raises:
        VerifyError: one line naming the op and the attribute.
    """
    from terrazzo.errors import VerifyError

    where = f"graph {graph.name!r}"
    arms: dict[str, set[str]] = {}
    names = {o.name for o in graph.ops}
    for o in graph.ops:
        a = o.attr_dict
        rule = AGENT_OP_RULES.get(o.kind)
        if rule is not None:
            lo, hi, need = rule
            if len(o.inputs) < lo or (hi is not None and len(o.inputs) > hi):
                want = f"{lo}" if hi == lo else f"at least {lo}"
                raise VerifyError(
                    f"{where}: op {o.name!r} ({o.kind}) takes {want} input(s), found {len(o.inputs)}"
                )
            for key in need:
                if key not in a:
                    raise VerifyError(f"{where}: op {o.name!r} ({o.kind}) lacks attribute {key!r}")
            if o.kind == "agent.join" and a["mode"] not in JOIN_MODES:
                raise VerifyError(
                    f"{where}: op {o.name!r} attribute 'mode': {a['mode']!r} is not one of {JOIN_MODES}"
                )
            if o.kind == "agent.branch":
                arm_attr = a["arms"] if isinstance(a["arms"], tuple) else ()
                arms[o.name] = {str(x[0]) for x in arm_attr} | {str(a["default"])}
        for gate in a.get("gates", ()) or ():  # type: ignore[union-attr]
            b, arm = (str(x) for x in gate)
            if b not in arms:
                raise VerifyError(
                    f"{where}: op {o.name!r} attribute 'gates': {b!r} is not an agent.branch "
                    "defined before it"
                )
            if arm not in arms[b]:
                raise VerifyError(
                    f"{where}: op {o.name!r} attribute 'gates': branch {b!r} has no arm {arm!r}"
                )
    for lp in dict(graph.attrs).get("loops", ()) or ():  # type: ignore[union-attr]
        name, src, dst, bound = str(lp[0]), str(lp[1]), str(lp[2]), int(lp[3])
        if bound < 1:
            raise VerifyError(
                f"{where}: loop {name!r} attribute 'loops': max_iterations {bound} < 1"
            )
        for end in (src, dst):
            if end not in names and not any(n.startswith(f"{end}.") for n in names):
                raise VerifyError(f"{where}: loop {name!r} attribute 'loops': no op {end!r}")


def print_graph(graph: Graph) -> str:
    """Print ``graph`` as tz-dialect MLIR (generic op form; deterministic, verified first).

    Args:
        graph: The graph to print; ``graph.verify()`` is called first.

    Returns:
        MLIR text that the stock MLIR parser and verifier accept (with the dialects loaded).

    Raises:
        VerifyError: The graph is invalid, or holds something the text form cannot carry
            (an attribute value of an unsupported type, an integer outside int64).
    """
    from terrazzo.ir.printer import print_graph as _print

    return _print(graph)


def parse_graph(text: str) -> Graph:
    """Parse tz-dialect MLIR through the stock MLIR parser and verifier into a ``Graph``.

    Args:
        text: MLIR text holding one ``tz.graph`` or ``agent.graph`` op.

    Returns:
        The verified graph (``relax_mod`` is None).

    Raises:
        VerifyError: The text is not valid MLIR, breaks a dialect constraint (with the
            MLIR diagnostic's line and column), or does not describe a valid graph.
    """
    from terrazzo.ir.parser import parse_graph as _parse

    return _parse(text)


__all__ = [
    "AGENT_OP_RULES",
    "GENERIC_OP",
    "GRAPH_OPS",
    "MIXED_OP",
    "OP_SPECS",
    "OUTPUT_OPS",
    "OpSpec",
    "irdl_text",
    "mlir_context",
    "parse_graph",
    "print_graph",
    "verify_agent_program",
]
