"""Device class → build target, with the fallback reasons plan, inspect and report show."""

from __future__ import annotations

import pytest

from terrazzo.codegen import _targets as targets
from terrazzo.codegen import choose_target, describe_target


def test_cpu_class_keeps_its_mcpu():
    c = choose_target("cpu", {"kind": "llvm", "mcpu": "sapphirerapids"})
    assert c.fallback_reason is None and c.target["mcpu"] == "sapphirerapids"
    assert describe_target(c.target) == "llvm(mcpu=sapphirerapids)"


def test_nvidia_class_builds_cuda_with_arch_and_host(monkeypatch):
    monkeypatch.setattr(targets, "nvcc_major_version", lambda: 13)
    c = choose_target("h100", {"kind": "cuda", "arch": "sm_90"})
    assert c.fallback_reason is None and c.compile_fatbin
    assert c.target["arch"] == "sm_90" and c.target["host"] == {"kind": "llvm"}


def test_sm70_with_cuda13_says_why_no_fatbin(monkeypatch):
    monkeypatch.setattr(targets, "nvcc_major_version", lambda: 13)
    c = choose_target("v100", {"kind": "cuda", "arch": "sm_70"})
    assert not c.compile_fatbin
    assert "nvcc 13" in c.fallback_reason and "sm_70" in c.fallback_reason
    monkeypatch.setattr(targets, "nvcc_major_version", lambda: 12)
    assert choose_target("v100", {"kind": "cuda", "arch": "sm_70"}).fallback_reason is None


def test_no_nvcc_keeps_source_only(monkeypatch):
    monkeypatch.setattr(targets, "nvcc_major_version", lambda: None)
    c = choose_target("t4", {"kind": "cuda", "arch": "sm_75"})
    assert not c.compile_fatbin and "no nvcc" in c.fallback_reason


def test_rocm_without_toolchain_falls_back_loudly(monkeypatch):
    monkeypatch.setattr(targets, "rocm_toolchain_present", lambda: False)
    c = choose_target("mi300x", {"kind": "rocm", "mcpu": "gfx942"}, {"kind": "llvm"})
    assert c.target == {"kind": "llvm"}
    assert "ROCm toolchain not found" in c.fallback_reason


@pytest.mark.parametrize("device", ["gaudi2", "gaudi3", "inferentia2", "tpu-v5e"])
def test_untargetable_classes_use_the_declared_fallback(device):
    from terrazzo.costmodel import load_catalog

    spec = load_catalog()[device]
    assert spec.tvm_target is None
    c = choose_target(device, spec.tvm_target, spec.fallback_target)
    assert c.target == dict(spec.fallback_target)
    assert device in c.fallback_reason and "fallback" in c.fallback_reason


def test_every_catalog_class_resolves():
    from terrazzo.costmodel import load_catalog

    for name, spec in load_catalog().items():
        c = choose_target(name, spec.tvm_target, spec.fallback_target)
        assert c.kind in ("llvm", "cuda", "rocm")
        assert (c.fallback_reason is None) == (
            spec.tvm_target is not None
            and (
                spec.tvm_target["kind"] == "llvm"
                or (spec.tvm_target["kind"] == "cuda" and c.compile_fatbin)
            )
        )
