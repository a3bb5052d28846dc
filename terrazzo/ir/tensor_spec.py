"""The one named-tensor signature: what a model, stage or agent node takes or gives at a boundary.

Frontend (agent specs), bundle (``manifest.json`` / ``plan.json``) and runtime (KServe v2
metadata and request checks) all use this class. ``dtype`` is a numpy-style name
(``float32``); the KServe v2 name (``FP32``) is derived, so both spellings build the same spec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from terrazzo.errors import VerifyError

#: KServe v2 datatype -> numpy dtype name (BYTES travels as object arrays of bytes).
V2_TO_DTYPE: Mapping[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
_DTYPE_TO_V2 = {v: k for k, v in V2_TO_DTYPE.items()}
_DTYPE_TO_V2.update({"bytes": "BYTES", "str": "BYTES", "string": "BYTES"})


def kserve_datatype(dtype: str) -> str | None:
    """The KServe v2 datatype of a dtype name ('float32' or 'FP32' -> 'FP32'); None if it has none."""
    if dtype.upper() in V2_TO_DTYPE:
        return dtype.upper()
    return _DTYPE_TO_V2.get(dtype)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, dtype and shape (``-1`` = any size) of a tensor crossing a model or stage boundary.

    A KServe v2 datatype given as ``dtype`` (``"FP32"``) is stored as its numpy name
    (``"float32"``); any other name is kept as given, so JSON written from it round-trips.

    Symbolic dimensions (dynamic shapes, ``terrazzo.ir.shapes``) have ``-1`` in ``shape``;
    ``dims`` then names every dimension (``""`` for a fixed one, else the symbol or expression
    TVM keeps for it: ``batch``, ``batch * 4``) and ``bounds`` gives each dimension's
    inclusive ``(lo, hi)`` declared range (``(d, d)`` for a fixed one). Both are empty for a
    static tensor, whose JSON form is unchanged.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    dims: tuple[str, ...] = ()
    bounds: tuple[tuple[int, int], ...] = ()

    # Read by pydantic when a spec model has a TensorSpec field (agent YAML): unknown keys are errors.
    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", V2_TO_DTYPE.get(self.dtype, self.dtype))
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dims", tuple(str(d) for d in self.dims))
        object.__setattr__(self, "bounds", tuple((int(a), int(b)) for a, b in self.bounds))
        if self.dims and len(self.dims) != len(self.shape):
            raise VerifyError(f"tensor {self.name!r}: dims {self.dims} do not match shape rank")
        if self.bounds and len(self.bounds) != len(self.shape):
            raise VerifyError(f"tensor {self.name!r}: bounds {self.bounds} do not match shape rank")

    @property
    def is_dynamic(self) -> bool:
        """True when some dimension is symbolic (``-1``)."""
        return any(d < 0 for d in self.shape)

    def describe_shape(self) -> str:
        """``[batch(1..64), 16]`` for a symbolic shape, ``[1, 16]`` for a fixed one."""
        if not self.dims:
            return str(list(self.shape))
        parts = []
        for i, d in enumerate(self.shape):
            if d >= 0:
                parts.append(str(d))
                continue
            name = self.dims[i] or "?"
            lo, hi = self.bounds[i] if self.bounds else (0, -1)
            parts.append(f"{name}({lo}..{hi})" if hi >= 0 else name)
        return "[" + ", ".join(parts) + "]"

    def with_sizes(self, sizes: Mapping[str, int]) -> TensorSpec:
        """This spec with its symbolic dimensions evaluated at ``sizes`` (symbol → size)."""
        from terrazzo.ir.shapes import eval_dim

        if not self.is_dynamic:
            return self
        shape = tuple(
            d if d >= 0 else eval_dim(self.dims[i], sizes) for i, d in enumerate(self.shape)
        )
        return TensorSpec(self.name, self.dtype, shape)

    def shape_error(self, shape: Sequence[int]) -> str | None:
        """Why ``shape`` is not accepted (rank, a fixed size, or a size outside the declared
        range), as one sentence naming the tensor; None when it is accepted."""
        shape = tuple(int(s) for s in shape)
        if self.accepts_shape(shape):
            return None
        want = self.describe_shape()
        if len(shape) == len(self.shape) and self.bounds:
            for i, (s, (lo, hi)) in enumerate(zip(shape, self.bounds, strict=True)):
                if self.shape[i] < 0 and not lo <= s <= hi:
                    return (
                        f"input {self.name!r} dimension {i} ({self.dims[i]}) is {s}, outside the "
                        f"declared range {lo}..{hi}: shape {list(shape)}, expected {want}"
                    )
        return f"input {self.name!r} must have shape {want}, got {list(shape)}"

    @property
    def datatype(self) -> str:
        """The KServe v2 datatype (``FP32``) of ``dtype``.

        Raises:
            VerifyError: ``dtype`` has no KServe v2 datatype (``bfloat16``, say).
        """
        v2 = kserve_datatype(self.dtype)
        if v2 is None:
            raise VerifyError(
                f"tensor {self.name!r}: dtype {self.dtype!r} has no KServe v2 datatype"
            )
        return v2

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        """True if ``shape`` matches the declared rank, every fixed dimension and every range."""
        if len(shape) != len(self.shape):
            return False
        if not all(d < 0 or d == s for d, s in zip(self.shape, shape, strict=True)):
            return False
        return not self.bounds or all(
            lo <= s <= hi for (lo, hi), s in zip(self.bounds, shape, strict=True)
        )

    def to_json(self) -> dict[str, Any]:
        """The form written into ``manifest.json`` and ``plan.json``."""
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.dims:
            out["dims"] = list(self.dims)
        if self.bounds:
            out["range"] = [list(b) for b in self.bounds]
        return out

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> TensorSpec:
        """Inverse of :meth:`to_json`."""
        return TensorSpec(
            str(d["name"]),
            str(d["dtype"]),
            tuple(int(x) for x in d["shape"]),
            tuple(str(x) for x in d.get("dims", ())),
            tuple((int(b[0]), int(b[1])) for b in d.get("range", ())),
        )


def symbol_conflicts(
    specs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]]
) -> str | None:
    """A sentence when inputs give one symbol two sizes (``x`` has batch 2, ``mask`` batch 3).

    Only plain symbols are compared (``batch``, not ``batch * 4``); ``shapes`` maps input name
    → the shape given. None when consistent.
    """
    seen: dict[str, tuple[str, int]] = {}
    for spec in specs:
        if not spec.dims or spec.name not in shapes:
            continue
        given = tuple(shapes[spec.name])
        if len(given) != len(spec.dims):
            continue
        for sym, size in zip(spec.dims, given, strict=True):
            if not sym or not sym.isidentifier():
                continue
            if sym in seen and seen[sym][1] != int(size):
                other, osize = seen[sym]
                return (
                    f"inputs disagree on dimension {sym!r}: {other!r} has {osize}, "
                    f"{spec.name!r} has {int(size)}"
                )
            seen.setdefault(sym, (spec.name, int(size)))
    return None
