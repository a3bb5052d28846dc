"""ONNX frontend: graph inputs whose value decides output shapes become guards (one static build per value).

A graph input that gives a Reshape's target, a reduction's axes, Resize's sizes or scales,
Pad's pads, ... fixes the shapes of what follows by its *value*, which TVM 0.27's importer
and Terrazzo's static planner cannot treat as a run-time tensor. ``from_onnx(guards=True)``
keeps such inputs as real inputs and returns a :class:`GuardedGraph` when the plain import
fails on them; ``build_cpu`` turns that into a runner that, on every call, reads the guard
inputs' values, builds (or reuses from a small LRU cache keyed by the exact values: dtype,
shape and bytes) a specialisation with those values folded in as constants
(``from_onnx(constant_inputs=...)``), and runs it. This is what torch.compile's guards and
XLA's per-shape compilation do: a build is never reused for a different value, so the
result is right for every value, at the price of one build per distinct value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from terrazzo.errors import FrontendError

if TYPE_CHECKING:
    import numpy as np

    from terrazzo.ir import Graph

#: Guard values larger than this (elements) are not shapes, axes or sizes: no guard.
MAX_GUARD_ELEMENTS = 1024

#: Specialisations a guarded runner keeps built (least recently used dropped first).
GUARD_CACHE_SIZE = 8

# Ops through which a value stays "shape arithmetic": an input of one of these whose output
# is shape-valued is shape-valued too (``Cast(axes)``, ``Concat(n, [-1, 4])``, ``Mul(n, 2)``).
_SHAPE_ARITHMETIC = frozenset(
    {
        "Cast", "CastLike", "Identity", "Concat", "Gather", "Unsqueeze", "Squeeze", "Slice",
        "Reshape", "Flatten", "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Max", "Min",
        "Floor", "Ceil", "Round", "Clip", "Where", "Equal", "Less", "Greater", "Not",
    }
)  # fmt: skip


def shape_valued_inputs(model: Any) -> dict[str, list[str]]:
    """Graph inputs whose value reaches a shape-like position (``SHAPE_POSITIONS``), directly
    or through shape arithmetic, with the ops that read them there.

    Unlike ``onnx_fold.shape_only_inputs`` an input may be read as data too: specialising
    on its value is still exact (the value is the value), only slower when it changes often.
    """
    from terrazzo.frontend.onnx_fold import SHAPE_POSITIONS

    inits = {t.name for t in model.graph.initializer}
    names = {i.name for i in model.graph.input if i.name not in inits}
    # value → the shape-position readers it reaches
    reaches: dict[str, set[str]] = {}
    for n in reversed(list(model.graph.node)):
        if n.domain not in ("", "ai.onnx"):
            continue
        for k, i in enumerate(n.input):
            if i and k in SHAPE_POSITIONS.get(n.op_type, ()):
                reaches.setdefault(i, set()).add(n.op_type)
        if n.op_type in _SHAPE_ARITHMETIC:
            via = set().union(*(reaches.get(o, set()) for o in n.output))
            if via:
                for i in n.input:
                    if i:
                        reaches.setdefault(i, set()).update(via)
    return {n: sorted(reaches[n]) for n in sorted(names) if n in reaches}


@dataclass(frozen=True, slots=True)
class Guard:
    """One guard input: its name, dtype, declared shape (None for an open dimension) and the
    ops whose shape-like inputs its value reaches."""

    name: str
    dtype: str
    shape: tuple[int | None, ...] | None  # None: the model gives no rank
    readers: tuple[str, ...]

    def value_of(self, value: Any) -> np.ndarray:
        """``value`` as this input's dtype, checked: same values after the conversion and a
        shape the model allows; raises FrontendError naming the input otherwise."""
        import numpy as np

        arr = np.asarray(value)
        want = np.dtype(self.dtype)
        # np.array, not ascontiguousarray: that one turns a rank-0 value into shape (1,)
        conv = np.array(arr, dtype=want, order="C", copy=True)
        if arr.dtype != want:
            same = np.array_equal(conv, arr) or (
                want.kind == arr.dtype.kind == "f" and np.array_equal(conv, arr, equal_nan=True)
            )
            if not same:
                raise FrontendError(
                    f"guard input {self.name!r}: value {arr.tolist()} does not fit its dtype {want}"
                )
        if self.shape is not None and (
            len(conv.shape) != len(self.shape)
            or any(d is not None and d != s for d, s in zip(self.shape, conv.shape, strict=False))
        ):
            want_shape = tuple("?" if d is None else d for d in self.shape)
            raise FrontendError(
                f"guard input {self.name!r} has shape {conv.shape}, the model says {want_shape}"
            )
        if conv.size > MAX_GUARD_ELEMENTS:
            raise FrontendError(
                f"guard input {self.name!r} has {conv.size} elements; a shape, axes or sizes "
                f"input has at most {MAX_GUARD_ELEMENTS}"
            )
        return conv


def guard_key(
    values: Mapping[str, np.ndarray],
) -> tuple[tuple[str, str, tuple[int, ...], bytes], ...]:
    """The exact identity of a set of guard values: name, dtype, shape and raw bytes (so
    ``-0.0`` and ``0.0`` scales, or two NaN payloads, get builds of their own)."""
    return tuple(
        (n, a.dtype.str, tuple(int(d) for d in a.shape), a.tobytes())
        for n, a in sorted(values.items())
    )


def describe_values(values: Mapping[str, np.ndarray]) -> str:
    """``name=[...]`` for each guard value (error messages and reports)."""
    return ", ".join(f"{n}={a.tolist()}" for n, a in sorted(values.items()))


@dataclass(frozen=True, slots=True)
class GuardedGraph:
    """An ONNX model whose static build depends on the values of some inputs (the guards).

    ``inputs`` are all the model's inputs in order, guards included; ``outputs`` its outputs.
    ``specialise`` imports the model with the guard values as constants (a ``Graph`` whose
    inputs are the other inputs); ``terrazzo.frontend.build_cpu`` builds one per value seen.
    ``reason`` is why the plain import could not keep the guards as run-time tensors;
    ``fixed`` holds the ``constant_inputs`` of the import (constants in every specialisation).
    """

    name: str
    path: Path
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    guards: tuple[Guard, ...]
    reason: str
    shapes: tuple[tuple[str, Any], ...] = ()
    plan_shapes: Any = None
    file_stamp: tuple[int, int] = (0, 0)
    fixed: tuple[tuple[str, Any], ...] = ()

    @property
    def guard_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.guards)

    def guard_values(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The guard inputs' values from a call's inputs, checked (see ``Guard.value_of``)."""
        from terrazzo.frontend.onnx_import import sanitize_name

        out: dict[str, np.ndarray] = {}
        for g in self.guards:
            if g.name in inputs:
                v = inputs[g.name]
            elif sanitize_name(g.name) in inputs:
                v = inputs[sanitize_name(g.name)]
            else:
                raise FrontendError(
                    f"missing guard input {g.name!r}; graph {self.name!r} needs {list(self.inputs)}"
                )
            out[g.name] = g.value_of(v)
        return out

    def specialise(self, values: Mapping[str, np.ndarray]) -> Graph:
        """The model imported with the guard inputs fixed at ``values`` (checked first).

        Raises:
            FrontendError: a guard value is missing or malformed, the file changed since the
                import, or the specialisation itself cannot be imported (named with the value).
        """
        from terrazzo.frontend.onnx_import import from_onnx

        checked = self.guard_values(values)
        if _stamp(self.path) != self.file_stamp:
            raise FrontendError(
                f"{self.path.name} changed on disk since it was imported; import it again"
            )
        try:
            return from_onnx(
                self.path,
                shapes=dict(self.shapes) or None,
                plan_shapes=self.plan_shapes,
                constant_inputs={**dict(self.fixed), **checked},
            )
        except FrontendError as e:
            raise type(e)(f"specialisation on {describe_values(checked)}: {e}") from None


def _stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (int(st.st_size), int(st.st_mtime_ns))


def guarded_graph(
    path: Path,
    model: Any,
    shapes: Any,
    plan_shapes: Any,
    reason: str,
    constant_inputs: Any = None,
) -> GuardedGraph | None:
    """A GuardedGraph for ``model`` (loaded from ``path``, not yet changed), or None when no
    input's value reaches a shape position (then guards cannot help). ``constant_inputs``
    stay constants in every specialisation."""
    import numpy as np
    import onnx

    from terrazzo.frontend.onnx_import import sanitize_name
    from terrazzo.ir.shapes import normalize_shapes

    fixed = {str(k): np.asarray(v) for k, v in dict(constant_inputs or {}).items()}
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits and i.name not in fixed]
    valued = shape_valued_inputs(model)
    guards: list[Guard] = []
    for i in inputs:
        if i.name not in valued or not i.type.HasField("tensor_type"):
            continue
        tt = i.type.tensor_type
        dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        if dtype[:1] not in ("i", "u", "f", "b"):
            continue
        dims = (
            tuple(
                int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in tt.shape.dim
            )
            if tt.HasField("shape")
            else None
        )
        numel = 1
        for d in dims or ():
            numel *= d if d is not None else 1
        if numel > MAX_GUARD_ELEMENTS:
            continue
        guards.append(Guard(i.name, dtype, dims, tuple(valued[i.name])))
    if not guards:
        return None
    names = {g.name for g in guards} | {sanitize_name(g.name) for g in guards}
    rest = {k: v for k, v in normalize_shapes(shapes).items() if k not in names}
    return GuardedGraph(
        name=path.stem or model.graph.name,
        path=path,
        inputs=tuple(i.name for i in inputs),
        outputs=tuple(o.name for o in model.graph.output),
        guards=tuple(guards),
        reason=reason,
        shapes=tuple(rest.items()),
        plan_shapes=plan_shapes,
        file_stamp=_stamp(path),
        fixed=tuple(fixed.items()),
    )
