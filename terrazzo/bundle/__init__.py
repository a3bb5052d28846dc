"""The ``.tzb`` deployment bundle: written by codegen, read (validated first) by runtime and CLI."""

from terrazzo.bundle._read import Bundle, BundleLimits, StageInfo, open_bundle, read_manifest
from terrazzo.bundle._runner import StageRunner, run_pipeline
from terrazzo.bundle._sign import generate_keypair
from terrazzo.bundle._write import FORMAT_VERSION, StageContent, TensorSpec, write_bundle

__all__ = [
    "FORMAT_VERSION",
    "Bundle",
    "BundleLimits",
    "StageContent",
    "StageInfo",
    "StageRunner",
    "TensorSpec",
    "generate_keypair",
    "open_bundle",
    "read_manifest",
    "run_pipeline",
    "write_bundle",
]
