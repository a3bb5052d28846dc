"""``terrazzo serve --adapt POLICY.yaml``: attach the adaptive runtime to a served bundle.

A bundle's compiled stages are the tasks; the controller may move each to any class of the
policy's fleet, group neighbours into one worker, and change replica counts. On this host
every class runs the stage's host build (the bundle's own code), so moving a stage changes
where and how often it runs, not its kernels. The prior per (stage, class) is the bundle's
predicted stage latency where the manifest has one, else 1 ms; measurements replace it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from terrazzo.errors import ServingError
from terrazzo.runtime.adapt.model import bundle_task_model
from terrazzo.runtime.adapt.planner import AdaptPlan, StagePlan
from terrazzo.runtime.adapt.policy import AdaptPolicy
from terrazzo.runtime.adapt.recalibrate import Profile
from terrazzo.runtime.adapt.runtime import AdaptRuntime

if TYPE_CHECKING:
    from terrazzo.runtime.server import Server

_DEFAULT_PRIOR_S = 1e-3


def _predicted_stage_s(bundle_path: str | None) -> dict[int, float]:
    """Stage index -> predicted latency (s) from the bundle's plan, where it says."""
    if not bundle_path:
        return {}
    try:
        from terrazzo.bundle import open_bundle

        b = open_bundle(bundle_path, allow_unsigned=True)
        plan: Any = b.plan_json or {}
        b.close()
    except Exception:  # a prior is optional: measurements take over within a window
        return {}
    out: dict[int, float] = {}
    for st in plan.get("stages", []) if isinstance(plan, dict) else []:
        if isinstance(st, dict) and isinstance(st.get("latency_s"), int | float):
            out[int(st.get("index", len(out)))] = float(st["latency_s"])
    return out


def attach(server: Server, policy: AdaptPolicy) -> AdaptRuntime:
    """Start the adaptive runtime on a running single-bundle Server."""
    plan = server.plan
    missing = sorted({s.device for s in plan.stages} - set(policy.fleet))
    if missing:
        raise ServingError(
            f"adapt policy: field 'fleet' has no entry for device class(es) {', '.join(missing)} "
            "that the bundle is placed on"
        )
    model = bundle_task_model(plan)
    predicted = _predicted_stage_s(plan.bundle_path)
    prior = {
        f"stage{s.index}": dict.fromkeys(policy.fleet, predicted.get(s.index, _DEFAULT_PRIOR_S))
        for s in plan.stages
    }
    profile = Profile(prior, policy.confidence_samples)
    stages = tuple(StagePlan((f"stage{s.index}",), s.device, s.replicas) for s in plan.stages)
    start = AdaptPlan(
        stages,
        sum(s.replicas * policy.fleet[s.device].usd_per_hour for s in stages),
        sum(prior[t][s.device] for s in stages for t in s.tasks),
        0.0,
        "bundle",
    )
    if policy.decision_log:
        Path(policy.decision_log).parent.mkdir(parents=True, exist_ok=True)
    return AdaptRuntime(server, policy, model, profile, start).start()
