"""SIMULATED device classes for the adaptive runtime's scenario benchmark and tests.

THESE ARE NOT ACCELERATORS. Every "device class" here is a CPU worker process that does a
small real computation (so answers can be checked) and then sleeps for the time the class
is declared to take for the task, times an injected slowdown read from a control file. The
worker's own lock makes one replica execute one request at a time, as one device would, so
queueing and replica counts behave like a real fleet's. Use it to test the controller and
the hot swap, never to claim device speed.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from terrazzo.ir import TensorSpec
from terrazzo.runtime.adapt.model import TaskModel
from terrazzo.runtime.plan import RunnerSpec
from terrazzo.runtime.runners import Runner

DIM = 16
SIM_BANNER = (
    "SIMULATED DEVICES: every device class is a CPU worker process with an injected "
    "per-class service time (sleep) and injected slowdowns; no accelerator is used"
)


def _weights(task: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(task.encode()))
    return (rng.standard_normal((DIM, DIM)) / np.sqrt(DIM)).astype(np.float32)


def value_name(tasks: Sequence[str], i: int) -> str:
    """Value flowing into task ``i`` (``x`` first, ``y`` after the last task)."""
    if i == 0:
        return "x"
    return "y" if i == len(tasks) else f"{tasks[i - 1]}_out"


def reference(tasks: Sequence[str], x: np.ndarray) -> np.ndarray:
    """What the served chain must answer for ``x`` (the wrong-answer check)."""
    for t in tasks:
        x = np.tanh(x @ _weights(t))
    return x


class Control:
    """The injected faults: per-class slowdown factors and lost classes (a JSON file)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._mtime = -1.0
        self.slow: dict[str, float] = {}
        self.lost: set[str] = set()
        self._checked = 0.0

    def write(self, slow: Mapping[str, float] | None = None, lost: Sequence[str] = ()) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"slow": dict(slow or {}), "lost": list(lost)}))
        os.replace(tmp, self.path)

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < 0.05:
            return
        self._checked = now
        try:
            m = self.path.stat().st_mtime
        except OSError:
            return
        if m != self._mtime:
            self._mtime = m
            try:
                d = json.loads(self.path.read_text())
            except (OSError, ValueError):
                return
            self.slow = {k: float(v) for k, v in d.get("slow", {}).items()}
            self.lost = set(d.get("lost", []))


def sim_task(
    task: str, device: str, latency_s: float, control: str, inputs: str, output: str
) -> Runner:
    """Worker-side runner of one task on one simulated class (see the module docstring)."""
    w = _weights(task)
    ctl = Control(control)

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ctl.refresh()
        if device in ctl.lost:  # the class is gone: its workers die
            os._exit(3)
        y = np.tanh(np.asarray(values[inputs], dtype=np.float32) @ w)
        time.sleep(latency_s * ctl.slow.get(device, 1.0))
        return {output: y.astype(np.float32)}

    return run


def sim_model(latency_s: Mapping[str, Mapping[str, float]], control: str | Path) -> TaskModel:
    """A chain of simulated tasks; ``latency_s[task][class]`` is the true service time."""
    tasks = tuple(latency_s)
    names = {t: (value_name(tasks, i), value_name(tasks, i + 1)) for i, t in enumerate(tasks)}

    def runner(task: str, device: str) -> RunnerSpec:
        src, dst = names[task]
        return RunnerSpec(
            "terrazzo.runtime.adapt.sim:sim_task",
            {
                "task": task,
                "device": device,
                "latency_s": float(latency_s[task][device]),
                "control": str(control),
                "inputs": src,
                "output": dst,
            },
        )

    return TaskModel(
        tasks=tasks,
        inputs={t: (names[t][0],) for t in tasks},
        outputs={t: (names[t][1],) for t in tasks},
        task_runner=runner,
    )


def sim_tensors(batch: int = 1) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Model input/output tensors of a simulated chain."""
    return (TensorSpec("x", "FP32", (-1, DIM)),), (TensorSpec("y", "FP32", (-1, DIM)),)
