"""``terrazzo serve --adapt POLICY.yaml``: attach the adaptive runtime to a served bundle.

A bundle's compiled stages are the tasks; the controller may move each to any class of the
policy's fleet, group neighbours into one worker, and change replica counts. A class without a
``target`` runs the stage's host build (the bundle's own code); a class with one runs a build
for that target, compiled from the stage's IR in the bundle when the bundle has none
(``builds.py``). The prior per (stage, class) is the bundle's predicted stage latency where the
manifest has one, else 1 ms; measurements replace it. With ``retune`` in the policy, the
hottest stage is re-tuned in the background every ``retune.every_s`` (``retune.py``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from terrazzo.errors import ServingError
from terrazzo.runtime.adapt.builds import StageBuilds
from terrazzo.runtime.adapt.model import bundle_task_model
from terrazzo.runtime.adapt.planner import AdaptPlan, StagePlan
from terrazzo.runtime.adapt.policy import AdaptPolicy
from terrazzo.runtime.adapt.recalibrate import Profile
from terrazzo.runtime.adapt.runtime import AdaptRuntime
from terrazzo.runtime.plan import RunnerSpec

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
    builds, bundle_index = _stage_builds(server, policy)
    base = bundle_task_model(plan)
    model = base
    if builds is not None:
        by_task = {f"stage{s.index}": s for s in plan.stages}

        def runner(task: str, device: str) -> RunnerSpec:
            return builds.runner(by_task[task].runner, bundle_index[task], device)

        model = replace(base, task_runner=runner)
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
    rt = AdaptRuntime(server, policy, model, profile, start)
    if builds is not None:
        rt.builds = builds
        builds.work_dir = rt.work_dir / "builds"
        if policy.retune is not None:
            builds.tuning_db = rt.tuning_db
            _seed_tuning_db(rt.tuning_db, builds)
        for s in plan.stages:
            rt.sources[f"stage{s.index}"] = {
                "bundle_stage": bundle_index[f"stage{s.index}"],
                "n_inputs": len(s.inputs),
            }
    return rt.start()


def _stage_builds(server: Server, policy: AdaptPolicy) -> tuple[StageBuilds | None, dict[str, int]]:
    """The bundle's builds per (stage, class), when the server runs a bundle's stages."""
    plan = server.plan
    runners = [s.runner for s in plan.stages]
    if not plan.bundle_path or not all(r.factory.endswith(":bundle_stage") for r in runners):
        return None, {}
    from terrazzo.bundle import read_manifest

    trust = runners[0].kwargs.get("trust_key")
    manifest = read_manifest(plan.bundle_path, trust_key=trust)
    targets = {d: c.target for d, c in policy.fleet.items()}
    index = {f"stage{s.index}": int(s.runner.kwargs["index"]) for s in plan.stages}
    builds = StageBuilds(manifest, plan.bundle_path, trust, targets, ".")
    return builds, index


def _seed_tuning_db(path: str, builds: StageBuilds) -> None:
    """Start the re-tune database with the bundle's own records (when it does not exist yet)."""
    p = Path(path)
    if p.exists() or not (builds.manifest.get("tuning") or {}).get("count"):
        return
    from terrazzo.bundle import read_member_text

    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(
        read_member_text(builds.bundle_path, "tuning/records.jsonl", trust_key=builds.trust_key)
    )
