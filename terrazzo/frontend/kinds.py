"""Agent node kinds as data: one registry entry per kind (``model``, ``llm``, ``tool``, ...) holding its hooks.

The first stop of an agent node on its way through the pipeline: the frontend looks the
node's ``type`` up here to validate and lower it, and every later stage looks the op's kind
up here for its own hook (tinygrad/JAX style rule tables instead of ``if kind == ...`` chains).

A :class:`NodeKind` carries the frontend's parts itself (spec schema, lowering, decomposition,
the plan.json entry schema, CPU-only flag, LLM phases). Hooks that need later layers are slots
that those layers fill with :func:`register_hooks` when they are imported — ``report`` the
placement cost, ``pipeline`` the build (stages and plan.json entry), ``runtime`` the serving
stages — so the import contracts hold. A kind defined outside terrazzo (a plugin or a test)
sits above every layer and registers everything at once::

    register_kind(NodeKind("echo", "echo.call", EchoNode, EchoEntry, lower=..., cost=...,
                           build=..., runner=...))

Built-in kinds live in ``terrazzo.frontend.agent_kinds`` (frontend parts),
``terrazzo.report.agent_plan`` (cost), ``terrazzo.pipeline.agent`` (build) and
``terrazzo.runtime.agent_plan`` (runner). docs/agents.md describes each hook's signature.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terrazzo.ir import TensorType

# Slots a later layer may fill for a kind registered earlier.
HOOK_SLOTS = ("cost", "build", "runner")


@dataclass(frozen=True, slots=True)
class LowerContext:
    """What a kind's ``lower`` hook may read: the node's input values and where the spec lives."""

    inputs: tuple[str, ...]
    values: Mapping[str, TensorType]
    base_dir: Path
    where: str


@dataclass(frozen=True, slots=True)
class Lowered:
    """A lowered node: the attributes of its op, its output type and its cost analyses."""

    attrs: dict[str, Any]
    output: TensorType
    flops: int = 0
    param_bytes: int = 0


@dataclass(slots=True)
class NodeKind:
    """One agent node kind and its hooks.

    Attributes:
        type: the spec's ``type:`` value (``tool``).
        op_kind: the agent-level IR op kind it lowers to (``tool.invoke``); printed as the tz
            dialect op of that name, or as the generic op with a ``kind`` attribute.
        spec: pydantic model of the spec node (subclass of ``agent_spec.NodeSpecBase`` with
            ``type: Literal[...]``).
        entry: pydantic model of its ``plan.json["agent"]["nodes"]`` entry (subclass of
            ``agent_schema.AgentNodeEntry``) — the compiler→runtime contract.
        lower: ``(spec node, LowerContext) -> Lowered``.
        op_class: cost-model class of the op (``terrazzo.ir.OP_CLASSES``).
        needs_input: whether the node must have an incoming edge.
        cpu_only: placement keeps it on CPU device classes.
        phases: the sub-tasks placement sees (``("prefill", "decode")`` for an LLM: kept apart
            by the P::D split, test-size models costed as ``cost_preset``).
        sub_kinds: op kinds its decomposition produces (they find this entry too).
        decompose: ``(op, graph, values, models: bool) -> (ops, relax module or None)``;
            None keeps the op whole.
        cost: ``(op, device spec, CostModel) -> (latency_s of one run, tensor-parallel degree)``
            (``math.inf`` where it cannot run); None: the cost model's roofline of the op.
        build: ``(op, BuildContext) -> dict`` of the entry's kind-specific fields, building
            any stages through the context.
        runner: ``(builder, entry, NodeStep) -> None``: adds the served stages.
    """

    type: str
    op_kind: str
    spec: builtins.type[Any]
    entry: builtins.type[Any]
    lower: Callable[[Any, LowerContext], Lowered]
    op_class: str = "other"
    needs_input: bool = True
    cpu_only: bool = False
    phases: tuple[str, ...] = ()
    sub_kinds: tuple[str, ...] = ()
    decompose: Callable[..., tuple[list[Any], Any]] | None = None
    cost: Callable[[Any, Any, Any], tuple[float, int]] | None = None
    build: Callable[[Any, Any], dict[str, Any]] | None = None
    runner: Callable[[Any, Any, Any], None] | None = None


_BY_TYPE: dict[str, NodeKind] = {}
_BY_OP: dict[str, NodeKind] = {}
_generation = 0
_builtins_loaded = False


def _ensure_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        import terrazzo.frontend.agent_kinds  # noqa: F401  (registers the built-in kinds)


def register_kind(kind: NodeKind, *, replace: bool = False) -> NodeKind:
    """Add a node kind to the registry.

    Args:
        kind: the kind with its hooks.
        replace: allow replacing a kind of the same ``type`` (tests re-registering).

    Returns:
        The kind.

    Raises:
        ValueError: the ``type`` or an op kind is taken, or ``type`` is ``output``.
    """
    global _generation
    _ensure_builtins()
    if kind.type == "output":
        raise ValueError("'output' is structural (it names a graph output), not a node kind")
    old = _BY_TYPE.get(kind.type)
    if old is not None and not replace:
        raise ValueError(f"node kind {kind.type!r} is already registered")
    if old is not None:
        unregister_kind(kind.type)
    for op_kind in (kind.op_kind, *kind.sub_kinds):
        if op_kind in _BY_OP:
            raise ValueError(f"op kind {op_kind!r} already belongs to {_BY_OP[op_kind].type!r}")
    _BY_TYPE[kind.type] = kind
    for op_kind in (kind.op_kind, *kind.sub_kinds):
        _BY_OP[op_kind] = kind
    _generation += 1
    return kind


def unregister_kind(type_: str) -> None:
    """Remove a kind (tests that register a temporary one)."""
    global _generation
    kind = _BY_TYPE.pop(type_, None)
    if kind is not None:
        for op_kind in (kind.op_kind, *kind.sub_kinds):
            _BY_OP.pop(op_kind, None)
        _generation += 1


def register_hooks(name: str, **hooks: Callable[..., Any]) -> None:
    """Fill a later layer's hook slots (``cost``, ``build``, ``runner``) of a registered kind.

    Args:
        name: the kind's ``type`` or op kind.
        **hooks: slot name → function.

    Raises:
        ValueError: unknown kind or slot.
    """
    kind = node_kind(name)
    for slot, fn in hooks.items():
        if slot not in HOOK_SLOTS:
            raise ValueError(f"unknown hook slot {slot!r}; expected one of {HOOK_SLOTS}")
        setattr(kind, slot, fn)


def node_kind(name: str) -> NodeKind:
    """The kind registered under a spec ``type`` or an op kind (incl. decomposed sub-kinds).

    Raises:
        KeyError: no such kind (the message lists the known ones).
    """
    found = find_kind(name)
    if found is None:
        raise KeyError(f"unknown agent node kind {name!r}; known: {', '.join(node_types())}")
    return found


def find_kind(name: str) -> NodeKind | None:
    """Like :func:`node_kind`, None when unknown (model-level operators of a decomposed graph)."""
    _ensure_builtins()
    return _BY_TYPE.get(name) or _BY_OP.get(name)


def node_kinds() -> tuple[NodeKind, ...]:
    """Every registered kind, in registration order (built-ins first)."""
    _ensure_builtins()
    return tuple(_BY_TYPE.values())


def node_types() -> tuple[str, ...]:
    """Every spec ``type`` a node may have: the registered kinds, then ``output``."""
    return (*(k.type for k in node_kinds()), "output")


def registry_generation() -> int:
    """Changes whenever the registry does (caches of derived schemas key on it)."""
    _ensure_builtins()
    return _generation


def missing_hooks(kind: NodeKind) -> list[str]:
    """Hook slots of ``kind`` that no layer has filled (``cost`` is optional)."""
    return [slot for slot in ("build", "runner") if getattr(kind, slot) is None]


__all__ = [
    "HOOK_SLOTS",
    "Lowered",
    "LowerContext",
    "NodeKind",
    "find_kind",
    "missing_hooks",
    "node_kind",
    "node_kinds",
    "node_types",
    "register_hooks",
    "register_kind",
    "registry_generation",
    "unregister_kind",
]
