"""Runtime: a single-stage model run inside the gateway process (``serve --stage-in-gateway``): no worker hop.

For a one-stage model the gateway→worker hop is pure overhead (a loopback gRPC call, a copy of
every tensor each way and a second process's scheduling). ``InProcessGateway`` is a ``Gateway``
whose stage DAG is that one stage, run in its own process by the very servicer a worker would
use (``terrazzo.runtime.worker``'s, so the runner, the one-at-a-time lock, dynamic batching,
priorities, queue timeouts and ``StageStats`` behave exactly as in a worker). Everything in
front of the stage (admission, validation, deadlines, shared memory, statistics, metrics,
HTTP) is the Gateway's own.

What is given up: the isolation of a worker process. A stage that crashes the interpreter
takes the gateway with it, and there is no supervisor restart or replica to retry on, so this
is an opt-in for models whose stage is trusted and cheap relative to a hop. Only single-stage
plans qualify; the bundle is still verified before its code loads.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import numpy as np

from terrazzo.errors import ServingError
from terrazzo.ir import V2_TO_DTYPE
from terrazzo.runtime.gateway import Gateway, InferError
from terrazzo.runtime.launcher import WorkerOptions, worker_config
from terrazzo.runtime.plan import ServingPlan
from terrazzo.runtime.tensors import WireTensor, numpy_dtype, to_numpy
from terrazzo.runtime.wire import tensor_view

__all__ = ["InProcessGateway", "check_in_gateway"]


def check_in_gateway(plan: ServingPlan) -> None:
    """Raise ServingError (one line) unless ``plan`` can run in the gateway process."""
    if len(plan.stages) != 1:
        raise ServingError(
            f"--stage-in-gateway needs a single-stage model; {plan.model_name!r} has "
            f"{len(plan.stages)} stages (serve it with workers)"
        )
    if plan.stages[0].replicas != 1:
        raise ServingError(
            f"--stage-in-gateway runs one copy of the stage; {plan.model_name!r} asks for "
            f"{plan.stages[0].replicas} replicas"
        )


def _array(name: str, tensor: WireTensor) -> np.ndarray:
    """``to_numpy`` with the numeric case first (a zero-copy view)."""
    dtype = _NUMERIC.get(tensor.datatype)
    if dtype is None:
        return to_numpy(name, tensor)
    arr = np.frombuffer(tensor.raw, dtype=dtype)
    return arr if len(tensor.shape) == 1 else arr.reshape(tensor.shape)


_NUMERIC = {k: numpy_dtype(k) for k in V2_TO_DTYPE if k != "BYTES"}


class _StageContext:
    """What the worker servicer needs of a gRPC context, over the client's: aborts become
    InferError (the gateway answers them), liveness is the client call's."""

    def __init__(self, context: Any):
        self._context = context

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise InferError(code, details)

    def is_active(self) -> bool:
        return bool(self._context.is_active())


class InProcessGateway(Gateway):
    """A Gateway that runs its model's one stage in this process (see the module docstring).

    Args:
        worker_opts: the options a worker of this stage would get (batching, queue bound).
        Other arguments as ``Gateway``'s (its replica pools are empty: there are no workers).
    """

    def __init__(
        self, plan: ServingPlan, metrics: Any, opts: Any, worker_opts: WorkerOptions, **kw: Any
    ):
        check_in_gateway(plan)
        super().__init__(plan, [], metrics, opts, **kw)
        from terrazzo.runtime.worker import _WorkerServicer

        self.stage = plan.stages[0]
        self.servicer = _WorkerServicer(worker_config(self.stage, worker_opts))
        self._name = f"stage{self.stage.index}/gateway"
        self._latency = metrics.stage_latency.labels(
            model=plan.model_name, stage=str(self.stage.index), device=self.stage.device
        )
        self._busy = metrics.device_busy.labels(device=self.stage.device)
        self._tally = metrics.tally  # issue 14: folded into _latency and _busy at scrape time

    def close(self) -> None:
        """Stop the stage's batcher, if any."""
        if self.servicer.batcher is not None:
            self.servicer.batcher.close()

    def _execute(
        self,
        env: dict[str, WireTensor],
        deadline: float,
        context: Any,
        request_id: str,
        workers: list[str],
        fwd: dict[str, int] | None = None,
    ) -> None:
        workers.append(self._name)
        t0 = time.perf_counter()
        values = {n: _array(n, env[n]) for n in self.stage.inputs}
        result, compute_s, _, _ = self.servicer._compute(  # noqa: SLF001  the worker's own path
            _StageContext(context),
            values,
            fwd.get("priority", 0) if fwd else 0,
            fwd.get("timeout") if fwd else None,
        )
        for name in self.stage.outputs:
            out = result.get(name)
            if out is None:
                raise InferError(
                    grpc.StatusCode.INTERNAL, f"stage {self.stage.index} did not produce {name!r}"
                )
            env[name] = tensor_view(out)  # copied once, into the reply (kserve_wire)
        self._tally.observe(self._latency, time.perf_counter() - t0)
        if compute_s > 0:
            self._tally.inc(self._busy, compute_s)
            if self.cost is not None:
                self.cost.charge(self.stage.index, compute_s)
        if time.monotonic() > deadline:
            raise InferError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded in stage 0")
