"""Frontends: ONNX files and PyTorch modules → ir.Graph (the first step of the pipeline).

Heavy dependencies (tvm, onnx, torch) are imported inside the functions, so importing
this package is cheap.
"""

from __future__ import annotations

from terrazzo.frontend.agent import AgentBuilder, decompose, load_agent
from terrazzo.frontend.fixups import prepare_for_build
from terrazzo.frontend.ieee import NanPropagatingMinMax, nan_propagating_function
from terrazzo.frontend.kinds import NodeKind, node_kind, register_hooks, register_kind
from terrazzo.frontend.onnx_guards import GuardedGraph
from terrazzo.frontend.onnx_import import from_onnx, sanitize_name
from terrazzo.frontend.relax_graph import relax_bindings, to_graph, uniquify_names
from terrazzo.frontend.run import GuardedRunner, build_and_run, build_cpu
from terrazzo.frontend.torch_import import from_torch

__all__ = [
    "AgentBuilder",
    "GuardedGraph",
    "GuardedRunner",
    "NanPropagatingMinMax",
    "NodeKind",
    "node_kind",
    "register_hooks",
    "register_kind",
    "decompose",
    "load_agent",
    "nan_propagating_function",
    "build_and_run",
    "build_cpu",
    "from_onnx",
    "from_torch",
    "prepare_for_build",
    "relax_bindings",
    "sanitize_name",
    "to_graph",
    "uniquify_names",
]
