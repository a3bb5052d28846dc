"""The self-optimising runtime: observe what is served, recalibrate, re-plan, hot-swap (docs/adaptive.md).

Facade of ``terrazzo.runtime.adapt``: ``serve --adapt POLICY.yaml`` builds an ``AdaptRuntime``
over a running ``Server``; ``plan-history`` reads the decision log it writes.
"""

from terrazzo.runtime.adapt.controller import Controller, Decision, DecisionLog
from terrazzo.runtime.adapt.model import TaskModel, bundle_task_model, group_runner
from terrazzo.runtime.adapt.observe import Observer, Snapshot, StageWindow
from terrazzo.runtime.adapt.planner import (
    AdaptPlan,
    StagePlan,
    best_static,
    feasible,
    size_plan,
    solve_assignment,
)
from terrazzo.runtime.adapt.policy import AdaptPolicy, DeviceClassPolicy, load_policy, parse_policy
from terrazzo.runtime.adapt.recalibrate import Profile, StageError
from terrazzo.runtime.adapt.runtime import AdaptHooks, AdaptRuntime, Swapper

__all__ = [
    "AdaptHooks",
    "AdaptPlan",
    "AdaptPolicy",
    "AdaptRuntime",
    "Controller",
    "Decision",
    "DecisionLog",
    "DeviceClassPolicy",
    "Observer",
    "Profile",
    "Snapshot",
    "StageError",
    "StagePlan",
    "StageWindow",
    "Swapper",
    "TaskModel",
    "best_static",
    "bundle_task_model",
    "feasible",
    "group_runner",
    "load_policy",
    "parse_policy",
    "size_plan",
    "solve_assignment",
]
