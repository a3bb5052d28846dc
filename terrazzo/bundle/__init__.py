"""The ``.tzb`` deployment bundle: written by codegen, read (validated first) by runtime and CLI."""

from terrazzo.bundle._read import (
    Bundle,
    BundleLimits,
    CheckedBundle,
    StageInfo,
    check_bundle,
    open_bundle,
    read_manifest,
    read_member_text,
    unverified_warning,
)
from terrazzo.bundle._runner import StageRunner, random_inputs, run_pipeline
from terrazzo.bundle._sign import generate_keypair
from terrazzo.bundle._trust import (
    HOME_ENV,
    TRUST_ENV,
    TrustedKey,
    TrustPolicy,
    TrustSpec,
    ensure_local_key,
    local_key_paths,
    resolve_trust,
    terrazzo_home,
    trust_dir,
)
from terrazzo.bundle._verify import NumericsCheck, VerifyReport, compare_arrays, verify_bundle
from terrazzo.bundle._write import FORMAT_VERSION, StageContent, write_bundle
from terrazzo.ir import TensorSpec  # re-exported: the one TensorSpec lives in ir

__all__ = [
    "FORMAT_VERSION",
    "NumericsCheck",
    "HOME_ENV",
    "TRUST_ENV",
    "Bundle",
    "BundleLimits",
    "CheckedBundle",
    "StageContent",
    "StageInfo",
    "StageRunner",
    "TensorSpec",
    "TrustPolicy",
    "TrustSpec",
    "TrustedKey",
    "VerifyReport",
    "compare_arrays",
    "check_bundle",
    "ensure_local_key",
    "generate_keypair",
    "local_key_paths",
    "open_bundle",
    "random_inputs",
    "read_manifest",
    "read_member_text",
    "resolve_trust",
    "run_pipeline",
    "terrazzo_home",
    "trust_dir",
    "unverified_warning",
    "verify_bundle",
    "write_bundle",
]
