"""Runtime: a Triton-style dynamic batcher that merges a stage worker's queued requests into one execution.

A stage worker (``terrazzo.runtime.worker``) hands every request to a ``DynamicBatcher``; one
scheduler thread forms batches and runs the stage once per batch. Requests merge when every
input's non-batch dimensions and dtype match; their inputs are concatenated on dimension 0, the
stage runs once, and every output is split back on dimension 0 in request order. A request that
matches nobody runs alone, exactly as it would unbatched.

Batching is only done where the stage's signature proves the batch dimension
(``batch_dimension``): dimension 0 of every input and every output is one plain symbol (``batch``)
that appears nowhere else. Whether rows of a batch are independent (no op mixes them, as in
batch norm in training mode) cannot be read from shapes; as in Triton, the operator asserts it
by turning batching on (``max_batch_size > 0``), and it is off by default.

Scheduling follows Triton's ``dynamic_batching`` model config: ``max_batch_size`` (rows of one
execution), ``preferred_batch_sizes`` (execute as soon as one of them can be formed),
``max_queue_delay_us`` (how long the oldest request may wait for a fuller batch; 0 executes
whatever is queued as soon as the stage is free), ``priority_levels`` (1 is highest; 0 in a
request means ``default_priority_level``) and a queue policy (``default_queue_timeout_us``,
``timeout_action`` REJECT or DELAY).

A stage built at a few static batch sizes (bucketed builds, ``codegen._buckets``) runs a batch
of ``n`` rows on the smallest bucket ``>= n``, padded: a 17-row batch on the 32-row build costs
what 32 rows cost. Given the stage's ``bucket_sizes``, the batcher never forms a batch above
the largest bucket (that would run the much slower symbolic build) and cuts each batch at the
prefix with the fewest padded rows per real row, the longest among equals: a prefix that fills
a bucket exactly wins, so 17 queued rows run as 16 now and 1 at the head of the next batch.
Buckets are CPU builds, whose time grows with the rows they compute, padding included. (Costs
measured while serving are not used: on a shared host they vary with load more than between
buckets, and a bucket timed once under load would never be chosen again.)
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from terrazzo.errors import ServingError

__all__ = [
    "BatchDimension",
    "BatchRejectedError",
    "BatchingOptions",
    "DynamicBatcher",
    "StageStats",
    "batch_dimension",
    "options_for_stage",
]

log = logging.getLogger("terrazzo.runtime")

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TIMEOUT_ACTIONS = ("REJECT", "DELAY")


@dataclass(frozen=True, slots=True)
class BatchingOptions:
    """Dynamic batching of one stage (Triton's ``max_batch_size`` + ``dynamic_batching``).

    Off unless ``max_batch_size > 0`` (Triton's default is off too: merging is only right
    for models whose batch rows are independent, which the operator must vouch for).
    """

    max_batch_size: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    priority_levels: int = 0
    default_priority_level: int = 0
    default_queue_timeout_us: int = 0  # 0: a request may wait in the queue indefinitely
    timeout_action: str = "REJECT"

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "preferred_batch_sizes",
            tuple(sorted({int(s) for s in self.preferred_batch_sizes})),
        )
        for name in (
            "max_batch_size",
            "max_queue_delay_us",
            "priority_levels",
            "default_priority_level",
            "default_queue_timeout_us",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ServingError(f"batching option {name} must be an integer >= 0, got {value!r}")
        bad = [s for s in self.preferred_batch_sizes if s < 1 or s > self.max_batch_size]
        if bad:
            raise ServingError(
                f"batching option preferred_batch_sizes must lie in 1..max_batch_size "
                f"({self.max_batch_size}), got {bad}"
            )
        if self.default_priority_level > self.priority_levels:
            raise ServingError(
                f"batching option default_priority_level ({self.default_priority_level}) must be "
                f"<= priority_levels ({self.priority_levels})"
            )
        if self.timeout_action not in _TIMEOUT_ACTIONS:
            raise ServingError(
                f"batching option timeout_action must be one of {list(_TIMEOUT_ACTIONS)}, "
                f"got {self.timeout_action!r}"
            )

    @property
    def enabled(self) -> bool:
        """True when requests may be merged (``max_batch_size > 0``)."""
        return self.max_batch_size > 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["preferred_batch_sizes"] = list(self.preferred_batch_sizes)
        return d

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> BatchingOptions:
        known = set(BatchingOptions.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ServingError(f"unknown batching option(s) {unknown}; known: {sorted(known)}")
        kw = dict(d)
        if "preferred_batch_sizes" in kw:
            kw["preferred_batch_sizes"] = tuple(kw["preferred_batch_sizes"])
        return BatchingOptions(**kw)


def options_for_stage(batching: Mapping[str, Any] | None, stage_index: int) -> BatchingOptions:
    """Pick a stage's options from a worker config's ``batching`` mapping.

    The mapping holds ``"*"`` (every stage) and/or ``"<index>"`` (that stage) -> options JSON.
    """
    if not batching:
        return BatchingOptions()
    chosen = batching.get(str(stage_index), batching.get("*"))
    return BatchingOptions.from_json(chosen) if chosen else BatchingOptions()


@dataclass(frozen=True, slots=True)
class BatchDimension:
    """The proven batch dimension of a stage: symbol of dimension 0 and its declared range."""

    symbol: str
    min_size: int
    max_size: int


def batch_dimension(inputs: Sequence[Any], outputs: Sequence[Any]) -> BatchDimension | str:
    """Prove that a stage batches on dimension 0, or say why not.

    ``inputs``/``outputs`` are ``TensorSpec``-like (``dims``: per-dimension symbol or ``""``,
    ``bounds``: per-dimension ``(lo, hi)``). Returns the batch dimension, or a sentence naming
    the tensor that rules batching out.
    """
    if not inputs or not outputs:
        return "the stage has no inputs or no outputs"
    symbol: str | None = None
    for kind, specs in (("input", inputs), ("output", outputs)):
        for spec in specs:
            dims = tuple(getattr(spec, "dims", ()) or ())
            if not dims or not dims[0]:
                return f"{kind} {spec.name!r} has a fixed dimension 0 (no batch dimension)"
            if not _SYMBOL.fullmatch(dims[0]):
                return f"{kind} {spec.name!r} has dimension 0 {dims[0]!r}, not a plain symbol"
            if symbol is None:
                symbol = dims[0]
            elif dims[0] != symbol:
                return f"{kind} {spec.name!r} has dimension 0 {dims[0]!r}, not {symbol!r}"
            word = re.compile(rf"\b{re.escape(symbol)}\b")
            if any(word.search(d) for d in dims[1:]):
                return f"{kind} {spec.name!r} uses {symbol!r} beyond dimension 0"
    assert symbol is not None
    lo, hi = 1, 1 << 62
    for spec in inputs:
        bounds = tuple(getattr(spec, "bounds", ()) or ())
        if bounds:
            lo, hi = max(lo, int(bounds[0][0])), min(hi, int(bounds[0][1]))
    if hi < 2:
        return f"the batch dimension {symbol!r} allows at most {hi} row(s)"
    return BatchDimension(symbol, lo, hi)


class BatchRejectedError(Exception):
    """A request the batcher refused or dropped; ``code`` is the gRPC status name to answer."""

    def __init__(self, message: str, code: str = "UNAVAILABLE"):
        super().__init__(message)
        self.code = code


@dataclass(eq=False)
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    key: tuple[Any, ...] | None  # None: cannot merge with anything (runs alone)
    level: int
    seq: int
    enqueued_s: float
    timeout_at_s: float | None
    is_active: Callable[[], bool] | None
    delayed: bool = False
    taken: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    outputs: dict[str, np.ndarray] | None = None
    error: BaseException | None = None
    queue_s: float = 0.0
    compute_s: float = 0.0  # this request's share of its execution's compute time
    batch_rows: int = 0  # rows of the execution it ran in

    def order(self) -> tuple[int, int, int]:
        return (1 if self.delayed else 0, self.level, self.seq)


class StageStats:
    """A stage's counters since its worker started, in base units and Triton's names.

    ``request_count``: requests answered successfully; ``inference_count``: their rows (a
    request of batch 3 counts 3, as Triton counts; a request without a batch dimension
    counts 1); ``execution_count``: stage executions; ``batch_stats``: executions and compute
    seconds per executed batch size (rows); ``queue_s`` / ``compute_infer_s``: cumulative
    seconds requests waited before their execution / executions ran.
    """

    def __init__(self, name: str, max_batch_size: int = 0):
        self.name = name
        self.max_batch_size = max_batch_size
        self._lock = threading.Lock()
        self._requests = 0
        self._inference_count = 0
        self._execution_count = 0
        self._failures = 0
        self._rejected = 0
        self._queue_s = 0.0
        self._compute_s = 0.0
        self._batch_hist: dict[int, list[float]] = {}  # rows -> [executions, compute s]

    def record(self, requests: Sequence[tuple[int, float]], rows: int, compute_s: float) -> None:
        """One successful execution of ``rows`` rows serving ``requests`` (rows, queue s) each."""
        with self._lock:
            self._execution_count += 1
            h = self._batch_hist.setdefault(max(1, rows), [0, 0.0])
            h[0] += 1
            h[1] += compute_s
            self._compute_s += compute_s
            for req_rows, queue_s in requests:
                self._requests += 1
                self._inference_count += max(1, req_rows)
                self._queue_s += queue_s

    def record_one(self, queue_s: float, compute_s: float) -> None:
        """``record([(1, queue_s)], 1, compute_s)`` for one unbatched request, without the
        lists (the worker's per-request path)."""
        with self._lock:
            self._execution_count += 1
            h = self._batch_hist.get(1)
            if h is None:
                h = self._batch_hist[1] = [0, 0.0]
            h[0] += 1
            h[1] += compute_s
            self._compute_s += compute_s
            self._requests += 1
            self._inference_count += 1
            self._queue_s += queue_s

    def failed(self, n: int = 1) -> None:
        with self._lock:
            self._failures += n

    def rejected(self, n: int = 1) -> None:
        with self._lock:
            self._rejected += n

    def snapshot(self) -> dict[str, Any]:
        """The counters as JSON-ready data (see the class docstring)."""
        with self._lock:
            return {
                "name": self.name,
                "batching": self.max_batch_size > 0,
                "max_batch_size": self.max_batch_size,
                "request_count": self._requests,
                "inference_count": self._inference_count,
                "execution_count": self._execution_count,
                "failure_count": self._failures,
                "rejected_count": self._rejected,
                "queue_s": self._queue_s,
                "compute_infer_s": self._compute_s,
                "batch_stats": [
                    {"batch_size": rows, "count": int(v[0]), "compute_infer_s": v[1]}
                    for rows, v in sorted(self._batch_hist.items())
                ],
            }


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What a request got back: its outputs and how it ran."""

    outputs: dict[str, np.ndarray]
    queue_s: float
    compute_s: float
    batch_rows: int


class DynamicBatcher:
    """Queue, merge and execute one stage's requests (one execution at a time).

    Args:
        run: the stage callable (input name -> array to output name -> array).
        inputs / outputs: the stage's input and output names.
        opts: batching options (``opts.enabled`` must be True to merge; otherwise every
            request runs alone, in priority and arrival order).
        dim: the stage's proven batch dimension (``batch_dimension``); None: never merge.
        name: the stage's name for messages.
        bucket_sizes: the static batch sizes the stage is built at (``StageRunner.bucket_sizes``;
            empty: any size costs what its rows cost). Batches are cut to fit them (see the
            module docstring).
    """

    def __init__(
        self,
        run: Runner,
        inputs: Sequence[str],
        outputs: Sequence[str],
        opts: BatchingOptions,
        dim: BatchDimension | None,
        name: str = "stage",
        bucket_sizes: Sequence[int] = (),
    ):
        self.run = run
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.opts = opts
        self.dim = dim if opts.enabled else None
        self.name = name
        self.limit = min(opts.max_batch_size, dim.max_size) if self.dim is not None and dim else 1
        self.buckets = tuple(sorted({int(n) for n in bucket_sizes if int(n) >= 1}))
        if self.dim is not None and len(self.buckets) > 0 and self.buckets[-1] >= 2:
            # above the largest bucket the symbolic build runs (tens of times slower per row)
            self.limit = min(self.limit, self.buckets[-1])
        self._cv = threading.Condition()
        self._queue: list[_Pending] = []
        self._seq = 0
        self._closed = False
        self.stats = StageStats(name, self.limit if self.dim is not None else 0)
        self._thread = threading.Thread(target=self._loop, name=f"tz-batcher-{name}", daemon=True)
        self._thread.start()

    # -- the caller's side -----------------------------------------------------------------
    def submit(
        self,
        values: Mapping[str, np.ndarray],
        priority: int = 0,
        queue_timeout_us: int | None = None,
        is_active: Callable[[], bool] | None = None,
        poll_s: float = 0.05,
    ) -> BatchResult:
        """Queue one request and block until it ran; return its outputs.

        Args:
            values: the request's inputs (every stage input).
            priority: 1 (highest) .. ``priority_levels``; 0 means the default level.
            queue_timeout_us: longest wait in the queue (default ``default_queue_timeout_us``;
                0: no limit); what happens then is ``timeout_action``.
            is_active: polled while waiting; once it returns False the request leaves the
                queue (a caller that went away) and ``BatchRejectedError("CANCELLED")`` is raised.

        Raises:
            BatchRejectedError: bad priority (INVALID_ARGUMENT), queue timeout with REJECT
                (UNAVAILABLE), cancelled (CANCELLED) or the batcher is closed (UNAVAILABLE).
            Exception: whatever the stage raised for the execution this request was part of.
        """
        level = self._level(priority)
        arrays = {n: values[n] for n in self.inputs}
        rows, key = self._shape_key(arrays)
        now = time.monotonic()
        timeout_us = (
            self.opts.default_queue_timeout_us if queue_timeout_us is None else queue_timeout_us
        )
        with self._cv:
            if self._closed:
                raise BatchRejectedError(f"{self.name}: the batcher is stopping")
            self._seq += 1
            p = _Pending(
                arrays,
                rows,
                key,
                level,
                self._seq,
                now,
                now + timeout_us / 1e6 if timeout_us > 0 else None,
                is_active,
            )
            self._queue.append(p)
            self._cv.notify_all()
        while not p.done.wait(poll_s):
            # the caller enforces its own cancellation and queue timeout: the scheduler may be
            # busy executing a long batch; a request already taken into a batch finishes
            if is_active is not None and not is_active():
                with self._cv:
                    if not p.taken:
                        self._drop(
                            p, BatchRejectedError("caller went away while queued", "CANCELLED")
                        )
            elif p.timeout_at_s is not None and self.opts.timeout_action == "REJECT":
                with self._cv:
                    if not p.taken and time.monotonic() >= p.timeout_at_s:
                        self._drop(p, self._timed_out(p))
        if p.error is not None:
            raise p.error
        assert p.outputs is not None
        return BatchResult(p.outputs, p.queue_s, p.compute_s, p.batch_rows)

    def close(self, timeout_s: float = 5.0) -> None:
        """Reject what is still queued and stop the scheduler thread."""
        with self._cv:
            self._closed = True
            for p in list(self._queue):
                self._drop(p, BatchRejectedError(f"{self.name}: the batcher is stopping"))
            self._cv.notify_all()
        self._thread.join(timeout_s)

    # -- helpers ---------------------------------------------------------------------------
    def _level(self, priority: int) -> int:
        levels = self.opts.priority_levels
        if priority < 0 or (priority > levels and priority != 0):
            raise BatchRejectedError(
                f"{self.name}: priority {priority} is outside 0..{levels} (priority_levels)",
                "INVALID_ARGUMENT",
            )
        if priority == 0:
            return self.opts.default_priority_level
        return priority

    def _shape_key(self, arrays: Mapping[str, np.ndarray]) -> tuple[int, tuple[Any, ...] | None]:
        """Rows of a request and what must match for it to merge (None: it cannot merge)."""
        if self.dim is None:
            return 0, None
        rows_seen = set()
        key = []
        for n in self.inputs:
            a = arrays[n]
            if not isinstance(a, np.ndarray) or a.ndim == 0:
                return 0, None
            rows_seen.add(a.shape[0])
            key.append((a.dtype.str, a.shape[1:]))
        if len(rows_seen) != 1:
            return 0, None  # inconsistent batch dims: the stage itself will say what is wrong
        rows = rows_seen.pop()
        if rows < 1 or rows >= self.limit:
            return rows, None  # a full batch on its own
        return rows, tuple(key)

    def _timed_out(self, p: _Pending) -> BatchRejectedError:
        waited_us = (time.monotonic() - p.enqueued_s) * 1e6
        return BatchRejectedError(
            f"{self.name}: request timed out in the batch queue after {waited_us:.0f} us",
            "UNAVAILABLE",
        )

    def _drop(self, p: _Pending, error: BaseException) -> None:
        """Take a queued request out with an error (caller holds the lock)."""
        if p in self._queue:
            self._queue.remove(p)
        p.error = error
        self.stats.rejected()
        p.done.set()

    # -- the scheduler ---------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                batch = self._next_batch()
                while batch is None:
                    if self._closed:
                        return
                    self._cv.wait(self._wait_s())
                    batch = self._next_batch()
                for p in batch:
                    p.taken = True
                    self._queue.remove(p)
            self._execute(batch)

    def _expire(self, now: float) -> None:
        """Apply the queue policy to requests past their queue timeout; drop cancelled ones."""
        for p in list(self._queue):
            if p.is_active is not None and not p.is_active():
                self._drop(p, BatchRejectedError("caller went away while queued", "CANCELLED"))
            elif p.timeout_at_s is not None and now >= p.timeout_at_s and not p.delayed:
                if self.opts.timeout_action == "REJECT":
                    self._drop(p, self._timed_out(p))
                else:  # DELAY: it stays, behind every request still within its timeout
                    p.delayed = True

    def _wait_s(self) -> float | None:
        """How long the scheduler may sleep before something is due (caller holds the lock)."""
        if not self._queue:
            return None
        now = time.monotonic()
        due = [p.timeout_at_s for p in self._queue if p.timeout_at_s is not None and not p.delayed]
        head = min(self._queue, key=_Pending.order)
        due.append(head.enqueued_s + self.opts.max_queue_delay_us / 1e6)
        if any(p.is_active is not None for p in self._queue):
            due.append(now + 0.05)  # notice callers that went away
        return max(0.0, min(due) - now)

    def _next_batch(self) -> list[_Pending] | None:
        """The batch to execute now, or None to keep waiting (caller holds the lock)."""
        now = time.monotonic()
        self._expire(now)
        if not self._queue:
            return None
        ordered = sorted(self._queue, key=_Pending.order)
        head = ordered[0]
        if head.key is None or self.dim is None:
            return [head]
        batch, rows = [], 0
        for p in ordered:
            if p.key == head.key and rows + p.rows <= self.limit:
                batch.append(p)
                rows += p.rows
        if rows >= self.limit or self._closed:
            return self._cut(batch)
        preferred = self.opts.preferred_batch_sizes
        if preferred:  # the largest preferred size a prefix of the batch reaches exactly
            total, best = 0, 0
            for i, p in enumerate(batch):
                total += p.rows
                if total in preferred:
                    best = i + 1
            if best:
                return batch[:best]
        if now >= head.enqueued_s + self.opts.max_queue_delay_us / 1e6:
            return self._cut(batch)
        return None

    def _bucket_of(self, rows: int) -> int | None:
        """The bucket a batch of ``rows`` rows runs on (None: above the largest)."""
        for size in self.buckets:
            if size >= rows:
                return size
        return None

    def _cut(self, batch: list[_Pending]) -> list[_Pending]:
        """The prefix of ``batch`` with the fewest padded rows per real row on its bucket
        (ties: the longer); the whole batch when the stage has no buckets."""
        if not self.buckets or len(batch) < 2:
            return batch
        best, best_ratio, rows = len(batch), float("inf"), 0
        for i, p in enumerate(batch, 1):
            rows += p.rows
            bucket = self._bucket_of(rows)
            if bucket is None:
                break
            if bucket / rows <= best_ratio:
                best, best_ratio = i, bucket / rows
        return batch[:best]

    def _execute(self, batch: list[_Pending]) -> None:
        t_start = time.monotonic()
        merged = len(batch) > 1
        rows = sum(p.rows for p in batch) if self.dim is not None else 0
        t0 = time.perf_counter()
        try:
            if merged:
                values = {
                    n: np.concatenate([p.inputs[n] for p in batch], axis=0) for n in self.inputs
                }
            else:
                values = batch[0].inputs
            result = self.run(values)
            compute_s = time.perf_counter() - t0
            parts = self._split(result, batch, rows) if merged else [result]
        except Exception as e:  # every request of the execution gets the stage's error
            self.stats.failed(len(batch))
            for p in batch:
                p.error = e
                p.done.set()
            return
        executed = rows if rows > 0 else 1
        for p in batch:
            p.queue_s = t_start - p.enqueued_s
        self.stats.record([(p.rows, p.queue_s) for p in batch], executed, compute_s)
        for p, out in zip(batch, parts, strict=True):
            share = (p.rows / rows) if merged and rows else 1.0
            p.compute_s = compute_s * share
            p.batch_rows = executed
            p.outputs = out
            p.done.set()

    def _split(
        self, result: Mapping[str, np.ndarray], batch: list[_Pending], rows: int
    ) -> list[dict[str, np.ndarray]]:
        parts: list[dict[str, np.ndarray]] = [{} for _ in batch]
        for name in self.outputs:
            if name not in result:
                raise ServingError(f"{self.name} did not produce {name!r}")
            a = np.asarray(result[name])
            if a.ndim == 0 or a.shape[0] != rows:
                raise ServingError(
                    f"{self.name}: output {name!r} has {a.shape[0] if a.ndim else 'no'} rows for a "
                    f"batch of {rows}; its dimension 0 is not the batch dimension"
                )
            start = 0
            for part, p in zip(parts, batch, strict=True):
                part[name] = a[start : start + p.rows]
                start += p.rows
        return parts
