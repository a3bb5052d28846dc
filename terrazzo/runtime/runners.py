"""Stage runners a worker process can build: a bundle stage, or a TVM Relax library on disk.

Every runner maps dict[str, np.ndarray] -> dict[str, np.ndarray]. Workers build them from a
``RunnerSpec`` (``"module:function"`` plus keyword arguments), so other kinds (tools,
retrieval, LLM phases) plug in by naming their factory.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from terrazzo.errors import ServingError

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

# Runners built into terrazzo (bundle stages, Relax libraries) only need TVM's runtime and numpy.
# tvm_ffi imports torch eagerly when it can (about half of TVM's import time), so a worker
# process serving one of them makes these modules unimportable before TVM loads.
_LEAN_FACTORY_PREFIX = "terrazzo.runtime.runners:"
_HEAVY_MODULES = (
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime",
    "transformers",
    "tensorflow",
    "jax",
)


def block_heavy_imports(factory: str) -> list[str]:
    """Make torch/onnx/transformers unimportable in this process when ``factory`` cannot need them.

    Only built-in runner factories qualify (tools and LLM runners may import anything). Returns
    the modules that were blocked (none when they were already imported).
    """
    if not factory.startswith(_LEAN_FACTORY_PREFIX):
        return []
    blocked = [m for m in _HEAVY_MODULES if m not in sys.modules]
    for m in blocked:
        sys.modules[m] = None  # type: ignore[assignment]  # import raises ImportError
    return blocked


def build_runner(factory: str, kwargs: Mapping[str, Any]) -> Runner:
    """Import ``"package.module:function"`` and call it with ``kwargs`` to get a runner.

    Raises:
        ServingError: the factory cannot be imported or is not callable.
    """
    module_name, _, attr = factory.partition(":")
    if not module_name or not attr:
        raise ServingError(f"runner factory {factory!r} must look like 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ServingError(f"cannot import runner factory {factory!r}: {e}") from e
    runner = fn(**dict(kwargs))
    if not callable(runner):
        raise ServingError(
            f"runner factory {factory!r} returned a non-callable {type(runner).__name__}"
        )
    return runner


def bundle_stage(
    path: str, index: int, trust_key: Any = None, library: str | None = None
) -> Runner:
    """Open (and verify) a .tzb bundle and load stage ``index`` for this process's device
    (``library``: another CPU build of the stage, see ``Bundle.load_stage``)."""
    from terrazzo.bundle import open_bundle

    if isinstance(trust_key, Mapping) and "hex" in trust_key:
        trust_key = bytes.fromhex(trust_key["hex"])
    return open_bundle(path, trust_key=trust_key).load_stage(int(index), library=library)


class RelaxLibraryRunner:
    """A TVM Relax executable exported with ``export_library``, run on the CPU by the Relax VM.

    Args:
        path: the shared library written by ``tvm.compile(mod).export_library(path)``.
        inputs: names of the ``main`` parameters, in order.
        outputs: names given to ``main``'s results (a tuple result maps positionally).
        function: the Relax function to call.
    """

    def __init__(
        self, path: str, inputs: Sequence[str], outputs: Sequence[str], function: str = "main"
    ):
        import tvm
        from tvm.runtime.vm import VirtualMachine

        self._tvm = tvm
        self._vm = VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())
        self._fn = self._vm[function]
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)

    def __call__(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensor = self._tvm.runtime.tensor
        args = [tensor(np.asarray(values[name], order="C")) for name in self.inputs]
        result = self._fn(*args)
        items = [result] if len(self.outputs) == 1 and hasattr(result, "numpy") else list(result)
        if len(items) != len(self.outputs):
            raise ServingError(
                f"Relax function returned {len(items)} values, expected {len(self.outputs)}"
            )
        return {name: item.numpy() for name, item in zip(self.outputs, items, strict=True)}


def relax_library(
    path: str, inputs: Sequence[str], outputs: Sequence[str], function: str = "main"
) -> Runner:
    """Factory for ``RelaxLibraryRunner`` (usable as ``terrazzo.runtime.runners:relax_library``)."""
    return RelaxLibraryRunner(path, inputs, outputs, function)


def identity(names: Sequence[str], outputs: Sequence[str] | None = None) -> Runner:
    """A pass-through stage (like Triton's identity model): output ``outputs[i]`` is input ``names[i]``.

    Used to measure what serving adds on top of the work itself (benchmarks/serving_overhead.py).
    """
    ins = tuple(names)
    outs = tuple(outputs) if outputs is not None else ins
    if len(ins) != len(outs):
        raise ServingError(f"identity runner maps {len(ins)} inputs to {len(outs)} outputs")

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {o: values[i] for i, o in zip(ins, outs, strict=True)}

    return run
