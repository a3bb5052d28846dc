"""tz-dialect MLIR text → Graph: the stock MLIR parser and verifier, then a walk over the ops.

Inverse of ``terrazzo.ir.printer``. Every diagnostic becomes a one-line ``VerifyError``
naming the line and column MLIR reported.
"""

from __future__ import annotations

import re
from typing import Any

from terrazzo.errors import VerifyError
from terrazzo.ir.dialect import (
    ANALYSIS_ATTRS,
    GRAPH_OPS,
    MIXED_OP,
    OUTPUT_OPS,
    SPEC_BY_OP,
    mlir_context,
)
from terrazzo.ir.graph import AttrValue, Graph, Op, TensorType, make_attrs
from terrazzo.ir.printer import DTYPE_TO_MLIR

_MLIR_TO_DTYPE = {v: k for k, v in DTYPE_TO_MLIR.items()}
_LEVEL_OF_GRAPH_OP = {v: k for k, v in GRAPH_OPS.items()}
_GRAPH_ATTRS = {"sym_name", "inputs", "attrs"}
_OP_ATTRS = {"name", "kind", "op_class", *ANALYSIS_ATTRS, "attrs", "device", "stage", "results"}
_SEGMENT_ATTRS = {"operandSegmentSizes", "resultSegmentSizes"}
_LOC = re.compile(r'loc\("[^"]*":(\d+):(\d+)\)')


def parse_graph(text: str) -> Graph:
    """Parse and verify tz-dialect MLIR; see ``terrazzo.ir.dialect.parse_graph``."""
    from torch_mlir import ir

    ctx = mlir_context()
    with ctx, ir.Location.unknown():
        try:
            module = ir.Module.parse(text)
            module.operation.verify()
        except ir.MLIRError as e:
            raise VerifyError(_one_line(e)) from None
        top = list(module.body.operations)
        if len(top) != 1 or top[0].name not in _LEVEL_OF_GRAPH_OP:
            found = ", ".join(o.name for o in top) or "nothing"
            raise VerifyError(
                f"expected exactly one {' or '.join(GRAPH_OPS.values())} op at top level, "
                f"found {found}"
            )
        return _graph(top[0].operation).verify()


def _one_line(e: Any) -> str:
    diags = list(getattr(e, "error_diagnostics", []))
    if not diags:
        return "invalid tz MLIR: " + " ".join(str(e).split())
    d = diags[0]
    m = _LOC.search(str(d.location))
    where = f"line {m.group(1)}, col {m.group(2)}" if m else str(d.location)
    return f"invalid tz MLIR at {where}: " + " ".join(d.message.split())


def _graph(op: Any) -> Graph:
    level = _LEVEL_OF_GRAPH_OP[op.name]
    attrs = _attr_map(op)
    where = f"{op.name} {_py(attrs['sym_name'], op.name)!r}"
    _no_extra(attrs, _GRAPH_ATTRS, where)
    name = _str(attrs["sym_name"], where, "sym_name")
    inputs = _str_tuple(attrs["inputs"], where, "inputs")
    blocks = list(op.regions[0].blocks)
    if len(blocks) != 1:
        raise VerifyError(f"{where}: expected one block, found {len(blocks)}")
    block = blocks[0]
    if len(block.arguments) != len(inputs):
        raise VerifyError(
            f"{where}: 'inputs' names {len(inputs)} values but the block has "
            f"{len(block.arguments)} arguments"
        )
    values: dict[str, TensorType] = {}
    value_names: dict[Any, str] = {}
    for arg, vname in zip(block.arguments, inputs, strict=True):
        values[vname] = _tensor_type(arg.type, f"{where}: input {vname!r}")
        value_names[arg] = vname
    ops: list[Op] = []
    outputs: list[str] = []
    for child in block.operations:
        child = child.operation
        if child.name == OUTPUT_OPS[level]:
            outputs.append(value_names[child.operands[0]])
            continue
        if child.name in OUTPUT_OPS.values() or child.name not in SPEC_BY_OP:
            raise VerifyError(f"{where}: unexpected op {child.name} inside a {level} graph")
        new = _op(child, value_names)
        for result, vname in zip(child.results, new.outputs, strict=True):
            if vname in values:
                raise VerifyError(f"{where}: value {vname!r} is defined twice (by op {new.name!r})")
            values[vname] = _tensor_type(result.type, f"op {new.name!r}: result {vname!r}")
            value_names[result] = vname
        ops.append(new)
    graph_attrs = _dict(attrs["attrs"], where) if "attrs" in attrs else ()
    return Graph(
        name=name,
        ops=tuple(ops),
        values=values,
        inputs=inputs,
        outputs=tuple(outputs),
        level=level,
        attrs=graph_attrs,
    )


def _op(op: Any, value_names: dict[Any, str]) -> Op:
    spec = SPEC_BY_OP[op.name]
    attrs = _attr_map(op)
    name = _str(attrs["name"], op.name, "name")
    where = f"{op.name} {name!r}"
    _no_extra(attrs, _OP_ATTRS | (_SEGMENT_ATTRS if op.name == MIXED_OP else set()), where)
    if spec.kind is None:
        kind = _str(attrs["kind"], where, "kind")
    elif "kind" in attrs:
        raise VerifyError(
            f"{where}: a named op takes no 'kind' attribute (its kind is {spec.kind!r})"
        )
    else:
        kind = spec.kind
    outputs = _str_tuple(attrs["results"], where, "results") if "results" in attrs else (name,)
    if len(outputs) != len(op.results):
        raise VerifyError(
            f"{where}: 'results' names {len(outputs)} values but the op has {len(op.results)} results"
        )
    return Op(
        name=name,
        kind=kind,
        inputs=tuple(value_names[v] for v in op.operands),
        outputs=outputs,
        attrs=_dict(attrs["attrs"], where) if "attrs" in attrs else (),
        op_class=_str(attrs["op_class"], where, "op_class"),
        flops=_int(attrs["flops"], where, "flops"),
        bytes_read=_int(attrs["bytes_read"], where, "bytes_read"),
        bytes_written=_int(attrs["bytes_written"], where, "bytes_written"),
        param_bytes=_int(attrs["param_bytes"], where, "param_bytes"),
        device=_str(attrs["device"], where, "device") if "device" in attrs else None,
        stage=_int(attrs["stage"], where, "stage") if "stage" in attrs else None,
    )


def _attr_map(op: Any) -> dict[str, Any]:
    return {k: op.attributes[k] for k in op.attributes}


def _no_extra(attrs: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(attrs) - allowed)
    if extra:
        raise VerifyError(f"{where}: unexpected attributes {', '.join(extra)}")


def _tensor_type(t: Any, where: str) -> TensorType:
    from torch_mlir import ir

    if not isinstance(t, ir.RankedTensorType):
        raise VerifyError(f"{where}: expected a ranked tensor type, found {t}")
    elem = str(t.element_type)
    if elem not in _MLIR_TO_DTYPE:
        raise VerifyError(f"{where}: element type {elem} is not one of {sorted(_MLIR_TO_DTYPE)}")
    dyn = ir.ShapedType.get_dynamic_size()
    return TensorType(tuple(-1 if d == dyn else int(d) for d in t.shape), _MLIR_TO_DTYPE[elem])


def _py(a: Any, where: str) -> AttrValue:
    """MLIR attribute → Terrazzo attribute value (str, int, float, bool, nested tuple)."""
    from torch_mlir import ir

    if isinstance(a, ir.BoolAttr):
        return bool(a.value)
    if isinstance(a, ir.IntegerAttr):
        return int(a.value)
    if isinstance(a, ir.FloatAttr):
        return float(a.value)
    if isinstance(a, ir.StringAttr):
        return str(a.value)
    if isinstance(a, ir.ArrayAttr):
        return tuple(_py(x, where) for x in a)
    raise VerifyError(
        f"{where}: attribute {a} has no Terrazzo value (expected str, int, float, bool, array)"
    )


def _dict(a: Any, where: str) -> tuple[tuple[str, AttrValue], ...]:
    from torch_mlir import ir

    if not isinstance(a, ir.DictAttr):
        raise VerifyError(f"{where}: 'attrs' must be a dictionary, found {a}")
    return make_attrs({n.name: _py(n.attr, f"{where}, attribute {n.name!r}") for n in a})


def _str(a: Any, where: str, what: str) -> str:
    v = _py(a, where)
    if not isinstance(v, str):
        raise VerifyError(f"{where}: '{what}' must be a string, found {a}")
    return v


def _int(a: Any, where: str, what: str) -> int:
    v = _py(a, where)
    if isinstance(v, bool) or not isinstance(v, int):
        raise VerifyError(f"{where}: '{what}' must be an integer, found {a}")
    return v


def _str_tuple(a: Any, where: str, what: str) -> tuple[str, ...]:
    v = _py(a, where)
    if not isinstance(v, tuple) or not all(isinstance(x, str) for x in v):
        raise VerifyError(f"{where}: '{what}' must be an array of strings, found {a}")
    return v
