"""Graph → tz-dialect MLIR text (the canonical text form); deterministic, generic op syntax.

The stock MLIR printer renames SSA values and reorders attributes, so Terrazzo prints its
own text in MLIR's generic form (``%y = "tz.matmul"(%x) {...} : (...) -> ...``), which the
stock parser reads back; ``terrazzo.ir.parser`` is its inverse.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence

from terrazzo.errors import VerifyError
from terrazzo.ir.dialect import (
    GENERIC_OP,
    GRAPH_OPS,
    MIXED_OP,
    MIXED_OPERAND_GROUPS,
    MIXED_RESULT_GROUPS,
    OUTPUT_OPS,
    SINGLE,
    SPEC_BY_KIND,
    SPEC_BY_OP,
    VARIADIC,
    OpSpec,
)
from terrazzo.ir.graph import AttrValue, Graph, Op, TensorType

# Terrazzo dtype → MLIR element type (and back, in the parser).
DTYPE_TO_MLIR = {
    "float64": "f64",
    "float32": "f32",
    "float16": "f16",
    "bfloat16": "bf16",
    "float8": "f8E4M3FN",
    "int64": "i64",
    "int32": "i32",
    "int16": "i16",
    "int8": "i8",
    "uint8": "ui8",
    "uint16": "ui16",
    "uint32": "ui32",
    "uint64": "ui64",
    "bool": "i1",
    "string": "!tz.text",  # agent-level text values (an IRDL type of the tz dialect)
}

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_BARE_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_$.]*")
_SSA_ID = re.compile(r"[A-Za-z_$.-][A-Za-z0-9_$.-]*")
_INDENT = "  "


def print_graph(graph: Graph) -> str:
    """Print a verified graph as tz-dialect MLIR; see ``terrazzo.ir.dialect.print_graph``."""
    graph.verify()
    names = _SsaNames()
    types = dict(graph.values)
    args = ", ".join(f"{names.define(v)}: {tensor_type(types[v])}" for v in graph.inputs)
    lines = [f'"{GRAPH_OPS[graph.level]}"() ({{', f"^bb0({args}):" if args else "^bb0:"]
    for op in graph.ops:
        lines.append(_INDENT + _print_op(op, types, names))
    out_op = OUTPUT_OPS[graph.level]
    for v in graph.outputs:
        t = tensor_type(types[v])
        lines.append(f'{_INDENT}"{out_op}"({names.use(v)}) : ({t}) -> ()')
    attrs = [f"sym_name = {string_literal(graph.name)}", f"inputs = {_array(graph.inputs)}"]
    if graph.attrs:
        attrs.append(f"attrs = {_dict(graph.attrs, f'graph {graph.name!r}')}")
    lines.append(f"}}) {{{', '.join(attrs)}}} : () -> ()")
    return "\n".join(lines) + "\n"


def choose_spec(op: Op, types: dict[str, TensorType]) -> tuple[OpSpec, list[int], list[int]]:
    """The op definition ``op`` prints as, with operand/result segment sizes for ``tz.op_mixed``.

    A named op is used when the op's operand and result counts and types fit its signature;
    otherwise ``tz.op`` (homogeneous types) or ``tz.op_mixed`` (runs of equal types).
    """
    in_types = [types[v] for v in op.inputs]
    out_types = [types[v] for v in op.outputs]
    named = SPEC_BY_KIND.get(op.kind)
    if named is not None and _fits(named.operands, in_types) and _fits(named.results, out_types):
        return named, [], []
    if len(set(in_types)) <= 1 and len(set(out_types)) <= 1:
        return SPEC_BY_OP[GENERIC_OP], [], []
    in_runs, out_runs = _runs(in_types), _runs(out_types)
    if len(in_runs) > MIXED_OPERAND_GROUPS or len(out_runs) > MIXED_RESULT_GROUPS:
        raise VerifyError(
            f"op {op.name!r}: {len(in_runs)} runs of distinct input types and {len(out_runs)} of "
            f"output types; the text form holds at most {MIXED_OPERAND_GROUPS} and "
            f"{MIXED_RESULT_GROUPS}"
        )
    in_runs += [0] * (MIXED_OPERAND_GROUPS - len(in_runs))
    out_runs += [0] * (MIXED_RESULT_GROUPS - len(out_runs))
    return SPEC_BY_OP[MIXED_OP], in_runs, out_runs


def _fits(defs: Sequence[tuple[str, str]], ts: list[TensorType]) -> bool:
    """Whether ``ts`` matches a signature of singles then at most one optional/variadic tail."""
    singles = [d for d in defs if d[1] == SINGLE]
    tail = [d for d in defs if d[1] != SINGLE]
    assert len(tail) <= 1 and all(d[1] == SINGLE for d in defs[: len(singles)])
    if len(ts) < len(singles):
        return False
    rest = ts[len(singles) :]
    if not tail:
        return not rest
    if tail[0][1] != VARIADIC and len(rest) > 1:
        return False
    return len(set(rest)) <= 1  # IRDL binds one type per variadic definition


def _runs(ts: list[TensorType]) -> list[int]:
    runs: list[int] = []
    for i, t in enumerate(ts):
        if i and t == ts[i - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


def _print_op(op: Op, types: dict[str, TensorType], names: _SsaNames) -> str:
    spec, in_runs, out_runs = choose_spec(op, types)
    where = f"op {op.name!r}"
    attrs = [f"name = {string_literal(op.name)}"]
    if spec.kind is None:
        attrs.append(f"kind = {string_literal(op.kind)}")
    attrs.append(f"op_class = {string_literal(op.op_class)}")
    attrs += [
        f"{a} = {_int(getattr(op, a), where)}"
        for a in ("flops", "bytes_read", "bytes_written", "param_bytes")
    ]
    if op.attrs:
        attrs.append(f"attrs = {_dict(op.attrs, where)}")
    if op.device is not None:
        attrs.append(f"device = {string_literal(op.device)}")
    if op.stage is not None:
        attrs.append(f"stage = {_int(op.stage, where)}")
    if op.outputs != (op.name,):
        attrs.append(f"results = {_array(op.outputs)}")
    if in_runs:
        attrs.append(f"operandSegmentSizes = array<i32: {', '.join(map(str, in_runs))}>")
        attrs.append(f"resultSegmentSizes = array<i32: {', '.join(map(str, out_runs))}>")
    operands = ", ".join(names.use(v) for v in op.inputs)
    in_t = ", ".join(tensor_type(types[v]) for v in op.inputs)
    out_ts = [tensor_type(types[v]) for v in op.outputs]
    out_t = out_ts[0] if len(out_ts) == 1 else f"({', '.join(out_ts)})"
    lhs = ", ".join(names.define(v) for v in op.outputs)
    lhs = f"{lhs} = " if lhs else ""
    return f'{lhs}"{spec.op_name}"({operands}) {{{", ".join(attrs)}}} : ({in_t}) -> {out_t}'


def tensor_type(t: TensorType) -> str:
    """``TensorType`` → builtin tensor type text, e.g. ``tensor<8x?xf32>``."""
    dims = "".join(("?" if d < 0 else str(d)) + "x" for d in t.shape)
    return f"tensor<{dims}{DTYPE_TO_MLIR[t.dtype]}>"


def string_literal(s: str) -> str:
    """An MLIR string literal; bytes outside printable ASCII become ``\\XX`` escapes."""
    out = []
    for b in s.encode("utf-8", errors="surrogatepass"):
        c = chr(b)
        if c in '"\\' or not 0x20 <= b < 0x7F:
            out.append(f"\\{b:02X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _array(names: Sequence[str]) -> str:
    return "[" + ", ".join(string_literal(n) for n in names) + "]"


def _dict(attrs: Sequence[tuple[str, AttrValue]], where: str) -> str:
    keys = [k for k, _ in attrs]
    if len(set(keys)) != len(keys):
        raise VerifyError(f"{where}: duplicate attribute names in {keys}")
    items = []
    for k, v in sorted(attrs, key=lambda kv: kv[0]):
        if not isinstance(k, str) or not k:
            raise VerifyError(f"{where}: attribute names must be non-empty strings, found {k!r}")
        key = k if _BARE_ID.fullmatch(k) else string_literal(k)
        items.append(f"{key} = {attr_value(v, f'{where}, attribute {k!r}')}")
    return "{" + ", ".join(items) + "}"


def attr_value(v: object, where: str) -> str:
    """An ``AttrValue`` (str, int, float, bool, nested tuple) → MLIR attribute text."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return _int(v, where)
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, str):
        return string_literal(v)
    if isinstance(v, tuple):
        return "[" + ", ".join(attr_value(x, where) for x in v) + "]"
    raise VerifyError(
        f"{where}: value {v!r} of type {type(v).__name__} has no text form "
        "(expected str, int, float, bool or a tuple of them)"
    )


def _int(v: int, where: str) -> str:
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise VerifyError(f"{where}: integer {v} does not fit in int64")
    return str(v)


def _float(v: float) -> str:
    if not math.isfinite(v):
        bits = struct.unpack("<Q", struct.pack("<d", v))[0]
        return f"0x{bits:016X} : f64"
    text = repr(v)
    mantissa, e, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}{e}{exponent} : f64"


class _SsaNames:
    """Readable, unique SSA names derived from value names (MLIR forgets them on parse)."""

    def __init__(self) -> None:
        self._of: dict[str, str] = {}
        self._taken: set[str] = set()

    def define(self, value: str) -> str:
        base = value if _SSA_ID.fullmatch(value) else "v_" + re.sub(r"[^A-Za-z0-9_$.-]", "_", value)
        name, i = base, 0
        while name in self._taken:
            i += 1
            name = f"{base}_{i}"
        self._taken.add(name)
        self._of[value] = "%" + name
        return "%" + name

    def use(self, value: str) -> str:
        return self._of[value]
