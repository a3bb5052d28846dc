"""Shared helpers of the serving integration tests: tiny TVM-built Relax stages and plans over them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tritonclient.grpc as tc

from terrazzo.runtime import RunnerSpec, ServingPlan, StageSpec, TensorSpec

RELAX = "terrazzo.runtime.runners:relax_library"


def _build_libs(out: Path) -> dict[str, str]:
    """Compile three tiny Relax functions with TVM for the CPU and export them as libraries."""
    import tvm
    from tvm.script import ir as I
    from tvm.script import relax as R

    @I.ir_module
    class Double:
        @R.function
        def main(x: R.Tensor(("n",), "float32")) -> R.Tensor(("n",), "float32"):
            return R.multiply(x, R.const(2.0, "float32"))

    @I.ir_module
    class AddOne:
        @R.function
        def main(y: R.Tensor(("n",), "float32")) -> R.Tensor(("n",), "float32"):
            return R.add(y, R.const(1.0, "float32"))

    @I.ir_module
    class Combine:
        @R.function
        def main(a: R.Tensor(("n",), "float32"), b: R.Tensor(("n",), "float32")) -> R.Tensor(
            ("n",), "float32"
        ):
            return R.subtract(a, b)

    paths = {}
    for name, mod in {"double": Double, "addone": AddOne, "combine": Combine}.items():
        paths[name] = str(out / f"{name}.so")
        tvm.compile(mod, target="llvm").export_library(paths[name])
    return paths


def chain_plan(libs: dict[str, str], replicas: int = 1, delay_s: float = 0.0) -> ServingPlan:
    """x -> [stage0: y = 2x on 'cpu'] -> [stage1: z = y + 1 on 't4'] -> z (and y)."""
    return ServingPlan(
        "toy",
        (TensorSpec("x", "FP32", (-1,)),),
        (TensorSpec("z", "FP32", (-1,)), TensorSpec("y", "FP32", (-1,))),
        (
            StageSpec(
                0,
                "cpu",
                ("x",),
                ("y",),
                RunnerSpec(
                    RELAX, {"path": libs["double"], "inputs": ["x"], "outputs": ["y"]}, delay_s
                ),
                replicas,
            ),
            StageSpec(
                1,
                "t4",
                ("y",),
                ("z",),
                RunnerSpec(RELAX, {"path": libs["addone"], "inputs": ["y"], "outputs": ["z"]}),
                replicas,
                fallback_reason="t4 absent: running the CPU build",
            ),
        ),
    )


def _infer(
    client: tc.InferenceServerClient, x: np.ndarray, model: str = "toy", **kw
) -> tc.InferResult:
    inp = tc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], **kw)
