"""Agent programs: control flow in the spec — ``branch``, ``join``, ``map`` and loop conditions — and the value tests they use.

An agent spec is a program, not a pipeline: a ``branch`` picks one of its arms from a value
(an LLM's parsed answer, a tool's result, a classifier's label), a ``join`` takes the value of
the arm that ran (``mode: first``) or merges parallel branches (``mode: all``), a ``map``
fans a function out over the elements of a list and fans the results back in, and a loop's
``while:`` is a real exit condition on a value of the previous iteration (bounded by
``max_iterations``).

Control flow stays data flow in the IR (so placement, costing and the served stage DAG keep
working on a DAG): an edge from a branch's arm, ``route.search -> lookup``, *gates* the node
and everything downstream of it until a join; every gated op carries ``gates`` — the
``(branch, arm)`` pairs under which it runs — and the branch's ``probabilities`` (for the
expected cost). :func:`gate_analysis` computes the gates and refuses programs that can never
run (a node that reads two arms of one branch without a join). The runtime skips a gated
stage when its arm was not taken and runs every ready stage concurrently.

Values: tensors, and text. Text is ``dtype: string`` in the spec and IR (``tensor<?x!tz.text>``
in MLIR), a 1-D numpy object array of UTF-8 ``bytes`` at run time (KServe ``BYTES``). The
byte-level LLMs read text as its UTF-8 bytes; :func:`to_text` reads any value as text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from terrazzo.errors import FrontendError
from terrazzo.frontend.agent_schema import AgentNodeEntry
from terrazzo.frontend.agent_spec import Condition, NodeSpecBase
from terrazzo.frontend.kinds import LowerContext, Lowered, NodeKind, register_kind
from terrazzo.ir import TensorType

TEXT = "string"  #: the dtype of text values (IR and spec)


def to_text(value: Any) -> str:
    """Read a value as text: bytes/str items joined by newlines; integer tokens as UTF-8 bytes (NULs dropped)."""
    a = np.asarray(value)
    if a.dtype.kind in "OSU":
        items = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
                 for x in a.reshape(-1)]  # fmt: skip
        return "\n".join(items)
    if a.dtype.kind in "iub":
        data = bytes(int(x) % 256 for x in a.reshape(-1))
        return data.replace(b"\x00", b"").decode("utf-8", "replace")
    return " ".join(str(x) for x in a.reshape(-1))


def text_value(items: str | Sequence[str]) -> np.ndarray:
    """A text value: a 1-D object array of UTF-8 bytes (KServe BYTES)."""
    seq = [items] if isinstance(items, str) else list(items)
    return np.array([s.encode() for s in seq] or [b""], dtype=object)


def is_text(value: Any) -> bool:
    """True for text values (object/bytes/str arrays)."""
    return np.asarray(value).dtype.kind in "OSU"


def _subject(cond: Condition, value: Any) -> Any:
    a = np.asarray(value)
    if cond.of == "len":
        return len(to_text(a)) if is_text(a) else int(a.size)
    if cond.of == "text":
        return to_text(a).strip()
    if cond.of == "argmax":
        return int(np.argmax(a.reshape(-1, a.shape[-1])[0])) if a.size else -1
    if a.size == 0:
        return None
    first = a.reshape(-1)[0]
    if isinstance(first, bytes | str):
        return (first.decode("utf-8", "replace") if isinstance(first, bytes) else first).strip()
    return first.item() if hasattr(first, "item") else first


def evaluate(cond: Condition | Mapping[str, Any], value: Any) -> bool:
    """Whether ``value`` passes ``cond`` (an empty value — a skipped arm — passes no order test)."""
    c = cond if isinstance(cond, Condition) else Condition.model_validate(cond)
    s = _subject(c, value)
    v = c.value
    if c.op == "contains":
        return str(v) in str(s if s is not None else "")
    if c.op == "startswith":
        return str(s if s is not None else "").startswith(str(v))
    if c.op == "in":
        return s in v or str(s) in [str(x) for x in v]
    if c.op in ("eq", "ne"):
        same = s == v or (s is not None and str(s) == str(v))
        return same if c.op == "eq" else not same
    if s is None:
        return False
    try:
        a, b = float(s), float(v)
    except (TypeError, ValueError):
        a, b = str(s), str(v)  # type: ignore[assignment]
    return bool({"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[c.op])


# -- spec nodes ---------------------------------------------------------------------------------


class BranchNode(NodeSpecBase):
    """Pick one arm from a value: the first arm whose condition holds, else ``default``.

    Edges leave a branch by arm, ``route.search -> lookup``; the branch passes its input value
    through to the arm taken, and the nodes downstream of an arm run only when it was taken.
    """

    type: Literal["branch"]
    arms: dict[str, Condition] = Field(description="arm name → condition, tested in order")
    default: str = Field(description="arm taken when no condition holds")
    probabilities: dict[str, float] = Field(
        default_factory=dict,
        description="arm → probability for the expected cost (default: equal)",
    )

    @model_validator(mode="after")
    def _check(self) -> BranchNode:
        names = [*self.arms, self.default]
        for a in names:
            if not a.isidentifier():
                raise ValueError(f"arm name {a!r} must be an identifier")
        unknown = sorted(set(self.probabilities) - set(names))
        if unknown:
            raise ValueError(f"probabilities name unknown arms {unknown}")
        if (
            self.probabilities
            and abs(sum(self.probabilities.values()) - 1.0) > 1e-6
            and set(self.probabilities) == set(names)
        ):
            raise ValueError("probabilities must sum to 1")
        return self

    def arm_names(self) -> list[str]:
        """Every arm, the default last (no repeats)."""
        return list(dict.fromkeys([*self.arms, self.default]))

    def probability(self, arm: str) -> float:
        """The arm's probability: given, else the rest spread evenly over the arms without one."""
        if arm in self.probabilities:
            return float(self.probabilities[arm])
        rest = [a for a in self.arm_names() if a not in self.probabilities]
        left = max(0.0, 1.0 - sum(self.probabilities.values()))
        return left / len(rest) if rest else 0.0


class JoinNode(NodeSpecBase):
    """Fan-in: ``first`` — the value of the arm that ran; ``all`` — every input merged (parallel branches)."""

    type: Literal["join"]
    mode: Literal["first", "all"] = "first"


class MapNode(NodeSpecBase):
    """Fan-out/fan-in: call ``function`` on every element of the input list, concurrently, and collect the results."""

    type: Literal["map"]
    function: str = Field(description="'package.module:function' or 'file.py:function'")
    max_parallel: int = Field(default=8, gt=0)
    latency_s: float = Field(default=0.05, ge=0, description="expected latency of one call")
    expected_items: float = Field(default=4.0, gt=0, description="expected list length")

    @field_validator("function")
    @classmethod
    def _check_ref(cls, v: str) -> str:
        if ":" not in v:
            raise ValueError(f"function={v!r} must look like 'package.module:function'")
        return v


# -- plan.json entries --------------------------------------------------------------------------


class BranchEntry(AgentNodeEntry):
    device: str
    arms: dict[str, dict[str, Any]]
    default: str


class JoinEntry(AgentNodeEntry):
    device: str
    mode: str = "first"
    input_ports: list[tuple[int, str, str]] = []  # (input index, branch, arm) of arm edges


class MapEntry(AgentNodeEntry):
    device: str
    function: str
    max_parallel: int = 8
    dtype: str | None = None


# -- lowering -----------------------------------------------------------------------------------


def _lower_branch(node: BranchNode, cx: LowerContext) -> Lowered:
    if len(cx.inputs) != 1:
        raise FrontendError(
            f"{cx.where} field 'inputs': a branch tests one value, found {len(cx.inputs)} edges"
        )
    arms = tuple((a, _cond_attr(c)) for a, c in node.arms.items())
    probs = tuple((a, node.probability(a)) for a in node.arm_names())
    attrs = {"arms": arms, "default": node.default, "probabilities": probs}
    return Lowered(attrs, cx.values[cx.inputs[0]])


def _cond_attr(c: Condition) -> str:
    import json

    return json.dumps(c.as_json(), sort_keys=True)


def cond_of_attr(text: str) -> Condition:
    """The :class:`Condition` an op attribute holds (JSON text)."""
    import json

    return Condition.model_validate(json.loads(text))


def _lower_join(node: JoinNode, cx: LowerContext) -> Lowered:
    if not cx.inputs:
        raise FrontendError(f"{cx.where} field 'inputs': a join needs incoming edges")
    types = [cx.values[v] for v in cx.inputs]
    kinds = {t.dtype == TEXT for t in types}
    if node.mode == "first" and len(kinds) > 1:
        raise FrontendError(
            f"{cx.where} field 'inputs': mode 'first' joins text with tensors "
            f"({', '.join(f'{v}: {t.dtype}' for v, t in zip(cx.inputs, types, strict=True))})"
        )
    out = types[0] if node.mode == "first" else TensorType((-1,), types[0].dtype)
    return Lowered({"mode": node.mode}, out)


def _lower_map(node: MapNode, cx: LowerContext) -> Lowered:
    from terrazzo.frontend.agent import _abs_ref

    attrs = {
        "function": _abs_ref(node.function, cx.base_dir),
        "latency_s": float(node.latency_s),
        "max_parallel": int(node.max_parallel),
        "expected_items": float(node.expected_items),
    }
    return Lowered(attrs, TensorType((-1,), cx.values[cx.inputs[0]].dtype))


# -- gates --------------------------------------------------------------------------------------


def split_port(end: str, branches: Mapping[str, BranchNode]) -> tuple[str, str | None]:
    """``route.search`` → ``("route", "search")`` for a branch's arm, else ``(end, None)``."""
    node, dot, arm = end.partition(".")
    if dot and node in branches:
        return node, arm
    return end, None


def gate_analysis(
    order: Sequence[str],
    preds: Mapping[str, Sequence[str]],
    port_gates: Mapping[str, Sequence[tuple[str, str]]],
    kinds: Mapping[str, str],
    where: str,
) -> dict[str, tuple[tuple[str, str], ...]]:
    """The ``(branch, arm)`` gates of every node; refuses nodes that can never run.

    A node runs when every value it reads was produced, so its gates are the union of its
    inputs' gates and the arms its edges leave from; a join runs when any input was, so its
    gates are those common to its inputs.

    Raises:
        FrontendError: a node reads two arms of one branch (it could never run), naming the
            node and field.
    """
    gates: dict[str, set[tuple[str, str]]] = {}
    for n in order:
        ins = [set(gates.get(p, set())) for p in preds.get(n, ())]
        own = set(port_gates.get(n, ()))
        if kinds.get(n) == "join":  # runs when any input was produced
            g = set.intersection(*ins) if ins else set()
        else:  # runs when every input was produced
            g = set().union(*ins, own)
        by_branch: dict[str, set[str]] = {}
        for b, a in g:
            by_branch.setdefault(b, set()).add(a)
        for b, arms in by_branch.items():
            if len(arms) > 1:
                raise FrontendError(
                    f"{where} node {n!r} field 'inputs': reads arms {sorted(arms)} of branch "
                    f"{b!r}, so it could never run; merge them with a 'join' node first"
                )
        gates[n] = g
    return {n: tuple(sorted(g)) for n, g in gates.items()}


FLOW_KINDS = (
    NodeKind("branch", "agent.branch", BranchNode, BranchEntry, _lower_branch, op_class="other",
             cpu_only=True),
    NodeKind("join", "agent.join", JoinNode, JoinEntry, _lower_join, op_class="other",
             cpu_only=True),
    NodeKind("map", "agent.map", MapNode, MapEntry, _lower_map, op_class="tool", cpu_only=True),
)  # fmt: skip

for _kind in FLOW_KINDS:
    register_kind(_kind)

__all__ = [
    "TEXT",
    "BranchNode",
    "Condition",
    "JoinNode",
    "MapNode",
    "cond_of_attr",
    "evaluate",
    "gate_analysis",
    "is_text",
    "split_port",
    "text_value",
    "to_text",
]
