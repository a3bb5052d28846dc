"""The reference stage of the model pipeline: outputs of the model as its own framework computes them.

``compile`` stores these (inputs and outputs, as ``reference/io.safetensors``) in the bundle so
that ``terrazzo verify`` compares the compiled stages with an implementation that shares no
code with TVM: onnxruntime for an ONNX file (zoo models are ONNX files too), torch for an
``nn.Module``. A bare ``ir.Graph`` has no independent reference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from terrazzo.errors import TerrazzoError

#: Seed of the stored reference inputs (``bundle.random_inputs``).
REFERENCE_SEED = 0


@dataclass(frozen=True, slots=True)
class ReferenceIO:
    """Inputs and the outputs an independent implementation computed from them.

    Attributes:
        source: what computed ``outputs`` (``onnxruntime 1.31.0``, ``torch 2.13.0``).
        inputs / outputs: arrays by the model's input / output names.
    """

    source: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def onnx_path(model: Any) -> Path | None:
    """The ONNX file ``compile`` imports for ``model`` (a path or a zoo name), else None."""
    if not isinstance(model, str | os.PathLike):
        return None
    p, name = Path(model), str(model)
    if not p.exists() and (name.startswith("zoo:") or p.suffix == ""):
        from terrazzo import zoo
        from terrazzo.pipeline.load import _zoo_cache

        return zoo.export_onnx(name.removeprefix("zoo:"), _zoo_cache())
    return p if p.suffix == ".onnx" and p.is_file() else None


def onnxruntime_outputs(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an ONNX file with onnxruntime (CPU, graph optimisations off) on named inputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Optimisations fuse ops into kernels with other rounding; the reference stays literal.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4  # a failed run is reported by the caller, in one line
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs), strict=True))


def _reference_refused(
    path: Path, graph: Any, inputs: dict[str, np.ndarray], err: Exception
) -> str:
    """One line for a reference run onnxruntime refused: the shapes tried and what to do.

    Symbolic sizes are planned (and referenced) at their range's upper bound; a model that
    accepts less (a position table of 64 under a default ``seq`` range of 1..512) fails here.
    """
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    msg = msg.split("Status Message: ")[-1]
    shapes = ", ".join(f"{n} {'x'.join(map(str, a.shape)) or 'scalar'}" for n, a in inputs.items())
    ranges = str(dict(getattr(graph, "attrs", {}) or {}).get("dynamic_dims", "")).strip()
    head = f"{path.name}: onnxruntime could not run the reference inputs at {shapes}: {msg}"
    if not ranges:
        return head
    return (
        f"{head}; symbolic sizes ({ranges}) are planned at their upper bound: if the model "
        "accepts less, declare its sizes with --shape NAME=DIMS (e.g. input_ids=1..8x1..64) "
        "or plan at a smaller size with --plan-shape"
    )


def reference_io(model: Any, graph: Any, example_inputs: Any = None) -> ReferenceIO | None:
    """Seeded inputs for ``graph`` and the outputs the model's own framework gives for them.

    Args:
        model: what the user passed to ``compile`` (an ``.onnx`` path, a zoo name, an
            ``nn.Module``, or a Graph — which has no independent reference: None).
        graph: the imported graph (its inputs, outputs, shapes and dtypes name the arrays).
        example_inputs: a torch module's example inputs (they are the stored inputs).

    Returns:
        The ReferenceIO, or None when there is no independent reference.

    Raises:
        TerrazzoError: the reference disagrees with the graph on output names or shapes.
    """
    from terrazzo.bundle import TensorSpec, random_inputs

    specs = tuple(TensorSpec(n, graph.values[n].dtype, graph.values[n].shape) for n in graph.inputs)
    path = onnx_path(model)
    if path is not None:
        import onnxruntime as ort

        inputs = random_inputs(specs, REFERENCE_SEED)
        try:
            outputs = onnxruntime_outputs(path, inputs)
        except Exception as e:  # onnxruntime refused the planning shapes (or the model)
            raise TerrazzoError(_reference_refused(path, graph, inputs, e)) from None
        source = f"onnxruntime {ort.__version__}"
    elif hasattr(model, "forward") and example_inputs is not None:
        import torch
        from torch.utils import _pytree as pytree

        args = tuple(example_inputs)
        inputs = {n: a.detach().cpu().numpy() for n, a in zip(graph.inputs, args, strict=True)}
        with torch.no_grad():
            flat = pytree.tree_leaves(model.eval()(*args))
        outputs = {n: t.detach().cpu().numpy() for n, t in zip(graph.outputs, flat, strict=True)}
        source = f"torch {torch.__version__}"
    else:
        return None
    for n in graph.outputs:
        want = graph.values[n]
        got = outputs.get(n)
        if got is None or tuple(got.shape) != tuple(want.shape):
            raise TerrazzoError(
                f"reference ({source}) output {n!r}: expected {want.dtype}{list(want.shape)}, "
                f"got {None if got is None else list(got.shape)} (outputs {sorted(outputs)})"
            )
    return ReferenceIO(source, inputs, {n: np.asarray(outputs[n]) for n in graph.outputs})
