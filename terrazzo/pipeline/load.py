"""The load stage of the pipeline: what the user passed (paths, zoo names, modules, text) → typed values.

A model becomes a model-level ``ir.Graph`` through a frontend; a fleet becomes a
``placement.Fleet``; an SLA becomes a ``placement.SLA`` (durations such as ``"50ms"`` parse with
``placement.parse_duration_s``). Every driver in ``terrazzo.pipeline`` starts here.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from terrazzo.errors import CodegenError, TerrazzoError
from terrazzo.placement import SLA, Fleet, parse_duration_s

if TYPE_CHECKING:
    import torch

    from terrazzo.ir import Graph

# What the pipeline's entry points accept for each argument (the public boundary types).
ModelLike: TypeAlias = "Graph | str | os.PathLike[str] | torch.nn.Module"
FleetLike: TypeAlias = Fleet | str | os.PathLike[str] | Mapping[str, Any]
SLALike: TypeAlias = SLA | float | str


def load_model(
    model: ModelLike, example_inputs: Any = None, shapes: Any = None, plan_shapes: Any = None
) -> tuple[Graph, str]:
    """Turn ``model`` into a model-level ir.Graph; returns (graph, sha256 of its source).

    ``model`` is an ``ir.Graph``, a path to an ``.onnx`` file, a zoo name (``zoo:bert`` or
    ``bert`` when no such file exists), or a ``torch.nn.Module`` with ``example_inputs``.
    ``shapes`` declares input sizes and ranges (a range keeps a dimension symbolic);
    ``plan_shapes`` the shape the graph's costs assume (default: the ranges' upper bounds).
    """
    from terrazzo.frontend import GuardedGraph
    from terrazzo.ir import Graph

    if isinstance(model, GuardedGraph):
        names = ", ".join(repr(n) for n in model.guard_names)
        raise CodegenError(
            f"{model.path.name}: input(s) {names} decide output shapes by their value (guards); "
            "a bundle holds one static build: import with "
            "from_onnx(path, constant_inputs={name: value}) and compile that graph"
        )
    if isinstance(model, Graph):
        if model.relax_mod is None:
            raise CodegenError(
                f"graph {model.name!r} has no Relax module; import it with a frontend"
            )
        text = model.relax_mod.script(show_meta=False).encode()
        return model, hashlib.sha256(text).hexdigest()
    if isinstance(model, str | os.PathLike):
        p = Path(model)
        name = str(model)
        if not p.exists() and (name.startswith("zoo:") or p.suffix == ""):
            from terrazzo import zoo

            zname = name.removeprefix("zoo:")
            p = zoo.export_onnx(zname, _zoo_cache())
        if not p.is_file():
            raise TerrazzoError(
                f"model {str(model)!r} does not exist (expected an .onnx file or zoo:NAME)"
            )
        from terrazzo.frontend import from_onnx

        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        return from_onnx(p, shapes=shapes, plan_shapes=plan_shapes), digest
    if hasattr(model, "forward"):
        if example_inputs is None:
            raise CodegenError("a torch module needs example_inputs to fix its shapes")
        from terrazzo.frontend import from_torch

        g = from_torch(model, example_inputs, shapes=shapes, plan_shapes=plan_shapes)
        text = g.relax_mod.script(show_meta=False).encode()
        return g, hashlib.sha256(text).hexdigest()
    raise CodegenError(
        f"cannot compile a {type(model).__name__}; expected an .onnx path, zoo name, Graph or nn.Module"
    )


def model_reference(model: ModelLike) -> str | None:
    """How a placed IR names ``model`` so compile can re-import it: ``zoo:NAME`` or an absolute path.

    None for a ``Graph`` or a torch module (a placed IR of those cannot be recompiled alone).
    """
    if not isinstance(model, str | os.PathLike):
        return None
    p, name = Path(model), str(model)
    if not p.exists() and (name.startswith("zoo:") or p.suffix == ""):
        return "zoo:" + name.removeprefix("zoo:")
    return str(p.resolve())


def _zoo_cache() -> Path:
    return Path(tempfile.gettempdir()) / "terrazzo-zoo"


def as_fleet(fleet: FleetLike) -> Fleet:
    """A ``Fleet`` from a Fleet, a fleet YAML path, or a mapping (``{"devices": {...}}``).

    Raises:
        PlacementError: the file or mapping is not a valid fleet.
        TerrazzoError: ``fleet`` is none of these.
    """
    if isinstance(fleet, Fleet):
        return fleet
    if isinstance(fleet, str | os.PathLike):
        return Fleet.from_yaml(Path(fleet))
    if isinstance(fleet, Mapping):
        return Fleet.from_dict(dict(fleet))
    raise TerrazzoError(
        f"fleet must be a Fleet, a YAML path or a mapping, got {type(fleet).__name__}"
    )


def as_sla(sla: SLALike) -> SLA:
    """An ``SLA`` from an SLA, seconds, or text such as ``"50ms"`` (end-to-end latency bound).

    Raises:
        TerrazzoError: the text is not a duration, or ``sla`` is none of these.
    """
    if isinstance(sla, SLA):
        return sla
    if isinstance(sla, int | float):
        return SLA(latency_s=float(sla))
    if isinstance(sla, str):
        return SLA(latency_s=parse_duration_s(sla))
    raise TerrazzoError(f"sla must be an SLA, seconds, or text like '50ms', got {sla!r}")
