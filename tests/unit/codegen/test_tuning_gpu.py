"""Schedule programs for GPU targets: the bind step and the offline proposer's GPU template.

These build CUDA code without a GPU (TVM emits the source; nvcc runs only when a fatbin is
made). That the kernels compute the right numbers was checked on a lent H200
(benchmarks/gpu_check.sh, benchmarks/results/gpu_kernels.json: every candidate of GEMM,
attention batched matmul and conv matched a float64 reference).
"""

from __future__ import annotations

import pytest

tvm = pytest.importorskip("tvm")

from terrazzo.codegen.tuning import (  # noqa: E402
    OfflineProposer,
    ScheduleProgramError,
    analyse,
    apply_program,
    parse_program,
)
from terrazzo.codegen.tuning import workloads as W  # noqa: E402
from terrazzo.codegen.tuning.offline import gpu_template_fits, is_gpu_target  # noqa: E402
from terrazzo.codegen.tuning.proposer import HardwareSpec  # noqa: E402

CUDA = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})
HW = HardwareSpec(description="H200", cores=132, vector_bits=128)
CASES = {
    "gemm": lambda: W.matmul(256, 256, 256),
    "attention_bmm": lambda: W.batch_matmul(4, 64, 64, 32),
    "conv_nhwc": lambda: W.conv2d_nhwc(1, 16, 16, 16, 3),
}


def test_bind_step_parses_and_rejects_unknown_axes() -> None:
    ok = parse_program({"steps": [{"op": "bind", "loop": "i", "thread": "threadIdx.x"}]})
    assert ok.steps[0].thread == "threadIdx.x"  # type: ignore[union-attr]
    with pytest.raises(ScheduleProgramError, match="thread"):
        parse_program({"steps": [{"op": "bind", "loop": "i", "thread": "warp.x"}]})


def test_gpu_targets_are_recognised() -> None:
    assert is_gpu_target(CUDA)
    assert not is_gpu_target(tvm.target.Target({"kind": "llvm"}))


@pytest.mark.parametrize("name", sorted(CASES))
def test_offline_gpu_programs_bind_every_loop_and_build_for_cuda(name: str) -> None:
    kernel = analyse(name, CASES[name]())
    assert gpu_template_fits(kernel)
    props = OfflineProposer().propose(kernel, CUDA, (), 8, HW)
    assert len(props) == 8
    for p in props:
        assert p.program is not None
        ops = [s.op for s in p.program.steps]
        assert "bind" in ops and "cache_write" in ops, ops
        func = apply_program(kernel.func, p.program)
        lib = tvm.compile(tvm.IRModule({"main": func}), target=CUDA)  # unbound loops would fail
        src = lib.mod.imports[0].inspect_source("")
        assert "threadIdx.x" in src and "blockIdx.x" in src
    assert any("__shared__" in tvm.compile(
        tvm.IRModule({"main": apply_program(kernel.func, p.program)}), target=CUDA
    ).mod.imports[0].inspect_source("") for p in props)  # fmt: skip


def test_offline_gpu_second_round_mutates_the_fastest() -> None:
    from terrazzo.codegen.tuning import Trial

    kernel = analyse("gemm", CASES["gemm"]())
    prop = OfflineProposer(seed=0)
    first = prop.propose(kernel, CUDA, (), 8, HW)
    history = [
        Trial(i, "offline", p.program, True, 1e-3 * (i + 1), "ok") for i, p in enumerate(first)
    ]
    second = prop.propose(kernel, CUDA, history, 8, HW)
    assert second, "no second round"
    seen = {p.program.key() for p in first if p.program is not None}
    assert all(p.program is not None and p.program.key() not in seen for p in second)


def test_gpu_proposals_for_other_kernels_still_build() -> None:
    kernel = analyse("softmax", W.softmax(64, 128))
    props = OfflineProposer().propose(kernel, CUDA, (), 4, HW)
    assert all(p.program is not None for p in props)
    for p in props:  # whatever is proposed must build for the GPU
        tvm.compile(tvm.IRModule({"main": apply_program(kernel.func, p.program)}), target=CUDA)
