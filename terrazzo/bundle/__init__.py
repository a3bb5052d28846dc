"""The ``.tzb`` deployment bundle: written by codegen, read (validated first) by runtime and CLI."""

from terrazzo.bundle._read import (
    Bundle,
    BundleLimits,
    StageInfo,
    open_bundle,
    read_manifest,
    read_member_text,
)
from terrazzo.bundle._runner import StageRunner, random_inputs, run_pipeline
from terrazzo.bundle._sign import generate_keypair
from terrazzo.bundle._verify import NumericsCheck, VerifyReport, compare_arrays, verify_bundle
from terrazzo.bundle._write import FORMAT_VERSION, StageContent, write_bundle
from terrazzo.ir import TensorSpec  # re-exported: the one TensorSpec lives in ir

__all__ = [
    "FORMAT_VERSION",
    "NumericsCheck",
    "Bundle",
    "BundleLimits",
    "StageContent",
    "StageInfo",
    "StageRunner",
    "TensorSpec",
    "VerifyReport",
    "compare_arrays",
    "generate_keypair",
    "open_bundle",
    "random_inputs",
    "read_manifest",
    "read_member_text",
    "run_pipeline",
    "verify_bundle",
    "write_bundle",
]
