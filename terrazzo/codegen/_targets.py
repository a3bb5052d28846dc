"""Codegen step 2a: map a placed device class to the TVM target its stages are built for.

Every choice says in words why it falls back when it does: a class TVM cannot target
(Gaudi, Inferentia, TPU), a toolchain missing here (ROCm), or an arch the local nvcc cannot
compile (sm_70 with CUDA 13). Separately, every stage also gets a host-CPU build so it can
run on this machine when its planned device is absent.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from terrazzo.costmodel import Catalog
    from terrazzo.placement import Plan

# Oldest arch each nvcc major version still compiles for (CUDA 13 dropped sm_70/sm_72).
_NVCC_MIN_SM = {13: 75, 12: 50, 11: 35}


@dataclass(frozen=True, slots=True)
class TargetChoice:
    """The target one device class's stages are built for.

    Attributes:
        device: device class name (catalog key).
        target: dict form of the ``tvm.target.Target`` the device artifact is built for.
        fallback_reason: None when ``target`` is the class's own target; otherwise why not.
        compile_fatbin: whether nvcc should turn the CUDA source into a fatbin here.
    """

    device: str
    target: Mapping[str, Any] = field(hash=False)
    fallback_reason: str | None = None
    compile_fatbin: bool = False

    @property
    def kind(self) -> str:
        return str(self.target["kind"])

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "target": dict(self.target),
            "fallback_reason": self.fallback_reason,
            "compile_fatbin": self.compile_fatbin,
        }


@functools.cache
def nvcc_major_version() -> int | None:
    """Major CUDA version of the ``nvcc`` on PATH, or None when there is none."""
    exe = shutil.which("nvcc")
    if exe is None:
        return None
    try:
        text = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.", text)
    return int(m.group(1)) if m else None


@functools.cache
def rocm_toolchain_present() -> bool:
    """True when a ROCm install (``/opt/rocm`` or ``hipcc``) and ``ld.lld`` are present."""
    import os

    has_rocm = os.path.isdir("/opt/rocm") or shutil.which("hipcc") is not None
    return has_rocm and shutil.which("ld.lld") is not None


@functools.cache
def host_target() -> Mapping[str, Any]:
    """The llvm target of this machine's CPU: every stage gets a build for it."""
    import tvm.target

    return MappingProxyType({"kind": "llvm", "mcpu": str(tvm.target.codegen.llvm_get_system_cpu())})


def _sm(arch: str) -> int | None:
    m = re.fullmatch(r"sm_(\d+)[a-z]?", arch)
    return int(m.group(1)) if m else None


def choose_target(
    device: str,
    tvm_target: Mapping[str, Any] | None,
    fallback_target: Mapping[str, Any] | None = None,
) -> TargetChoice:
    """Pick the build target of a device class and say why when it is a fallback.

    Args:
        device: device class name.
        tvm_target: the class's own TVM target in dict form, or None when TVM cannot target it.
        fallback_target: the declared fallback (default: the host CPU).

    Returns:
        The TargetChoice; ``fallback_reason`` is a full sentence when the class's own target
        is not what gets built.
    """
    fallback = dict(fallback_target) if fallback_target else dict(host_target())
    fb_desc = _describe(fallback)
    if tvm_target is None:
        return TargetChoice(
            device,
            MappingProxyType(fallback),
            f"TVM has no code generator for {device}; its stages are built for the declared "
            f"fallback target {fb_desc}",
        )
    tgt = dict(tvm_target)
    kind = str(tgt.get("kind"))
    if kind == "cuda":
        if "host" not in tgt:
            tgt["host"] = {"kind": "llvm"}
        major = nvcc_major_version()
        sm = _sm(str(tgt.get("arch", "")))
        if major is None:
            return TargetChoice(
                device,
                MappingProxyType(tgt),
                "no nvcc on this machine: CUDA source is kept in the bundle but not compiled "
                "to a fatbin; the CPU build runs here",
            )
        min_sm = _NVCC_MIN_SM.get(major, 75)
        if sm is not None and sm < min_sm:
            return TargetChoice(
                device,
                MappingProxyType(tgt),
                f"nvcc {major} here cannot compile {tgt['arch']} (needs CUDA {major - 1} or older); "
                "CUDA source is kept in the bundle without a fatbin; the CPU build runs here",
            )
        return TargetChoice(device, MappingProxyType(tgt), None, compile_fatbin=True)
    if kind == "rocm":
        if not rocm_toolchain_present():
            return TargetChoice(
                device,
                MappingProxyType(fallback),
                f"ROCm toolchain not found on this machine (no /opt/rocm or hipcc, or no "
                f"ld.lld), so the rocm target cannot be linked; built for fallback {fb_desc}",
            )
        return TargetChoice(device, MappingProxyType(tgt), None)
    if kind == "llvm":
        return TargetChoice(device, MappingProxyType(tgt), None)
    return TargetChoice(
        device,
        MappingProxyType(fallback),
        f"target kind {kind!r} is not built by Terrazzo; built for fallback {fb_desc}",
    )


def _describe(target: Mapping[str, Any]) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in target.items() if k in ("mcpu", "arch", "mtriple"))
    return f"{target.get('kind')}({extra})" if extra else str(target.get("kind"))


def describe_target(target: Mapping[str, Any]) -> str:
    """Short human form of a target dict: ``cuda(arch=sm_80)``, ``llvm(mcpu=znver4)``."""
    return _describe(target)


def stage_targets(plan: Plan, catalog: Catalog) -> dict[str, TargetChoice]:
    """Device class → TargetChoice for every class the plan uses."""
    out: dict[str, TargetChoice] = {}
    for st in plan.stages:
        if st.device in out:
            continue
        spec = catalog[st.device]
        choice = choose_target(st.device, spec.tvm_target, spec.fallback_target)
        if spec.tvm_target is None and str(getattr(spec, "fallback_reason", "")):
            choice = TargetChoice(
                choice.device,
                choice.target,
                f"{spec.fallback_reason} (declared fallback target {describe_target(choice.target)})",
            )
        out[st.device] = choice
    return out
