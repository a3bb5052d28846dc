"""The compiler→runtime contract of agent bundles: ``plan.json["agent"]`` as a typed, versioned pydantic schema.

``terrazzo.pipeline.compile_agent`` writes an :class:`AgentPlanSection`; ``terrazzo.bundle``
validates it when an agent bundle is opened (a malformed section is refused with one line) and
``terrazzo.runtime.agent_plan`` builds the served stage DAG from the typed value. Each node
entry is validated against the ``entry`` model of its kind in ``terrazzo.frontend.kinds``, so a
new kind brings its own entry fields. It lives in the frontend, the lowest layer that both the
writer (pipeline) and the readers (bundle, runtime) can import.

Version history: 1 — the first typed form (the untyped dict of earlier bundles has the same
fields and reads as version 1).
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from terrazzo.frontend.kinds import find_kind, node_types

AGENT_SCHEMA_VERSION = 1


class AgentNodeEntry(BaseModel):
    """Fields every node entry has; a kind's ``entry`` model adds its own."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="node name, also the name of the value it produces")
    kind: str = Field(description="agent op kind (``tool.invoke``)")
    inputs: list[str] = Field(default_factory=list, description="value names it reads")
    loop: str | None = Field(default=None, description="the loop whose body it is in")
    gates: list[tuple[str, str]] = Field(
        default_factory=list,
        description="(branch, arm) pairs under which it runs (agent_flow); empty: always",
    )

    def device_label(self) -> str:
        """The device class(es) the node was placed on, as ``compile`` prints them."""
        return str(getattr(self, "device", None) or "")

    def served_outputs(self, loops: dict[str, LoopEntry]) -> list[tuple[str, str, tuple[int, ...]]]:
        """Extra (name, dtype, shape) bundle outputs this node adds (an LLM's answer)."""
        return []


class LoopEntry(BaseModel):
    """A conditional loop, unrolled to ``max_iterations`` when served."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    src: str = Field(alias="from", description="last node of the body")
    dst: str = Field(alias="to", description="first node of the body (the loop head)")
    max_iterations: int = Field(gt=0)
    expected_iterations: float = Field(default=1.0, gt=0)
    condition: str = ""
    while_: dict[str, Any] | None = Field(
        default=None, alias="while", description="the exit test (agent_spec.Condition JSON)"
    )


class WorkerRow(BaseModel):
    """One served worker of the unrolled DAG, as ``inspect`` shows it."""

    model_config = ConfigDict(extra="forbid")
    stage: int = Field(ge=0)
    runner: str
    device: str
    target: str
    inputs: list[str]
    outputs: list[str]
    fallback_target: dict[str, Any] | None = None


class AgentPlanSection(BaseModel):
    """``plan.json["agent"]``: nodes (typed per kind), loops, outputs, notes and the worker table."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = Field(default=AGENT_SCHEMA_VERSION, description="contract version")
    name: str
    nodes: list[SerializeAsAny[AgentNodeEntry]]
    loops: dict[str, LoopEntry] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict, description="output name → value")
    notes: list[str] = Field(default_factory=list)
    streams: list[tuple[str, str]] = Field(
        default_factory=list, description="streamed edges (LLM → token model), agent_flow"
    )
    search_below: int = 128
    workers: list[WorkerRow] = Field(default_factory=list)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != AGENT_SCHEMA_VERSION:
            raise ValueError(
                f"{v} is not {AGENT_SCHEMA_VERSION}, the version this terrazzo reads; "
                "recompile the agent"
            )
        return v

    @field_validator("nodes", mode="before")
    @classmethod
    def _typed_nodes(cls, v: Any) -> Any:
        if not isinstance(v, list):
            raise ValueError(f"expected a list, found {type(v).__name__}")
        out: list[Any] = []
        for i, item in enumerate(v):
            if isinstance(item, AgentNodeEntry):
                out.append(item)
                continue
            if not isinstance(item, dict) or not isinstance(item.get("kind"), str):
                raise ValueError(f"node #{i}: expected a mapping with a 'kind'")
            kind = find_kind(item["kind"])
            if kind is None:
                raise ValueError(
                    f"node {item.get('name', f'#{i}')!r}: unknown kind {item['kind']!r} "
                    f"(known: {', '.join(node_types()[:-1])})"
                )
            try:
                out.append(kind.entry.model_validate(item))
            except ValidationError as e:
                raise ValueError(f"node {item.get('name', f'#{i}')!r}: {explain(e)}") from None
        return out

    @model_validator(mode="after")
    def _check_refs(self) -> AgentPlanSection:
        names = {n.name for n in self.nodes}
        for n in self.nodes:
            if n.loop is not None and n.loop not in self.loops:
                raise ValueError(f"node {n.name!r}: unknown loop {n.loop!r}")
        for name, lp in self.loops.items():
            for end in (lp.src, lp.dst):
                if end not in names:
                    raise ValueError(f"loop {name!r}: unknown node {end!r}")
        for out, src in self.outputs.items():
            if src not in names:
                raise ValueError(f"output {out!r}: unknown node {src!r}")
        return self

    def node(self, name: str) -> AgentNodeEntry:
        """The entry of node ``name``."""
        return next(n for n in self.nodes if n.name == name)

    def to_json(self) -> dict[str, Any]:
        """The JSON form written to plan.json (aliases, every field)."""
        return self.model_dump(mode="json", by_alias=True)


def explain(err: ValidationError) -> str:
    """One line for a ValidationError: ``field: message; field: message``."""
    parts = []
    for item in err.errors():
        loc = ".".join(str(x) for x in item["loc"])
        msg = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts).replace("\n", " ")


def parse_agent_section(data: Any) -> AgentPlanSection:
    """Validate ``plan.json["agent"]``.

    Raises:
        ValueError: one line naming the offending node/field.
    """
    if isinstance(data, AgentPlanSection):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping, found {type(data).__name__}")
    try:
        return AgentPlanSection.model_validate(data)
    except ValidationError as e:
        raise ValueError(explain(e)) from None


__all__ = [
    "AGENT_SCHEMA_VERSION",
    "AgentNodeEntry",
    "AgentPlanSection",
    "LoopEntry",
    "WorkerRow",
    "explain",
    "parse_agent_section",
]
