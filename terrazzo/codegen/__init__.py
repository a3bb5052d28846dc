"""Codegen: a placed stage → a TVM build per device target (split the Relax module, choose targets, build).

Codegen turns what placement decided into artifacts; it does not order the pipeline (that is
``terrazzo.pipeline``) and imports none of commands, report, runtime or pipeline.
"""

from terrazzo.codegen._buckets import (
    BucketSpec,
    bind_symbol,
    bucket_sizes,
    leading_symbol,
    parse_buckets,
    plan_stage_buckets,
    tune_bucket,
)
from terrazzo.codegen._build import (
    StageBuild,
    build_stage,
    compile_module,
    cuda_source,
    load_tuning_db,
    nvcc_fatbin,
    precise_cuda_math,
    prepare_build_module,
    request_module,
    tuning_records_text,
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
from terrazzo.codegen._targets import (
    TargetChoice,
    choose_target,
    describe_target,
    host_target,
    stage_targets,
)

__all__ = [
    "BucketSpec",
    "SplitModel",
    "StageBuild",
    "StageModule",
    "TargetChoice",
    "bind_symbol",
    "bucket_sizes",
    "build_stage",
    "choose_target",
    "compile_module",
    "cuda_source",
    "nvcc_fatbin",
    "precise_cuda_math",
    "prepare_build_module",
    "describe_target",
    "host_target",
    "leading_symbol",
    "load_tuning_db",
    "parse_buckets",
    "plan_assignment",
    "plan_stage_buckets",
    "relax_binding_names",
    "request_module",
    "split_relax",
    "split_stages",
    "stage_targets",
    "tune_bucket",
    "tuning_records_text",
    "uniquify_bindings",
]
