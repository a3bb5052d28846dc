"""terrazzo.pipeline: the only place that orders the stages — load → import → plan → split → build → bundle.

Each driver here is a sequence of calls into the stage packages (``frontend``, ``placement``,
``codegen``, ``bundle``), which never call one another out of order: ``compile_model`` /
``compile`` for model graphs, ``compile_agent`` for agent specs, and ``run_calibration``, the
harness that builds and times kernels to fit the cost model. ``docs/pipeline.md`` draws it.
"""

from terrazzo.pipeline.agent import AgentCompileResult, compile_agent, place_agent
from terrazzo.pipeline.calibrate import CalibrationReport, run_calibration
from terrazzo.pipeline.load import as_fleet, as_sla, load_model
from terrazzo.pipeline.model import (
    CompileResult,
    ProgressFn,
    compile,
    compile_model,
    compile_placed,
    graph_plan_sizes,
    graph_ranges,
)

__all__ = [
    "AgentCompileResult",
    "CalibrationReport",
    "CompileResult",
    "ProgressFn",
    "as_fleet",
    "as_sla",
    "compile",
    "compile_agent",
    "compile_model",
    "compile_placed",
    "graph_plan_sizes",
    "graph_ranges",
    "load_model",
    "place_agent",
    "run_calibration",
]
