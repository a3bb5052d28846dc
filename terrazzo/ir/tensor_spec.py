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
    """

    name: str
    dtype: str
    shape: tuple[int, ...]

    # Read by pydantic when a spec model has a TensorSpec field (agent YAML): unknown keys are errors.
    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", V2_TO_DTYPE.get(self.dtype, self.dtype))
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

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
        """True if ``shape`` matches the declared rank and every fixed dimension."""
        return len(shape) == len(self.shape) and all(
            d < 0 or d == s for d, s in zip(self.shape, shape, strict=True)
        )

    def to_json(self) -> dict[str, Any]:
        """The form written into ``manifest.json`` and ``plan.json``."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> TensorSpec:
        """Inverse of :meth:`to_json`."""
        return TensorSpec(str(d["name"]), str(d["dtype"]), tuple(int(x) for x in d["shape"]))
