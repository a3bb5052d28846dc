"""The IR: operator graphs (working form) and the tz MLIR dialect (canonical text form)."""

from terrazzo.ir.graph import OP_CLASSES, AttrValue, Graph, Op, TensorType, make_attrs
from terrazzo.ir.llm import LLMConfig
from terrazzo.ir.tensor_spec import V2_TO_DTYPE, TensorSpec, kserve_datatype, symbol_conflicts

__all__ = [
    "OP_CLASSES",
    "AttrValue",
    "Graph",
    "LLMConfig",
    "Op",
    "TensorSpec",
    "TensorType",
    "V2_TO_DTYPE",
    "kserve_datatype",
    "make_attrs",
    "symbol_conflicts",
]
