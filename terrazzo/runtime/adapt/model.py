"""What the adaptive runtime re-places: a served model as tasks (op groups) in topological order.

A ``TaskModel`` names each task's input and output values and how a worker runs one task on
one device class (a ``RunnerSpec``). A stage of an ``AdaptPlan`` (consecutive tasks on one
class) runs in one worker through ``group_runner``, which chains the tasks' runners in-process
(no hop between tasks of one stage). Bundles become task models stage by stage
(``bundle_task_model``): re-placing them moves whole compiled stages between classes and
re-groups them; the host build of each stage is reused as is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from terrazzo.ir import TensorSpec
from terrazzo.runtime.plan import RunnerSpec, ServingPlan, StageSpec
from terrazzo.runtime.runners import Runner, build_runner


@dataclass(frozen=True)
class TaskModel:
    """Tasks in topological order, their values and per-(task, class) runners."""

    tasks: tuple[str, ...]
    inputs: Mapping[str, tuple[str, ...]]  # task -> values it reads
    outputs: Mapping[str, tuple[str, ...]]  # task -> values it writes
    task_runner: Callable[[str, str], RunnerSpec]  # (task, device class) -> runner

    def stage_spec(self, index: int, tasks: Sequence[str], device: str, replicas: int) -> StageSpec:
        """The StageSpec of ``tasks`` grouped on ``device`` with ``replicas`` workers."""
        made: set[str] = set()
        reads: list[str] = []
        for t in tasks:
            reads += [v for v in self.inputs[t] if v not in made and v not in reads]
            made.update(self.outputs[t])
        writes = tuple(v for t in tasks for v in self.outputs[t])
        specs = [self.task_runner(t, device).to_json() for t in tasks]
        runner = (
            RunnerSpec.from_json(specs[0])
            if len(specs) == 1
            else RunnerSpec("terrazzo.runtime.adapt.model:group_runner", {"runners": specs})
        )
        return StageSpec(
            index=index,
            device=device,
            inputs=tuple(reads),
            outputs=writes,
            runner=runner,
            replicas=replicas,
            target="llvm",
        )

    def serving_plan(
        self,
        stages: Sequence[tuple[Sequence[str], str, int]],
        name: str,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        sla_latency_s: float | None = None,
    ) -> ServingPlan:
        """The ServingPlan of (tasks, class, replicas) stages, to start a Server with."""
        plan = ServingPlan(
            model_name=name,
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            stages=tuple(
                self.stage_spec(i, tasks, dev, reps) for i, (tasks, dev, reps) in enumerate(stages)
            ),
            sla_latency_s=sla_latency_s,
        )
        plan.verify()
        return plan


def group_runner(runners: Sequence[Mapping[str, Any]]) -> Runner:
    """Worker-side: run several task runners one after another in one process."""
    built = [build_runner(r["factory"], r.get("kwargs", {})) for r in runners]

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = dict(values)
        out: dict[str, np.ndarray] = {}
        for fn in built:
            got = fn(env)
            env.update(got)
            out.update(got)
        return out

    return run


def bundle_task_model(plan: ServingPlan) -> TaskModel:
    """A bundle's stages as tasks: each keeps its compiled runner, on whatever class it lands."""
    by_name = {f"stage{s.index}": s for s in plan.stages}

    def runner(task: str, device: str) -> RunnerSpec:
        return by_name[task].runner

    return TaskModel(
        tasks=tuple(by_name),
        inputs={n: s.inputs for n, s in by_name.items()},
        outputs={n: s.outputs for n, s in by_name.items()},
        task_runner=runner,
    )
