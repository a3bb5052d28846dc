"""The adaptive runtime on a live Server: gateway hooks, the controller loop and the hot swap.

``AdaptHooks`` is what the gateway calls (``Gateway.adapt``): ``pin`` when a request starts
(it gets the stage pools of the current generation and keeps them to the end: traffic moves
to a new plan only at request boundaries), ``stage_done`` after each stage call, ``unpin`` and
``request_done`` at the end. ``Swapper.apply`` turns one ``AdaptPlan`` into another on the
running server: stages whose (tasks, class) stay keep their pool and only gain or lose
replicas; other stages get new pools whose workers are started and health-probed before any
request sees them; then the pool list flips in one step, requests pinned to the old
generation finish on the old workers, and only then are those stopped. Extra memory is
bounded by the workers of the stages that change, for the length of one drain.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from terrazzo.runtime.adapt.controller import Controller, Decision, DecisionLog
from terrazzo.runtime.adapt.model import TaskModel
from terrazzo.runtime.adapt.observe import Observer
from terrazzo.runtime.adapt.planner import AdaptPlan
from terrazzo.runtime.adapt.policy import AdaptPolicy
from terrazzo.runtime.adapt.recalibrate import Profile
from terrazzo.runtime.pool import Replica, ReplicaPool

if TYPE_CHECKING:
    from terrazzo.runtime.server import Server

log = logging.getLogger("terrazzo.runtime.adapt")


class AdaptHooks:
    """Gateway-side hooks: observation and request pinning (see the module docstring)."""

    def __init__(self, observer: Observer):
        self.observer = observer
        self._cond = threading.Condition()
        self._gen = 0
        self._active: Counter[int] = Counter()
        self.tasks_of: dict[int, tuple[str, ...]] = {}  # id(pool) -> its tasks

    # -- gateway calls --------------------------------------------------------------------
    def pin(self, pools: list[ReplicaPool], env: dict[str, Any]) -> tuple[int, list[ReplicaPool]]:
        """Start of a request's stage DAG: the generation and pools it will use throughout."""
        with self._cond:
            gen = self._gen
            self._active[gen] += 1
            pinned = list(pools)
        shape = ";".join(f"{k}{list(getattr(v, 'shape', ()))}" for k, v in sorted(env.items()))
        self.observer.arrival(shape)
        return gen, pinned

    def unpin(self, gen: int) -> None:
        with self._cond:
            self._active[gen] -= 1
            if self._active[gen] <= 0:
                del self._active[gen]
            self._cond.notify_all()

    def stage_done(
        self, pool: ReplicaPool, took_s: float, compute_s: float, queue_s: float
    ) -> None:
        """A stage call answered; ``compute_s``/``queue_s``: the worker's execution share and
        its wait for the device (from the raw-bytes hop's header, ``runtime.wire``)."""
        tasks = self.tasks_of.get(id(pool), (f"stage{pool.stage.index}",))
        self.observer.stage_done(tasks, pool.stage.device, took_s, compute_s, queue_s)

    def request_done(self, status: str, latency_s: float) -> None:
        if status in ("NOT_FOUND", "INVALID_ARGUMENT"):
            return  # the client's mistake, not the plan's
        self.observer.request_done(latency_s, status == "OK")

    # -- swap -----------------------------------------------------------------------------
    def flip(self, pools: list[ReplicaPool], new: Sequence[ReplicaPool]) -> int:
        """Replace the pool list in place (every holder sees it); returns the old generation."""
        with self._cond:
            pools[:] = list(new)
            old = self._gen
            self._gen += 1
            return old

    def wait_drained(self, gen: int, timeout_s: float) -> bool:
        """Block until no request pinned to generation ``gen`` or older is in flight."""
        end = time.monotonic() + timeout_s
        with self._cond:
            while any(g <= gen for g in self._active):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


class Swapper:
    """Applies AdaptPlans to a running Server (its launcher starts the workers)."""

    def __init__(self, server: Server, hooks: AdaptHooks, model: TaskModel):
        self.server = server
        self.hooks = hooks
        self.model = model
        self.peak_workers = 0
        self._drains: list[threading.Thread] = []
        self.drain_s: list[float] = []  # how long each swap's old generation took to finish

    def _start(self, reps: list[Replica]) -> None:
        srv = self.server
        launcher = srv._launcher  # noqa: SLF001 - the server's own launcher starts stage workers
        assert launcher is not None
        handles = launcher.start_many([(r.stage, r.index) for r in reps])
        for rep, h in zip(reps, handles, strict=True):
            rep.attach(h, srv.opts.max_message_bytes, srv._tls)  # noqa: SLF001

        def probe(rep: Replica) -> bool:
            return rep.probe(timeout_s=30.0)

        with futures.ThreadPoolExecutor(max_workers=max(1, len(reps))) as ex:
            ok = list(ex.map(probe, reps))
        for rep, good in zip(reps, ok, strict=True):
            if not good:
                raise RuntimeError(f"new worker {rep.name} does not answer health checks")
            rep.healthy_since = time.monotonic()

    @staticmethod
    def _stop(reps: Sequence[Replica]) -> None:
        handles = []
        for rep in reps:
            rep.detach()
            if rep.handle is not None:
                handles.append(rep.handle)
        if handles:
            with futures.ThreadPoolExecutor(max_workers=len(handles)) as ex:
                list(ex.map(lambda h: h.stop(), handles))

    def workers(self) -> int:
        return sum(len(p.replicas) for p in self.server.pools)

    def apply(self, old: AdaptPlan, new: AdaptPlan, drain_timeout_s: float) -> dict[str, float]:
        """Hot-swap ``old`` -> ``new``; returns timings and the worker counts it went through."""
        t0 = time.perf_counter()
        srv = self.server
        pools = srv.pools
        by_key = {(self.hooks.tasks_of.get(id(p)), p.stage.device, p.stage.index): p for p in pools}
        new_pools: list[ReplicaPool] = []
        fresh: list[Replica] = []
        grow: list[tuple[ReplicaPool, list[Replica]]] = []
        shrink: list[tuple[ReplicaPool, list[Replica]]] = []
        kept: set[int] = set()
        for i, st in enumerate(new.stages):
            keep = by_key.get((st.tasks, st.device, i))
            if keep is not None:
                kept.add(id(keep))
                new_pools.append(keep)
                have = len(keep.replicas)
                if st.replicas > have:
                    top = max((r.index for r in keep.replicas), default=-1)
                    add = [Replica(keep.stage, top + 1 + k) for k in range(st.replicas - have)]
                    grow.append((keep, add))
                    fresh += add
                elif st.replicas < have:
                    shrink.append((keep, keep.replicas[st.replicas :]))
                continue
            spec = self.model.stage_spec(i, st.tasks, st.device, st.replicas)
            pool = ReplicaPool(spec, srv.metrics, srv.stage_timeout_s, srv.opts.deadline_misses)
            self.hooks.tasks_of[id(pool)] = st.tasks
            new_pools.append(pool)
            fresh += pool.replicas
        self._start(fresh)
        t_ready = time.perf_counter()
        self.peak_workers = max(self.peak_workers, self.workers() + len(fresh))
        for pool, add in grow:
            with pool._lock:  # noqa: SLF001 - appended whole: acquire() sees all or none
                pool.replicas = pool.replicas + add
        for rep in fresh:
            pool = next(p for p in new_pools if p.stage is rep.stage)
            pool.set_healthy(rep, True)
        retired: list[Replica] = []
        for pool, drop in shrink:
            with pool._lock:  # noqa: SLF001
                pool.replicas = [r for r in pool.replicas if r not in drop]
            retired += drop
        gone = [p for p in pools if id(p) not in kept]
        old_gen = self.hooks.flip(pools, new_pools)
        srv.plan = replace(srv.plan, stages=tuple(p.stage for p in new_pools))
        srv.gateway.plan = srv.plan
        t_flip = time.perf_counter()
        old_reps = retired + [r for p in gone for r in p.replicas]

        def drain() -> None:
            # requests pinned to the old generation finish on the old workers; then they stop
            self.hooks.wait_drained(old_gen, drain_timeout_s)
            for rep in retired:  # replicas taken out of a kept pool: wait for their last calls
                end = time.monotonic() + drain_timeout_s
                while rep.outstanding > 0 and time.monotonic() < end:
                    time.sleep(0.005)
            self.drain_s.append(round(time.perf_counter() - t_flip, 4))
            self._stop(old_reps)
            for p in gone:
                self.hooks.tasks_of.pop(id(p), None)

        th = threading.Thread(target=drain, name="tz-adapt-drain", daemon=True)
        th.start()
        self._drains = [t for t in self._drains if t.is_alive()] + [th]
        return {
            "build_s": round(t_ready - t0, 4),
            "flip_s": round(t_flip - t_ready, 4),
            "swap_s": round(t_flip - t0, 4),
            "workers_started": float(len(fresh)),
            "workers_stopping": float(len(old_reps)),
        }

    def replace_runner(self, index: int, runner: Any, drain_timeout_s: float) -> dict[str, float]:
        """Hot-swap stage ``index`` onto another build (same tasks, class and replicas)."""
        t0 = time.perf_counter()
        srv = self.server
        pools = srv.pools
        old = pools[index]
        spec = replace(old.stage, runner=runner)
        pool = ReplicaPool(spec, srv.metrics, srv.stage_timeout_s, srv.opts.deadline_misses)
        pool.replicas = [Replica(spec, r.index) for r in old.replicas]
        self.hooks.tasks_of[id(pool)] = self.hooks.tasks_of.get(id(old), (f"stage{index}",))
        self._start(pool.replicas)
        for rep in pool.replicas:
            pool.set_healthy(rep, True)
        new = list(pools)
        new[index] = pool
        old_gen = self.hooks.flip(pools, new)
        srv.plan = replace(srv.plan, stages=tuple(p.stage for p in new))
        srv.gateway.plan = srv.plan
        t_flip = time.perf_counter()

        def drain() -> None:
            self.hooks.wait_drained(old_gen, drain_timeout_s)
            self.drain_s.append(round(time.perf_counter() - t_flip, 4))
            self._stop(old.replicas)
            self.hooks.tasks_of.pop(id(old), None)

        th = threading.Thread(target=drain, name="tz-adapt-drain", daemon=True)
        th.start()
        self._drains = [t for t in self._drains if t.is_alive()] + [th]
        return {"swap_s": round(t_flip - t0, 4), "workers_started": float(len(pool.replicas))}

    def join(self, timeout_s: float = 30.0) -> None:
        """Wait for old generations to drain and their workers to stop."""
        for th in self._drains:
            th.join(timeout_s)


class AdaptRuntime:
    """Observe → recalibrate → re-plan → hot-swap, on a background thread of a live Server.

    Args:
        server: a running Server whose pools match ``plan`` stage by stage.
        policy: the adaptation policy.
        model: the served model as tasks.
        profile: prior latency per (task, class), recalibrated while serving.
        plan: the plan the server was started with.
    """

    def __init__(
        self,
        server: Server,
        policy: AdaptPolicy,
        model: TaskModel,
        profile: Profile,
        plan: AdaptPlan,
        on_decision: Callable[[dict[str, object]], None] | None = None,
    ):
        self.server = server
        self.policy = policy
        self.model = model
        self.profile = profile
        self.plan = plan
        self.observer = Observer(policy.window_s)
        self.hooks = AdaptHooks(self.observer)
        for pool, st in zip(server.pools, plan.stages, strict=True):
            self.hooks.tasks_of[id(pool)] = st.tasks
        self.controller = Controller(policy, profile, model.tasks)
        # (task, class) -> runner that replaced its build while serving (swap_runner): re-plans
        # onto that class use it
        self._runner_overrides: dict[tuple[str, str], Any] = {}
        base_runner = model.task_runner
        model = replace(
            model,
            task_runner=lambda t, d: self._runner_overrides.get((t, d)) or base_runner(t, d),
        )
        self.model = model
        self.swapper = Swapper(server, self.hooks, model)
        self.log = DecisionLog(policy.decision_log)
        self.on_decision = on_decision
        self.decisions: list[Decision] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one decision / swap at a time
        self._flipped_at = -1.0  # monotonic time traffic last moved to a new plan
        self._folded_to = -1.0  # stage calls up to this time are in the profile
        self.errors: list[str] = []
        self.retunes: list[dict[str, object]] = []  # RetuneResult.to_json of each re-tune
        self.sources: dict[str, dict[str, Any]] = {}  # task -> what its build came from
        self.builds: Any = None  # builds.StageBuilds of a served bundle (attach sets it)
        self._retune_thread: threading.Thread | None = None
        rp = policy.retune
        # re-tuned and rebuilt libraries: created when the first one is written
        self.work_dir = Path(
            rp.work_dir
            if rp is not None and rp.work_dir
            else Path(tempfile.gettempdir()) / f"tz-adapt-{os.getpid()}-{id(self):x}"
        )
        self.tuning_db = str(
            rp.database if rp is not None and rp.database else self.work_dir / "tuning.jsonl"
        )
        server.gateway.adapt = self.hooks  # --- adapt: the gateway's hook point

    # -- live inputs -----------------------------------------------------------------------
    def swap_runner(
        self,
        index: int,
        runner: Any,
        why: str = "retune",
        expect_tasks: tuple[str, ...] | None = None,
        extra: dict[str, object] | None = None,
    ) -> dict[str, object] | None:
        """Serve stage ``index`` with ``runner`` from now on (e.g. a re-tuned build), logged.

        Later re-plans build that stage's tasks with the new runner too. With
        ``expect_tasks``, nothing is swapped (None) when a re-plan since regrouped that stage.
        """
        with self._lock:
            stage = self.server.pools[index]
            tasks = self.hooks.tasks_of.get(id(stage), (f"stage{index}",))
            if expect_tasks is not None and tasks != expect_tasks:
                return None
            timings = self.swapper.replace_runner(index, runner, self.server.opts.default_timeout_s)
            if len(tasks) == 1:
                self._runner_overrides[(tasks[0], stage.stage.device)] = runner
            entry: dict[str, object] = {
                "time": time.time(),
                "reason": why,
                "detail": f"stage {index} ({'+'.join(tasks)}) swapped onto a new build",
                "old": self.plan.to_json(),
                "new": self.plan.to_json(),
                "predicted_usd_per_hour": round(self.plan.usd_per_hour, 6),
                "predicted_latency_s": round(self.plan.latency_s, 6),
                "swap_s": timings["swap_s"],
                "runner": runner.to_json() if hasattr(runner, "to_json") else str(runner),
                **(extra or {}),
            }
            self.log.write(entry)
            if self.on_decision is not None:
                self.on_decision(entry)
            return entry

    def retune_hottest(self, db_path: str, out_dir: str, **kw: Any) -> dict[str, object] | None:
        """Re-tune the stage with the most measured compute time, and swap it in when kept.

        Single-task stages whose source is known can be re-tuned: a served bundle's stages
        (their IR is read from the bundle, ``builds``) and ``relax_library`` stages registered
        in ``sources[task]`` (``ir`` the IRModule as TVM JSON in a file, ``inputs`` as
        (name, shape, dtype), optional ``target``). Every attempt is recorded in ``retunes``;
        one that keeps the current build is logged with reason ``retune-kept``. Returns the
        log entry of the swap, or None when nothing was swapped.
        """
        from terrazzo.runtime.adapt.retune import retune_stage
        from terrazzo.runtime.plan import RunnerSpec

        snap = self.observer.snapshot()
        busy: dict[tuple[str, ...], float] = {}
        for (tasks, _dev), w in snap.stages.items():
            busy[tasks] = busy.get(tasks, 0.0) + w.compute_mean_s * w.samples
        pools = list(self.server.pools)
        order = sorted(
            range(len(pools)),
            key=lambda i: -busy.get(self.hooks.tasks_of.get(id(pools[i]), ()), 0.0),
        )
        for i in order:
            stage = pools[i].stage
            spec = stage.runner
            tasks = self.hooks.tasks_of.get(id(pools[i]), ())
            src = self.sources.get(tasks[0]) if len(tasks) == 1 else None
            if src is None:
                continue
            if "bundle_stage" in src:  # a bundle stage: IR from the bundle, lifted weights
                if self.builds is None or not spec.factory.endswith(":bundle_stage"):
                    continue
                bi = int(src["bundle_stage"])
                ir = self.builds.ir_json(bi)
                target = self.builds.target_of(stage.device)
                extra_kw: dict[str, Any] = {"lift_weights": True, "n_inputs": int(src["n_inputs"])}
                lib_key = "library"
            elif spec.factory.endswith(":relax_library"):
                ir = Path(str(src["ir"])).read_text()
                target = dict(src.get("target", {"kind": "llvm"}))
                extra_kw = {}
                lib_key = "path"
            else:
                continue
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            out = Path(out_dir) / f"stage{i}_retuned_{time.time_ns()}.so"
            res = retune_stage(ir, target, db_path, out, src.get("inputs"), **extra_kw, **kw)
            got = res.to_json()
            got["stage"] = i
            got["tasks"] = list(tasks)
            self.retunes.append(got)
            if res.library is None:
                entry: dict[str, object] = {
                    "time": time.time(),
                    "reason": "retune-kept",
                    "detail": f"stage {i} ({'+'.join(tasks)}): {res.detail}",
                    "old": self.plan.to_json(),
                    "new": self.plan.to_json(),
                    "predicted_usd_per_hour": round(self.plan.usd_per_hour, 6),
                    "predicted_latency_s": round(self.plan.latency_s, 6),
                    "swap_s": None,
                    "retune": got,
                }
                self.log.write(entry)
                return None
            new = RunnerSpec(
                spec.factory, {**spec.kwargs, lib_key: res.library}, spec.execute_delay_s
            )
            done = self.swap_runner(
                i, new, "retune", expect_tasks=tasks,
                extra={"retune": got, "detail_retune": res.detail},
            )  # fmt: skip
            if done is not None and self.builds is not None and "bundle_stage" in src:
                self.builds.record(int(src["bundle_stage"]), target, res.library, "retune")
            return done
        return None

    def _retune_loop(self) -> None:
        rp = self.policy.retune
        assert rp is not None
        Path(self.work_dir).mkdir(parents=True, exist_ok=True)
        while not self._stop.wait(rp.every_s):
            try:
                self.retune_hottest(
                    self.tuning_db, str(self.work_dir), trials=rp.budget_trials,
                    max_kernels=rp.max_kernels, min_speedup=1.0 + rp.min_gain,
                    timeout_s=rp.timeout_s,
                )  # fmt: skip
            except Exception as e:  # the server keeps serving the builds it has
                log.exception("adapt re-tune failed")
                self.errors.append(f"retune: {type(e).__name__}: {e}")

    def set_prices(self, prices: dict[str, float]) -> None:
        """A price change (USD/hour per device of a class)."""
        self.controller.prices.update(prices)

    def set_available(self, device: str, count: int | None) -> None:
        """Availability of a class (0: gone, e.g. a preemption notice; None: unlimited)."""
        self.controller.available[device] = count

    def unhealthy_classes(self) -> set[str]:
        """Classes in the plan with no healthy worker in a stage (dead, hung, given up)."""
        bad = set()
        for pool in self.server.pools:
            if pool.replicas and all(r.gave_up or r.condemned for r in pool.replicas):
                bad.add(pool.stage.device)
        return bad

    # -- loop ------------------------------------------------------------------------------
    def start(self) -> AdaptRuntime:
        self._thread = threading.Thread(target=self._loop, name="tz-adapt", daemon=True)
        self._thread.start()
        if self.policy.retune is not None:  # re-tune on a timer, beside the controller
            self._retune_thread = threading.Thread(
                target=self._retune_loop, name="tz-adapt-retune", daemon=True
            )
            self._retune_thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._retune_thread is not None:  # an attempt under way ends within its timeout
            self._retune_thread.join(timeout=30)
        self.swapper.join()
        self.server.gateway.adapt = None

    def _loop(self) -> None:
        while not self._stop.wait(self.policy.interval_s):
            try:
                self.tick()
            except Exception as e:  # the server keeps serving the plan it has
                log.exception("adapt tick failed")
                self.errors.append(f"{type(e).__name__}: {e}")

    def tick(self) -> Decision | None:
        """One control step (also callable directly, e.g. from tests)."""
        with self._lock:
            snap = self.observer.snapshot(since=self._flipped_at, fresh_since=self._folded_to)
            self._folded_to = snap.t
            decision = self.controller.decide(snap, self.plan, self.unhealthy_classes())
            if decision is None:
                return None
            t_decided = time.monotonic()
            workers_before = self.swapper.workers()
            built_before = len(self.builds.events) if self.builds is not None else 0
            try:
                timings = self.swapper.apply(
                    self.plan, decision.new, self.server.opts.default_timeout_s
                )
            except Exception:
                # a build the plan needs could not be made (no IR, a build error): keep serving
                # the plan there is and do not choose that plan again for a while
                self.controller.avoid(decision.new)
                raise
            built = self.builds.events[built_before:] if self.builds is not None else []
            decision = replace(
                decision,
                swap_s=timings["swap_s"],
                extra={
                    "t_monotonic": round(t_decided, 4),
                    "timings": timings,
                    "workers_before": workers_before,
                    "workers_after": self.swapper.workers(),
                    **({"built": [e for e in built if e.get("from") == "ir"]} if built else {}),
                },
            )
            self.plan = decision.new
            self._flipped_at = time.monotonic()
            self.decisions.append(decision)
            entry = decision.to_json()
            self.log.write(entry)
            if self.on_decision is not None:
                self.on_decision(entry)
            log.info(
                "adapt: %s: %s -> %s",
                decision.reason,
                decision.old.describe(),
                decision.new.describe(),
            )
            return decision
