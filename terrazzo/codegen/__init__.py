"""Codegen: placed stages → Relax functions → TVM builds per device target → ``.tzb`` bundle."""

from terrazzo.codegen._build import StageBuild, build_stage, compile_module, load_tuning_db
from terrazzo.codegen._compile import (
    CompileResult,
    compile,
    compile_model,
    load_model,
    stage_targets,
)
from terrazzo.codegen._split import (
    SplitModel,
    StageModule,
    plan_assignment,
    relax_binding_names,
    split_relax,
    split_stages,
    uniquify_bindings,
)
from terrazzo.codegen._targets import TargetChoice, choose_target, describe_target, host_target

__all__ = [
    "CompileResult",
    "SplitModel",
    "StageBuild",
    "StageModule",
    "TargetChoice",
    "build_stage",
    "choose_target",
    "compile",
    "compile_model",
    "compile_module",
    "describe_target",
    "host_target",
    "load_model",
    "load_tuning_db",
    "plan_assignment",
    "relax_binding_names",
    "split_relax",
    "split_stages",
    "stage_targets",
    "uniquify_bindings",
]
