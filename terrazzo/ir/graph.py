"""The working form of the IR: an immutable graph of operators with tensor types and analyses.

Everything downstream (cost model, placement, codegen) reads this. The canonical text form
is tz-dialect MLIR (see ``terrazzo.ir.dialect``); ``to_json`` is a second, lossless form.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from terrazzo.errors import VerifyError

# Attribute values are plain immutable data so ops stay hashable and printable.
AttrValue = str | int | float | bool | tuple[Any, ...]

# Cost-model classes: efficiencies are fitted per op class and device class.
OP_CLASSES = frozenset(
    {
        "matmul",
        "conv",
        "elementwise",
        "reduction",
        "softmax",
        "norm",
        "data_movement",
        "llm_prefill",
        "llm_decode",
        "kv_transfer",
        "tool",
        "retrieve",
        "memory",
        "io",
        "other",
    }
)

_DTYPE_BYTES = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8": 1,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint64": 8,
    "uint32": 4,
    "uint16": 2,
    "uint8": 1,
    "bool": 1,
    "string": 64,  # text (agent graphs): a nominal size per item for costing
}


@dataclass(frozen=True, slots=True)
class TensorType:
    """Shape and dtype of a value. A dimension of -1 is dynamic (allowed in agent graphs only)."""

    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPE_BYTES:
            raise VerifyError(
                f"unknown dtype {self.dtype!r}; expected one of {sorted(_DTYPE_BYTES)}"
            )

    @property
    def is_static(self) -> bool:
        return all(d >= 0 for d in self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape) if self.is_static else 0

    @property
    def itemsize(self) -> int:
        return _DTYPE_BYTES[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> TensorType:
        return TensorType(tuple(int(x) for x in d["shape"]), str(d["dtype"]))

    @staticmethod
    def of(array: np.ndarray) -> TensorType:
        return TensorType(tuple(int(x) for x in array.shape), str(array.dtype))


@dataclass(frozen=True, slots=True)
class Op:
    """One operator. For model graphs ``name`` is the Relax binding it came from (unique).

    ``kind`` is the operator (``matmul``, ``nn.conv2d``, ``add``, ``llm.call``, ...);
    ``op_class`` is its cost-model class (one of OP_CLASSES). ``device`` and ``stage`` are
    set by placement.
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: tuple[tuple[str, AttrValue], ...] = ()
    op_class: str = "other"
    flops: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    param_bytes: int = 0
    device: str | None = None
    stage: int | None = None

    def attr(self, key: str, default: AttrValue | None = None) -> AttrValue | None:
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    @property
    def attr_dict(self) -> dict[str, AttrValue]:
        return dict(self.attrs)

    @property
    def resident_bytes(self) -> int:
        """Memory the op needs while it runs: its inputs (weights included) and outputs.

        Frontends count the weights an op reads in ``bytes_read`` as well as in
        ``param_bytes``, so adding ``param_bytes`` here would count them twice.
        """
        return self.bytes_read + self.bytes_written

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "attrs": {k: _attr_to_json(v) for k, v in self.attrs},
            "op_class": self.op_class,
            "flops": self.flops,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "param_bytes": self.param_bytes,
            "device": self.device,
            "stage": self.stage,
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Op:
        return Op(
            name=d["name"],
            kind=d["kind"],
            inputs=tuple(d["inputs"]),
            outputs=tuple(d["outputs"]),
            attrs=make_attrs({k: _attr_from_json(v) for k, v in d.get("attrs", {}).items()}),
            op_class=d.get("op_class", "other"),
            flops=int(d.get("flops", 0)),
            bytes_read=int(d.get("bytes_read", 0)),
            bytes_written=int(d.get("bytes_written", 0)),
            param_bytes=int(d.get("param_bytes", 0)),
            device=d.get("device"),
            stage=d.get("stage"),
        )


def make_attrs(attrs: Mapping[str, Any]) -> tuple[tuple[str, AttrValue], ...]:
    """Sorted, immutable attribute tuple from a mapping (lists become tuples)."""
    return tuple(sorted((k, _freeze(v)) for k, v in attrs.items()))


def _freeze(v: Any) -> AttrValue:
    if isinstance(v, list | tuple):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, np.generic):
        return v.item()  # type: ignore[no-any-return]
    return v  # type: ignore[no-any-return]


def _attr_to_json(v: AttrValue) -> Any:
    return [_attr_to_json(x) for x in v] if isinstance(v, tuple) else v


def _attr_from_json(v: Any) -> AttrValue:
    return _freeze(v)


@dataclass(frozen=True, slots=True)
class Graph:
    """An operator graph: ``ops`` in topological order, typed ``values``, graph ``inputs``/``outputs``.

    ``level`` is ``"model"`` (granular operators of one model) or ``"agent"`` (agent.graph
    nodes). ``relax_mod`` is the TVM Relax IRModule the ops came from (model graphs from a
    frontend), kept so codegen can cut it into stages; it is not part of equality or text.
    """

    name: str
    ops: tuple[Op, ...]
    values: Mapping[str, TensorType]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    level: str = "model"
    attrs: tuple[tuple[str, AttrValue], ...] = ()
    relax_mod: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.values, MappingProxyType):
            object.__setattr__(self, "values", MappingProxyType(dict(self.values)))

    # -- lookup -----------------------------------------------------------------------------
    def op(self, name: str) -> Op:
        for o in self.ops:
            if o.name == name:
                return o
        raise KeyError(name)

    @property
    def op_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.ops)

    def producers(self) -> dict[str, str]:
        """value name → name of the op producing it (graph inputs are absent)."""
        return {v: o.name for o in self.ops for v in o.outputs}

    def consumers(self) -> dict[str, list[str]]:
        """value name → names of the ops reading it, in op order."""
        out: dict[str, list[str]] = {}
        for o in self.ops:
            for v in o.inputs:
                out.setdefault(v, []).append(o.name)
        return out

    @property
    def total_flops(self) -> int:
        return sum(o.flops for o in self.ops)

    @property
    def param_bytes(self) -> int:
        return sum(o.param_bytes for o in self.ops)

    def to_networkx(self) -> Any:
        """A networkx DiGraph over op names; edge attrs ``values`` (names) and ``bytes``."""
        import networkx as nx

        g = nx.DiGraph()
        for o in self.ops:
            g.add_node(o.name, op=o)
        prod = self.producers()
        for o in self.ops:
            for v in o.inputs:
                src = prod.get(v)
                if src is None:
                    continue
                nbytes = self.values[v].nbytes if v in self.values else 0
                if g.has_edge(src, o.name):
                    g.edges[src, o.name]["values"].append(v)
                    g.edges[src, o.name]["bytes"] += nbytes
                else:
                    g.add_edge(src, o.name, values=[v], bytes=nbytes)
        return g

    # -- derived graphs ---------------------------------------------------------------------
    def with_ops(self, ops: Iterable[Op], **changes: Any) -> Graph:
        return replace(self, ops=tuple(ops), **changes)

    def with_placement(self, placement: Mapping[str, tuple[str, int]]) -> Graph:
        """Copy with ``device``/``stage`` set from ``op name → (device class, stage index)``."""
        missing = [o.name for o in self.ops if o.name not in placement]
        if missing:
            raise VerifyError(f"placement misses ops: {', '.join(missing[:10])}")
        return self.with_ops(
            replace(o, device=placement[o.name][0], stage=placement[o.name][1]) for o in self.ops
        )

    # -- invariants -------------------------------------------------------------------------
    def verify(self) -> Graph:
        """Check SSA form, topological order, types and analyses; return self or raise VerifyError."""
        where = f"graph {self.name!r}"
        if self.level not in ("model", "agent"):
            raise VerifyError(f"{where}: level must be 'model' or 'agent', found {self.level!r}")
        defined: set[str] = set()
        for v in self.inputs:
            if v not in self.values:
                raise VerifyError(f"{where}: input {v!r} has no type")
            if v in defined:
                raise VerifyError(f"{where}: input {v!r} listed twice")
            defined.add(v)
        seen_ops: set[str] = set()
        for o in self.ops:
            if o.name in seen_ops:
                raise VerifyError(f"{where}: op name {o.name!r} is not unique")
            seen_ops.add(o.name)
            if o.op_class not in OP_CLASSES:
                raise VerifyError(f"{where}: op {o.name!r} has unknown op_class {o.op_class!r}")
            for n in ("flops", "bytes_read", "bytes_written", "param_bytes"):
                if getattr(o, n) < 0:
                    raise VerifyError(f"{where}: op {o.name!r} has negative {n}")
            for v in o.inputs:
                if v not in defined:
                    raise VerifyError(
                        f"{where}: op {o.name!r} reads {v!r} before it is defined "
                        "(ops must be in topological order)"
                    )
            for v in o.outputs:
                if v in defined:
                    raise VerifyError(f"{where}: value {v!r} is defined twice (by op {o.name!r})")
                if v not in self.values:
                    raise VerifyError(f"{where}: value {v!r} of op {o.name!r} has no type")
                defined.add(v)
            if (o.device is None) != (o.stage is None):
                raise VerifyError(
                    f"{where}: op {o.name!r} must carry both device and stage or neither"
                )
        for v in self.outputs:
            if v not in defined:
                raise VerifyError(f"{where}: output {v!r} is never defined")
        if self.level == "agent":
            from terrazzo.ir.dialect import verify_agent_program

            verify_agent_program(self)
        if self.level == "model":
            dyn = [v for v, t in self.values.items() if not t.is_static]
            if dyn:
                raise VerifyError(
                    f"{where}: dynamic dimensions in {', '.join(dyn[:5])}; "
                    "fix them with shapes= at import (e.g. --shape input=1x3x224x224)"
                )
        return self

    # -- serialisation ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "level": self.level,
            "attrs": {k: _attr_to_json(v) for k, v in self.attrs},
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "values": {k: t.to_json() for k, t in self.values.items()},
            "ops": [o.to_json() for o in self.ops],
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Graph:
        return Graph(
            name=d["name"],
            level=d.get("level", "model"),
            attrs=make_attrs(d.get("attrs", {})),
            inputs=tuple(d["inputs"]),
            outputs=tuple(d["outputs"]),
            values={k: TensorType.from_json(t) for k, t in d["values"].items()},
            ops=tuple(Op.from_json(o) for o in d["ops"]),
        )
