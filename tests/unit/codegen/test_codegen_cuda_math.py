"""CUDA kernels are compiled with IEEE math, never ``--use_fast_math``.

Found on an H200: with TVM's default fast math, ``powf(x, 3)`` became ``exp2(3·log2 x)`` and
GPT-2, Llama and T5 answered all-NaN (negative bases). The check reads the PTX nvcc keeps for
the fatbin it builds (TVM_KERNEL_DUMP): fast math shows as ``lg2.approx.ftz``.
"""

from __future__ import annotations

import os
import shutil

import pytest

from terrazzo.codegen import nvcc_fatbin, precise_cuda_math

SOURCE = 'extern "C" __global__ void k(float* a) { a[threadIdx.x] = powf(a[threadIdx.x], 3.0f); }\n'

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")


@needs_nvcc
def test_fatbin_ptx_has_no_fast_math(tmp_path, monkeypatch):
    monkeypatch.setenv("TVM_KERNEL_DUMP", str(tmp_path))
    fatbin = nvcc_fatbin(SOURCE, "sm_90")
    assert isinstance(fatbin, bytes) and len(fatbin) > 0, fatbin
    ptx = [p for p in tmp_path.rglob("*.ptx")]
    assert ptx, f"nvcc kept no PTX in {list(tmp_path.iterdir())}"
    text = "".join(p.read_text() for p in ptx)
    assert "lg2.approx.ftz" not in text


@needs_nvcc
def test_tvm_default_would_use_fast_math(tmp_path, monkeypatch):
    """The guard above can fail: TVM's own default call does emit fast math."""
    import tvm
    from tvm.support import nvcc

    monkeypatch.setenv("TVM_KERNEL_DUMP", str(tmp_path))
    monkeypatch.delenv("TVM_CUDA_NVCC_NO_FAST_MATH", raising=False)
    with tvm.target.Target({"kind": "cuda", "arch": "sm_90"}):
        nvcc.compile_cuda(SOURCE, target_format="fatbin", arch=["-gencode",
                          "arch=compute_90,code=sm_90"], compiler="nvcc")  # fmt: skip
    text = "".join(p.read_text() for p in tmp_path.rglob("*.ptx"))
    assert "lg2.approx.ftz" in text


def test_precise_math_context_restores_the_environment(monkeypatch):
    monkeypatch.delenv("TVM_CUDA_NVCC_NO_FAST_MATH", raising=False)
    with precise_cuda_math():
        assert os.environ["TVM_CUDA_NVCC_NO_FAST_MATH"] == "1"
    assert "TVM_CUDA_NVCC_NO_FAST_MATH" not in os.environ
