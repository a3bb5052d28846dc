"""What the runtime serves: a model's tensors and its stage DAG, built from a .tzb bundle or by hand.

A ``ServingPlan`` is the one input of the gateway and the launchers. Bundles become plans via
``ServingPlan.from_bundle``; agent graphs can build plans whose stages use other runners
(tools, retrieval, LLM phases) through ``RunnerSpec``. Values flow between stages by name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from terrazzo.errors import ServingError
from terrazzo.ir import TensorSpec
from terrazzo.runtime.tensors import v2_datatype


@dataclass(frozen=True, slots=True)
class RunnerSpec:
    """How a worker process builds its stage callable: ``factory(**kwargs) -> runner``.

    ``factory`` is ``"package.module:function"``; the runner maps dict[str, ndarray] to
    dict[str, ndarray]. ``execute_delay_s`` adds a cancellable delay before each call (a test
    knob like Triton's identity model ``execute_delay_ms``).
    """

    factory: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    execute_delay_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "factory": self.factory,
            "kwargs": dict(self.kwargs),
            "execute_delay_s": self.execute_delay_s,
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> RunnerSpec:
        return RunnerSpec(
            d["factory"], dict(d.get("kwargs", {})), float(d.get("execute_delay_s", 0.0))
        )


@dataclass(frozen=True, slots=True)
class StageSpec:
    """One stage: which values it reads and writes, its device class, replicas and runner."""

    index: int
    device: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    runner: RunnerSpec
    replicas: int = 1
    target: str = "llvm"
    fallback_reason: str | None = None

    @property
    def resource_name(self) -> str:
        """Ray custom resource that a worker of this stage requests (``devclass_<name>``)."""
        return devclass_resource(self.device)


def devclass_resource(device: str) -> str:
    """Custom-resource name for a device class, e.g. 'T4' -> 'devclass_t4'."""
    return "devclass_" + re.sub(r"[^a-z0-9]+", "_", device.lower()).strip("_")


@dataclass(frozen=True, slots=True)
class ServingPlan:
    """A servable model: name, input/output tensors and stages in a topological order."""

    model_name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    stages: tuple[StageSpec, ...]
    version: str = "1"
    platform: str = "terrazzo"
    bundle_path: str | None = None
    sla_latency_s: float | None = None  # end-to-end latency bound; stage deadlines derive from it
    # USD per device-hour by device class, from the bundle's plan (runtime.cost); {}: unpriced
    usd_per_hour_by_device: Mapping[str, float] = field(default_factory=dict)

    def verify(self) -> None:
        """Check that the stage DAG is well-formed: every value a stage reads is produced earlier.

        Raises:
            ServingError: naming the stage and value that break it.
        """
        if not self.stages:
            raise ServingError(f"model {self.model_name!r} has no stages")
        known = {t.name for t in self.inputs}
        producers: dict[str, int] = {}
        for pos, st in enumerate(self.stages):
            if st.index != pos:
                raise ServingError(f"stage at position {pos} has index {st.index}; expected {pos}")
            if st.replicas < 1:
                raise ServingError(f"stage {st.index} asks for {st.replicas} replicas; need >= 1")
            for v in st.inputs:
                if v not in known:
                    raise ServingError(
                        f"stage {st.index} reads {v!r}, which no model input or earlier stage produces"
                    )
            for v in st.outputs:
                if v in producers or v in {t.name for t in self.inputs}:
                    raise ServingError(f"value {v!r} is produced twice (stage {st.index})")
                producers[v] = st.index
                known.add(v)
        for t in self.outputs:
            if t.name not in known:
                raise ServingError(f"model output {t.name!r} is produced by no stage")

    def with_replicas(self, replicas: int | None) -> ServingPlan:
        """Return the plan with every stage at ``replicas`` replicas (None keeps the plan's)."""
        if replicas is None:
            return self
        if replicas < 1:
            raise ServingError(f"--replicas must be >= 1, got {replicas}")
        return replace(self, stages=tuple(replace(s, replicas=replicas) for s in self.stages))

    @staticmethod
    def from_bundle(
        path: str | Path,
        trust_key: str | os.PathLike[str] | bytes | Any = None,
        allow_unsigned: bool = False,
    ) -> ServingPlan:
        """Open and verify a .tzb bundle and describe how to serve it.

        The bundle is signature- and hash-checked here, in the parent, before any worker loads
        it (``trust_key``: the trusted keys, default the local trust; an unverified bundle only
        with ``allow_unsigned``); each worker opens it again itself, trusting exactly the key
        that verified here (``Bundle.worker_trust``).

        Raises:
            BundleError: the bundle is malformed or tampered with.
        """
        from terrazzo.bundle import open_bundle
        from terrazzo.runtime.cost import device_prices

        bundle = open_bundle(path, trust_key=trust_key, allow_unsigned=allow_unsigned)
        worker_trust = bundle.worker_trust()
        if "agent" in (bundle.plan_json or {}):  # agent bundles: LLM phases, tools, ... stages
            bundle.close()
            from terrazzo.runtime.agent_plan import agent_serving_plan

            return agent_serving_plan(path, trust_key=worker_trust)
        try:
            name = bundle.name
        except (KeyError, TypeError):
            name = Path(path).name.split(".")[0]
        stages = []
        for st in bundle.stages:
            stages.append(
                StageSpec(
                    index=int(st.index),
                    device=str(st.device),
                    inputs=tuple(_value_name(v) for v in st.inputs),
                    outputs=tuple(_value_name(v) for v in st.outputs),
                    runner=RunnerSpec(
                        "terrazzo.runtime.runners:bundle_stage",
                        {
                            "path": str(Path(path).resolve()),
                            "index": int(st.index),
                            "trust_key": worker_trust,
                        },
                    ),
                    replicas=max(1, int(getattr(st, "replicas", 1) or 1)),
                    target=_target_text(getattr(st, "target", "llvm")),
                    fallback_reason=getattr(st, "fallback_reason", None),
                )
            )
        stages.sort(key=lambda s: s.index)
        plan = ServingPlan(
            model_name=str(name),
            inputs=tuple(_tensor_spec(t) for t in bundle.inputs),
            outputs=tuple(_tensor_spec(t) for t in bundle.outputs),
            stages=tuple(stages),
            bundle_path=str(Path(path).resolve()),
            sla_latency_s=sla_latency(bundle.manifest.get("sla")),
            usd_per_hour_by_device=device_prices(bundle.manifest),
        )
        if hasattr(bundle, "close"):
            bundle.close()  # workers open (and verify) the bundle themselves
        plan.verify()
        return plan


def sla_latency(sla: Any) -> float | None:
    """The end-to-end latency bound of a manifest's ``sla`` section, or None."""
    value = sla.get("latency_s") if isinstance(sla, Mapping) else None
    if isinstance(value, int | float) and 0 < value < float("inf"):
        return float(value)
    return None


def _value_name(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, Mapping):
        return str(v["name"])
    if isinstance(v, Sequence):
        return str(v[0])
    return str(v.name)


def _tensor_spec(t: Any) -> TensorSpec:
    if isinstance(t, TensorSpec):  # keeps symbolic dims and their declared ranges
        return TensorSpec(t.name, v2_datatype(t.dtype), t.shape, t.dims, t.bounds)
    if isinstance(t, Mapping):
        name, dtype, shape = t["name"], t["dtype"], t["shape"]
    elif isinstance(t, Sequence) and not isinstance(t, str):
        name, dtype, shape = t[0], t[1], t[2]
    else:
        name, dtype, shape = t.name, t.dtype, t.shape
    dims = tuple(
        int(d) if isinstance(d, int) or str(d).lstrip("-").isdigit() else -1 for d in shape
    )
    return TensorSpec(str(name), v2_datatype(str(dtype)), dims)


def _target_text(target: Any) -> str:
    if isinstance(target, Mapping):
        kind = target.get("kind")
        return str(kind) if isinstance(kind, str) else json.dumps(dict(target), sort_keys=True)
    return str(target)
