"""Agent specs (the YAML/builder form of an agent graph), validated with pydantic before lowering to IR.

The schema is deliberately small: nodes, edges, loops. ``terrazzo.frontend.agent`` lowers a
validated :class:`AgentSpec` to an ``ir.Graph`` at ``level="agent"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from terrazzo.errors import FrontendError
from terrazzo.ir import TensorSpec

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REF_RE = re.compile(r"^[A-Za-z0-9_./\\-]+(\.py)?:[A-Za-z_][A-Za-z0-9_]*$")

LLM_DTYPES = ("fp32", "fp16", "bf16", "fp8", "int8")

# Built-in LLM architectures (transformers-style names). The Llama 3 numbers are from the
# published config.json files; tiny-llama is a random-weight test model with byte-level tokens.
LLM_PRESETS: dict[str, dict[str, int]] = {
    "llama3-8b": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
    },
    "llama3-70b": {
        "hidden_size": 8192,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "intermediate_size": 28672,
        "vocab_size": 128256,
    },
    "tiny-llama": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 256,
    },
}


class NodeSpecBase(BaseModel):
    """Fields every spec node has; a kind's ``spec`` model adds ``type: Literal[...]`` and its own."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    type: str = Field(description="the node kind (``terrazzo.frontend.kinds``)")
    name: str = Field(description="Unique node name; also the name of the value the node produces.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"node name {v!r} must match [A-Za-z_][A-Za-z0-9_]*")
        return v

    @model_validator(mode="after")
    def _name_output(self) -> NodeSpecBase:
        out = getattr(self, "output", None)
        if isinstance(out, TensorSpec) and out.name != self.name:
            self.output = replace(out, name=self.name)
        return self


def _node_tensor(v: Any) -> Any:
    """Fill the YAML form of a node's tensor, ``{shape, dtype}``, with its defaults."""
    if isinstance(v, Mapping):
        if "name" in v:
            raise ValueError("a node's tensor takes its name from the node (or key); drop 'name'")
        return {"name": "", "shape": [-1], "dtype": "int32", **v}
    return v


#: A tensor field of a node spec: YAML ``{shape, dtype}`` (``-1`` = dynamic; defaults ``[-1]``
#: and ``int32``), validated into the one :class:`terrazzo.ir.TensorSpec`, named after its node
#: (``output``) or its key (``example_inputs``).
NodeTensor = Annotated[TensorSpec, BeforeValidator(_node_tensor)]


def _unnamed_tensor() -> TensorSpec:
    return TensorSpec("", "int32", (-1,))


class InputNode(NodeSpecBase):
    type: Literal["input"]
    shape: list[int] = Field(
        default_factory=lambda: [-1], description="-1 marks a dynamic dimension"
    )
    dtype: str = "int32"


class ModelNode(NodeSpecBase):
    """A non-LLM model: an ONNX file, or a torch module from a ``module:factory`` reference."""

    type: Literal["model"]
    onnx: str | None = Field(
        default=None, description="path to an .onnx file (relative to the spec)"
    )
    torch: str | None = Field(
        default=None,
        description="'module:factory' or 'file.py:factory' returning a torch.nn.Module",
    )
    module: Any = Field(default=None, description="a torch.nn.Module (Python builder only)")
    example_inputs: dict[str, NodeTensor] = Field(
        default_factory=dict, description="input name → shape/dtype, required for torch models"
    )

    @field_validator("example_inputs")
    @classmethod
    def _name_inputs(cls, v: dict[str, TensorSpec]) -> dict[str, TensorSpec]:
        return {k: replace(t, name=k) for k, t in v.items()}

    @model_validator(mode="after")
    def _one_source(self) -> ModelNode:
        given = [k for k in ("onnx", "torch", "module") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of onnx, torch, module (found {given or 'none'})")
        if self.torch is not None and not _REF_RE.match(self.torch):
            raise ValueError(f"torch={self.torch!r} must look like 'package.module:factory'")
        if self.onnx is None and not self.example_inputs:
            raise ValueError("a torch model needs example_inputs {name: {shape, dtype}}")
        return self


class LLMNode(NodeSpecBase):
    """An LLM call: a preset, a transformers-style config (random weights) or a Hugging Face
    ``checkpoint`` directory (its weights), with expected sequence lengths."""

    type: Literal["llm"]
    preset: str | None = Field(default=None, description=f"one of {sorted(LLM_PRESETS)}")
    config: dict[str, Any] | str | None = Field(
        default=None, description="transformers-style config dict, or path to a config.json"
    )
    checkpoint: str | None = Field(
        default=None,
        description="a Hugging Face model directory (config.json, safetensors): its weights run",
    )
    dtype: str = Field(
        default="fp16", description=f"weights/activations precision, one of {LLM_DTYPES}"
    )
    max_new_tokens: int = Field(default=256, gt=0)
    input_tokens: int = Field(
        default=512, gt=0, description="expected prompt length (ISL) for costing"
    )
    output_tokens: int | None = Field(
        default=None,
        gt=0,
        description="expected generated length (OSL); defaults to max_new_tokens",
    )
    prompt_tokens: int = Field(
        default=32,
        gt=0,
        le=512,
        description="prompt length the runnable phases are built for (longer prompts keep the end)",
    )

    @model_validator(mode="after")
    def _check(self) -> LLMNode:
        given = [x is not None for x in (self.preset, self.config, self.checkpoint)]
        if sum(given) != 1:
            raise ValueError("give exactly one of preset, config or checkpoint")
        if self.preset is not None and self.preset not in LLM_PRESETS:
            raise ValueError(
                f"unknown preset {self.preset!r}; expected one of {sorted(LLM_PRESETS)}"
            )
        if self.dtype not in LLM_DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {LLM_DTYPES}")
        if self.output_tokens is not None and self.output_tokens > self.max_new_tokens:
            raise ValueError(
                f"output_tokens={self.output_tokens} exceeds max_new_tokens={self.max_new_tokens}"
            )
        return self


class ToolNode(NodeSpecBase):
    """A Python callable run on a CPU worker."""

    type: Literal["tool"]
    function: str = Field(description="'package.module:function' or 'file.py:function'")
    output: NodeTensor = Field(default_factory=_unnamed_tensor)
    latency_s: float = Field(default=0.05, ge=0, description="expected latency for costing")

    @field_validator("function")
    @classmethod
    def _check_ref(cls, v: str) -> str:
        if not _REF_RE.match(v):
            raise ValueError(f"function={v!r} must look like 'package.module:function'")
        return v


class SyntheticEmbeddings(BaseModel):
    """Random unit-norm embeddings (for tests and examples without data files)."""

    model_config = ConfigDict(extra="forbid")
    rows: int = Field(gt=0)
    dim: int = Field(gt=0)
    seed: int = 0


class RetrieveNode(NodeSpecBase):
    """Top-k search: passages of a document set as text (``documents``), or row ids of an embedding matrix.

    With ``documents`` (JSONL of ``{"text": ...}`` or a folder of .txt/.md files) the node's
    predecessor must be the embedder (a torch ``model`` node with a token input): the compiler
    embeds every passage with it and builds a faiss index (``terrazzo.pipeline.retrieval``).
    """

    type: Literal["retrieve"]
    embeddings: str | SyntheticEmbeddings | None = Field(
        default=None, description="path to a .npy matrix, or {rows, dim, seed}"
    )
    documents: str | None = Field(
        default=None, description="JSONL file or folder of passages (relative to the spec)"
    )
    top_k: int = Field(default=4, gt=0)

    @field_validator("embeddings")
    @classmethod
    def _check_path(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.endswith(".npy"):
            raise ValueError(f"embeddings={v!r} must be a .npy file")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> RetrieveNode:
        if (self.embeddings is None) == (self.documents is None):
            raise ValueError("give exactly one of embeddings, documents")
        return self


class MemoryLoadNode(NodeSpecBase):
    type: Literal["memory.load"]
    key: str = "default"
    output: NodeTensor = Field(default_factory=_unnamed_tensor)


class MemoryStoreNode(NodeSpecBase):
    type: Literal["memory.store"]
    key: str = "default"


class OutputNode(NodeSpecBase):
    type: Literal["output"]


class Condition(BaseModel):
    """A test on one value: ``{of: first|text|argmax|len, op: eq|ne|lt|..., value: X}``.

    ``of`` says what of the value is compared: ``first`` (its first element: a token id, a
    number, or the first text item), ``text`` (the whole value read as text), ``argmax`` (a
    classifier's label: the index of its largest score) or ``len`` (number of elements;
    characters for text). ``node`` names the node whose value is tested (default: the branch's
    input, or the loop head's answer for a loop's ``while``). Evaluated by
    ``terrazzo.frontend.agent_flow.evaluate``.
    """

    model_config = ConfigDict(extra="forbid")
    node: str | None = Field(default=None, description="node whose value is tested")
    of: Literal["first", "text", "argmax", "len"] = "first"
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "contains", "startswith", "in"] = "eq"
    value: Any = Field(description="the value compared against (a list for 'in')")

    @model_validator(mode="after")
    def _check(self) -> Condition:
        if self.op == "in" and not isinstance(self.value, list):
            raise ValueError("op 'in' needs a list value")
        if self.op in ("contains", "startswith") and not isinstance(self.value, str):
            raise ValueError(f"op {self.op!r} needs a string value")
        return self

    def as_json(self) -> dict[str, Any]:
        """The JSON form (plan.json, runner kwargs)."""
        return self.model_dump(mode="json")


class EdgeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    src: str = Field(alias="from")
    dst: str = Field(alias="to")
    stream: bool = Field(
        default=False,
        description="LLM → token-input model: feed the model chunks of the answer while it is "
        "being generated (a chunk is the model's input length)",
    )


class LoopSpec(BaseModel):
    """A conditional loop: a back edge ``from`` → ``to``, taken while the body asks for it.

    Costing multiplies the body by ``expected_iterations``; execution stops after
    ``max_iterations`` whatever the condition says.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    src: str = Field(alias="from", description="last node of the body (source of the back edge)")
    dst: str = Field(alias="to", description="first node of the body (target of the back edge)")
    max_iterations: int = Field(gt=0, description="the bound: a loop needs one")
    expected_iterations: float = Field(default=1.0, gt=0)
    condition: str = Field(default="", description="what makes the loop repeat (documentation)")
    while_: Condition | None = Field(
        default=None,
        alias="while",
        description="repeat while this holds on the previous iteration's value (default: the "
        "head LLM's first answer token is below search_below)",
    )

    @model_validator(mode="after")
    def _check(self) -> LoopSpec:
        if self.expected_iterations > self.max_iterations:
            raise ValueError(
                f"expected_iterations={self.expected_iterations} exceeds max_iterations={self.max_iterations}"
            )
        return self


class AgentSpec(BaseModel):
    """A whole agent: nodes, data edges (forward only) and loops (back edges with bounds)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    name: str = "agent"
    description: str = ""
    nodes: list[NodeSpecBase]
    edges: list[EdgeSpec] = Field(default_factory=list)
    loops: list[LoopSpec] = Field(default_factory=list)

    @field_validator("edges", mode="before")
    @classmethod
    def _edge_forms(cls, v: Any) -> Any:
        # Accept "a -> b", [a, b] and {from: a, to: b}.
        out = []
        for e in v or []:
            if isinstance(e, str):
                parts = [p.strip() for p in e.split("->")]
                if len(parts) != 2 or not all(parts):
                    raise ValueError(f"edge {e!r} must look like 'a -> b'")
                e = {"from": parts[0], "to": parts[1]}
            elif isinstance(e, list | tuple):
                if len(e) != 2:
                    raise ValueError(f"edge {e!r} must have two ends")
                e = {"from": e[0], "to": e[1]}
            out.append(e)
        return out

    @model_validator(mode="after")
    def _check_refs(self) -> AgentSpec:
        names = [n.name for n in self.nodes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"node names must be unique; repeated: {', '.join(dup)}")
        known = set(names)
        kinds = {n.name: n.type for n in self.nodes}
        arms = {n.name: set(n.arm_names()) for n in self.nodes if hasattr(n, "arm_names")}
        for e in self.edges:
            for end in (e.src, e.dst):
                node, dot, arm = end.partition(".")
                if end == e.src and dot and node in arms:
                    if arm not in arms[node]:
                        raise ValueError(
                            f"edge {e.src} -> {e.dst}: branch {node!r} has no arm {arm!r} "
                            f"(arms: {', '.join(sorted(arms[node]))})"
                        )
                    continue
                if end not in known:
                    raise ValueError(f"edge {e.src} -> {e.dst}: unknown node {end!r}")
            if kinds[e.dst] == "input":
                raise ValueError(
                    f"edge {e.src} -> {e.dst}: an input node cannot have incoming edges"
                )
            if kinds.get(e.src) == "output":
                raise ValueError(
                    f"edge {e.src} -> {e.dst}: an output node cannot have outgoing edges"
                )
        for lp in self.loops:
            for end in (lp.src, lp.dst):
                if end not in known:
                    raise ValueError(f"loop {lp.name!r}: unknown node {end!r}")
            on = lp.while_.node if lp.while_ is not None else None
            if on is not None and on not in known:
                raise ValueError(f"loop {lp.name!r} field 'while.node': unknown node {on!r}")
        if not any(n.type == "input" for n in self.nodes):
            raise ValueError("an agent needs at least one input node")
        if not any(n.type == "output" for n in self.nodes):
            raise ValueError("an agent needs at least one output node")
        return self


_SPEC_MODELS: dict[int, type[AgentSpec]] = {}


def spec_model() -> type[AgentSpec]:
    """``AgentSpec`` whose nodes are the union of every registered kind's spec (plus ``output``)."""
    from terrazzo.frontend.kinds import node_kinds, registry_generation

    gen = registry_generation()
    model = _SPEC_MODELS.get(gen)
    if model is None:
        members = tuple(k.spec for k in node_kinds()) + (OutputNode,)
        node = Annotated[Union[members], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
        model = create_model("AgentSpec", __base__=AgentSpec, nodes=(list[node], ...))
        _SPEC_MODELS.clear()
        _SPEC_MODELS[gen] = model
    return model


def parse_spec(data: Any, where: str = "agent spec") -> AgentSpec:
    """Validate a mapping (parsed YAML) as an :class:`AgentSpec`.

    Args:
        data: the parsed document.
        where: file name or label used in error messages.

    Returns:
        The validated spec.

    Raises:
        FrontendError: one line per problem, each naming the node and field.
    """
    if not isinstance(data, dict):
        raise FrontendError(
            f"{where}: expected a mapping with 'nodes', found {type(data).__name__}"
        )
    try:
        return spec_model().model_validate(data)
    except ValidationError as e:
        raise FrontendError(f"{where}: {_explain(e, data)}") from None


def _explain(err: ValidationError, data: dict[str, Any]) -> str:
    from terrazzo.frontend.kinds import node_types

    types = node_types()
    msgs = []
    raw_nodes = data.get("nodes")
    nodes: list[Any] = raw_nodes if isinstance(raw_nodes, list) else []
    for item in err.errors():
        loc = list(item["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int):
            idx = loc[1]
            node = nodes[idx] if idx < len(nodes) and isinstance(nodes[idx], dict) else {}
            where = f"node {node.get('name', f'#{idx}')!r}"
            rest = [str(x) for x in loc[2:] if str(x) not in types]
            if rest:
                where += f" field {'.'.join(rest)!r}"
        elif loc:
            where = ".".join(str(x) for x in loc)
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "union_tag_invalid":
            msg = f"unknown node type; expected one of {', '.join(types)}"
        msgs.append(f"{where}: {msg}" if where else msg)
    return "; ".join(msgs)
