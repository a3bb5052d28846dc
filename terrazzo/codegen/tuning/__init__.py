"""Schedule search for codegen: schedule programs as data, proposers, the tuning loop and DB.

Codegen calls :func:`apply_tuning` before ``tvm.compile``; ``terrazzo tune`` drives
:func:`tune_module`; bundles carry :meth:`TuningDatabase.to_jsonl` as ``records.jsonl``.
"""

from terrazzo.codegen.tuning.config import LLMEndpoint, cache_dir, llm_endpoint
from terrazzo.codegen.tuning.database import (
    TuningDatabase,
    TuningRecord,
    apply_tuning,
    default_database_path,
    target_key,
)
from terrazzo.codegen.tuning.kernel import (
    Kernel,
    analyse,
    extract_kernels,
    kernel_op,
    rank_kernels,
    workload_hash,
)
from terrazzo.codegen.tuning.layout import PACK_LANES, prepare_module
from terrazzo.codegen.tuning.llm import LLMProposer, extract_json_object
from terrazzo.codegen.tuning.loop import KernelResult, TuneOptions, tune_kernel, tune_module
from terrazzo.codegen.tuning.measure import KernelEvaluator, Measurement, MeasureOptions
from terrazzo.codegen.tuning.offline import OfflineProposer
from terrazzo.codegen.tuning.program import (
    PRIMITIVES,
    ScheduleProgram,
    ScheduleProgramError,
    apply_program,
    parse_program,
)
from terrazzo.codegen.tuning.proposer import HardwareSpec, Proposal, Proposer, Trial, local_hardware

__all__ = [
    "PACK_LANES",
    "PRIMITIVES",
    "HardwareSpec",
    "Kernel",
    "KernelEvaluator",
    "KernelResult",
    "LLMEndpoint",
    "LLMProposer",
    "MeasureOptions",
    "Measurement",
    "OfflineProposer",
    "Proposal",
    "Proposer",
    "ScheduleProgram",
    "ScheduleProgramError",
    "Trial",
    "TuneOptions",
    "TuningDatabase",
    "TuningRecord",
    "analyse",
    "apply_program",
    "apply_tuning",
    "cache_dir",
    "default_database_path",
    "extract_json_object",
    "extract_kernels",
    "kernel_op",
    "llm_endpoint",
    "local_hardware",
    "parse_program",
    "prepare_module",
    "rank_kernels",
    "target_key",
    "tune_kernel",
    "tune_module",
    "workload_hash",
]
