"""Hot swap of an LLM's decode worker: new sequences move at once, in-flight ones finish where they are.

An LLM bundle is served by prefill workers and one decode worker (``openai_front.LLMService``).
Swapping the decode worker (onto another build, class or configuration) is the one place where
a request boundary is not enough: a sequence's KV cache lives on the decode worker for its whole
generation. Terrazzo does not migrate KV caches; it lets every in-flight sequence finish where it
is (the issue allows either). ``DecodeSwap``:

1. ``start``: starts the new decode worker (same stage spec, optionally another runner) and
   waits until it answers; with continuous batching, its engine is calibrated before any
   sequence reaches it;
2. ``flip``: points the text generator at the new worker. ``TextGenerator.stream_ids`` takes
   the decode phase (and batching engine) once, when a sequence starts, and keeps it to the
   end, so sequences already decoding stay on the old worker with their KV cache, and every
   sequence that starts later runs on the new one. Without continuous batching the service
   serves one request at a time under ``LLMService.lock``; the flip takes that lock, so it
   falls between two requests;
3. ``drain``: waits until the old engine has no sequence left (each has delivered its last
   token), then stops the old worker. Extra memory: one decode worker, for one drain.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from terrazzo.errors import ServingError
from terrazzo.runtime.plan import RunnerSpec


class DecodeSwap:
    """Move an ``LLMService``'s decode phase onto a new worker (see the module docstring).

    Args:
        service: the running LLM service.
        runner: the new worker's runner (default: the current decode worker's own spec).
    """

    def __init__(self, service: Any, runner: RunnerSpec | None = None):
        self.service = service
        spec, replica = service.jobs[-1]
        self.spec = replace(spec, runner=runner) if runner is not None else spec
        self.replica = replica + 1
        self.timings: dict[str, float] = {}
        self.in_flight_at_flip = 0
        self._new: tuple[Any, Any, Any] | None = None  # worker, phase, batch engine
        self._old: tuple[Any, Any, Any] | None = None
        self._t0 = time.perf_counter()

    def start(self) -> DecodeSwap:
        from terrazzo.runtime.llm_batch import RemoteBatchDecode
        from terrazzo.runtime.openai_front import RemotePhase

        svc = self.service
        t0 = time.perf_counter()
        (worker,) = svc.launcher.start_many([(self.spec, self.replica)])
        phase = RemotePhase(worker.address, self.spec.index, self.spec.inputs, svc.token)
        batch = None
        if svc.batching:
            batch = RemoteBatchDecode(phase)
            batch.calibrate()  # before any sequence joins (calibration needs an idle engine)
        self._new = (worker, phase, batch)
        self.timings["start_s"] = round(time.perf_counter() - t0, 4)
        return self

    def flip(self) -> DecodeSwap:
        from terrazzo.runtime.llm_text import SessionDecode

        if self._new is None:
            raise ServingError("DecodeSwap.flip before start")
        svc = self.service
        gen = svc.generator
        worker, phase, batch = self._new
        t0 = time.perf_counter()
        with svc.lock:  # without batching: between two requests; with it, a no-op lock
            self._old = (svc.workers[-1], svc.phases[-1], svc.batch)
            self.in_flight_at_flip = svc.batch.in_flight() if svc.batch is not None else 0
            if batch is not None:
                gen.batch, gen.decode = batch, phase
            else:
                gen.decode = SessionDecode(phase)
            svc.batch = batch
            svc.workers[-1], svc.phases[-1] = worker, phase
            svc.jobs[-1] = (self.spec, self.replica)
        self.timings["flip_s"] = round(time.perf_counter() - t0, 6)
        self._t_flip = time.perf_counter()
        return self

    def drain(self, timeout_s: float = 120.0) -> DecodeSwap:
        """Wait for the old worker's sequences to finish, then stop it."""
        if self._old is None:
            raise ServingError("DecodeSwap.drain before flip")
        worker, phase, batch = self._old
        end = time.monotonic() + timeout_s
        while batch is not None and batch.in_flight() > 0 and time.monotonic() < end:
            time.sleep(0.01)
        left = batch.in_flight() if batch is not None else 0
        self.timings["drain_s"] = round(time.perf_counter() - self._t_flip, 4)
        phase.close()
        worker.stop()
        if left:
            raise ServingError(f"decode swap: {left} sequence(s) still running after {timeout_s} s")
        return self


def swap_decode(
    service: Any, runner: RunnerSpec | None = None, drain_timeout_s: float = 120.0
) -> dict[str, float]:
    """Start, flip and drain in one call; returns the timings (``start_s``, ``flip_s``,
    ``drain_s``) and how many sequences were decoding on the old worker at the flip."""
    sw = DecodeSwap(service, runner).start().flip().drain(drain_timeout_s)
    return {**sw.timings, "in_flight_at_flip": float(sw.in_flight_at_flip)}
