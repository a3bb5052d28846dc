"""The IR: operator graphs (working form) and the tz MLIR dialect (canonical text form)."""

from terrazzo.ir.graph import OP_CLASSES, AttrValue, Graph, Op, TensorType, make_attrs

__all__ = ["OP_CLASSES", "AttrValue", "Graph", "Op", "TensorType", "make_attrs"]
