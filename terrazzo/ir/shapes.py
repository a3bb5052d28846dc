"""Declared input shapes: fixed sizes and ranges (``--shape x=1..32x3x224x224``, ``shapes=``).

A model input's shape is declared per dimension as a fixed size (``3``) or an inclusive range
(``1..32``). A range keeps that dimension symbolic through import and codegen, so one bundle
serves every size in it; the planner and cost model use one size of it (the *planning size*,
the upper bound unless ``--plan-shape`` says otherwise).

Defaults when a model has symbolic dimensions and no ``--shape`` names them (documented in
docs/dynamic-shapes.md): the first dimension of an input, or any dimension whose name
mentions ``batch``, gets ``1..64`` (:data:`DEFAULT_BATCH_RANGE`); every other symbolic
dimension (sequence length, image side, ...) gets ``1..512`` (:data:`DEFAULT_OTHER_RANGE`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from terrazzo.errors import TerrazzoError

#: One declared dimension: a fixed size, or an inclusive ``(lo, hi)`` range.
DimDecl = int | tuple[int, int]

DEFAULT_BATCH_RANGE = (1, 64)
DEFAULT_OTHER_RANGE = (1, 512)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")
_DIM = re.compile(r"^(\d+)(?:\.\.(\d+))?$")


class ShapeSpecError(TerrazzoError):
    """A ``--shape`` / ``shapes=`` declaration that cannot be parsed or applied."""


def default_range(dim_index: int, symbol: str) -> tuple[int, int]:
    """The range a symbolic dimension gets when no declaration names it (module docstring)."""
    if dim_index == 0 or "batch" in symbol.lower():
        return DEFAULT_BATCH_RANGE
    return DEFAULT_OTHER_RANGE


def parse_dims(text: str, where: str = "shape") -> tuple[DimDecl, ...]:
    """``"1..32x3x224x224"`` → ``((1, 32), 3, 224, 224)``; ``""`` (or ``"scalar"``) → ``()``.

    Raises:
        ShapeSpecError: one line naming the bad part.
    """
    text = text.strip()
    if text in ("", "scalar"):
        return ()
    out: list[DimDecl] = []
    for i, part in enumerate(text.lower().split("x")):
        m = _DIM.match(part.strip())
        if m is None:
            raise ShapeSpecError(
                f"{where}: dimension {i} is {part!r}; expected a size (8) or a range (1..32), "
                "dimensions joined by x (e.g. 1..32x3x224x224)"
            )
        lo = int(m.group(1))
        if m.group(2) is None:
            out.append(lo)
            continue
        hi = int(m.group(2))
        if lo < 1 or hi < lo:
            raise ShapeSpecError(
                f"{where}: dimension {i} range {part!r} must be lo..hi with 1 <= lo <= hi"
            )
        out.append((lo, hi) if lo != hi else lo)
    return tuple(out)


def parse_shape_arg(text: str, flag: str = "--shape") -> tuple[str, tuple[DimDecl, ...]]:
    """``"x=1..32x3x224x224"`` → ``("x", ((1, 32), 3, 224, 224))``.

    Raises:
        ShapeSpecError: one line saying what is wrong (no ``=``, bad name, bad dimension).
    """
    name, sep, dims = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ShapeSpecError(f"{flag} {text!r}: expected NAME=DIMS, e.g. {flag} x=1..32x3x224x224")
    if not _NAME.match(name):
        raise ShapeSpecError(f"{flag} {text!r}: {name!r} is not an input name")
    return name, parse_dims(dims, f"{flag} {text!r}")


def parse_shape_args(items: Sequence[str], flag: str = "--shape") -> dict[str, tuple[DimDecl, ...]]:
    """Several ``NAME=DIMS`` declarations (each name at most once)."""
    out: dict[str, tuple[DimDecl, ...]] = {}
    for item in items:
        name, dims = parse_shape_arg(item, flag)
        if name in out:
            raise ShapeSpecError(f"{flag}: input {name!r} is declared twice")
        out[name] = dims
    return out


def normalize_shapes(
    shapes: Mapping[str, Any] | Sequence[str] | None,
) -> dict[str, tuple[DimDecl, ...]]:
    """The Python API's ``shapes=`` in one form: name → per-dimension size or ``(lo, hi)``.

    Accepts a mapping whose values are tuples of ints / ``(lo, hi)`` pairs / ``"lo..hi"``
    strings, or a whole ``"1..32x3x224x224"`` string; or a list of ``"NAME=DIMS"`` strings.
    """
    if shapes is None:
        return {}
    if isinstance(shapes, str):
        raise ShapeSpecError(f"shapes={shapes!r}: expected a mapping name → shape")
    if not isinstance(shapes, Mapping):
        return parse_shape_args([str(s) for s in shapes], "shapes=")
    out: dict[str, tuple[DimDecl, ...]] = {}
    for name, value in shapes.items():
        where = f"shapes[{name!r}]"
        if isinstance(value, str):
            out[str(name)] = parse_dims(value, where)
            continue
        try:
            items = list(value)
        except TypeError:
            raise ShapeSpecError(f"{where}: expected a shape, got {value!r}") from None
        dims: list[DimDecl] = []
        for i, d in enumerate(items):
            if isinstance(d, str):
                (one,) = parse_dims(d, where) or (None,)
                if one is None:
                    raise ShapeSpecError(f"{where}: dimension {i} is empty")
                dims.append(one)
            elif isinstance(d, tuple | list) and len(d) == 2:
                lo, hi = int(d[0]), int(d[1])
                if lo < 1 or hi < lo:
                    raise ShapeSpecError(
                        f"{where}: dimension {i} range {tuple(d)} must be (lo, hi) with 1 <= lo <= hi"
                    )
                dims.append((lo, hi) if lo != hi else lo)
            else:
                try:
                    size = int(d)
                except (TypeError, ValueError):
                    raise ShapeSpecError(
                        f"{where}: dimension {i} is {d!r}; expected an int or (lo, hi)"
                    ) from None
                if size < 0 or size != d:
                    raise ShapeSpecError(f"{where}: dimension {i} is {d!r}; expected a size >= 0")
                dims.append(size)
        out[str(name)] = tuple(dims)
    return out


def format_dims(dims: Sequence[DimDecl]) -> str:
    """Inverse of :func:`parse_dims`."""
    return "x".join(f"{d[0]}..{d[1]}" if isinstance(d, tuple) else str(d) for d in dims)


def eval_dim(expr: str, values: Mapping[str, int]) -> int:
    """The size of a symbolic dimension expression (``batch``, ``batch * 4``, ``seq + 1``).

    Expressions are what TVM prints for a shape: symbols, integers, ``+ - * //`` and
    parentheses; anything else is refused.
    """
    tokens = re.findall(r"[A-Za-z_][A-Za-z0-9_]*|\d+|//|[-+*()%]|\S", expr)
    safe: list[str] = []
    for t in tokens:
        if t[0].isalpha() or t[0] == "_":
            if t not in values:
                raise ShapeSpecError(f"dimension {expr!r} uses {t!r}, which has no value")
            safe.append(str(int(values[t])))
        elif t.isdigit() or t in ("+", "-", "*", "//", "(", ")", "%"):
            safe.append(t)
        else:
            raise ShapeSpecError(f"dimension {expr!r} is not an integer expression")
    return int(eval(" ".join(safe), {"__builtins__": {}}, {}))  # noqa: S307 - digits and operators only


def dim_bounds(expr: str, ranges: Mapping[str, tuple[int, int]]) -> tuple[int, int]:
    """``(lo, hi)`` of a dimension expression over its symbols' ranges (shapes are monotone)."""
    lo = eval_dim(expr, {k: v[0] for k, v in ranges.items()})
    hi = eval_dim(expr, {k: v[1] for k, v in ranges.items()})
    return (min(lo, hi), max(lo, hi))


def symbols_in(expr: str) -> list[str]:
    """The symbol names a dimension expression uses, in order."""
    return list(dict.fromkeys(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr)))


def format_ranges(ranges: Mapping[str, tuple[int, int]]) -> str:
    """``{"batch": (1, 64)}`` → ``"batch=1..64"`` (comma-separated; the graph attribute form)."""
    return ",".join(f"{k}={lo}..{hi}" for k, (lo, hi) in ranges.items())


def parse_ranges(text: str) -> dict[str, tuple[int, int]]:
    """Inverse of :func:`format_ranges`."""
    out: dict[str, tuple[int, int]] = {}
    for item in filter(None, text.split(",")):
        k, _, r = item.partition("=")
        lo, _, hi = r.partition("..")
        out[k] = (int(lo), int(hi or lo))
    return out


def format_sizes(sizes: Mapping[str, int]) -> str:
    """``{"batch": 64}`` → ``"batch=64"`` (the planning sizes' graph attribute form)."""
    return ",".join(f"{k}={v}" for k, v in sizes.items())


def parse_sizes(text: str) -> dict[str, int]:
    """Inverse of :func:`format_sizes`."""
    return {k: int(v) for k, _, v in (i.partition("=") for i in filter(None, text.split(",")))}
