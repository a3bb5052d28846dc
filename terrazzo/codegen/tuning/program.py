"""Schedule programs as data: a JSON list of TVM schedule primitives, validated and applied.

Sits between the proposers (which emit programs) and TVM (which applies them with
``tvm.s_tir.Schedule``). A program never contains Python to execute: every step names one
primitive from a fixed table, its arguments are literals or symbolic names bound by earlier
steps, and every failure is reported as a :class:`ScheduleProgramError` whose message says
which step failed and why (unknown primitive, unbound name, wrong factor product, or the
TVM ``ScheduleError`` text).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from terrazzo.errors import TuningError

MAX_STEPS = 128


class ScheduleProgramError(TuningError):
    """A schedule program is malformed or cannot be applied; names the step and the reason."""

    def __init__(self, reason: str, step: int | None = None, kind: str = "invalid") -> None:
        self.reason = reason
        self.step = step
        #: "invalid" (schema/name errors), "schedule" (TVM refused a primitive).
        self.kind = kind
        where = f"step {step}: " if step is not None else ""
        super().__init__(f"{where}{reason}")


# --------------------------------------------------------------------------------------
# Schema: one pydantic model per primitive. Names are symbolic handles bound by ``out``.

_Name = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GetSBlock(_Step):
    """Bind ``out`` to the block called ``name`` in the kernel."""

    op: Literal["get_sblock"]
    name: str = Field(min_length=1, max_length=128)
    out: str = _Name


class GetLoops(_Step):
    """Bind ``out`` (one name per loop, outermost first) to the loops around ``block``."""

    op: Literal["get_loops"]
    block: str = _Name
    out: list[str] = Field(min_length=1, max_length=16)


class Split(_Step):
    """Split ``loop`` by ``factors`` (at most one null, inferred); binds one name per factor."""

    op: Literal["split"]
    loop: str = _Name
    factors: list[int | None] = Field(min_length=2, max_length=6)
    out: list[str] = Field(min_length=2, max_length=6)


class Reorder(_Step):
    op: Literal["reorder"]
    loops: list[str] = Field(min_length=2, max_length=16)


class Fuse(_Step):
    op: Literal["fuse"]
    loops: list[str] = Field(min_length=2, max_length=16)
    out: str = _Name


class Parallel(_Step):
    op: Literal["parallel"]
    loop: str = _Name


class Vectorize(_Step):
    op: Literal["vectorize"]
    loop: str = _Name


class Unroll(_Step):
    op: Literal["unroll"]
    loop: str = _Name


class Bind(_Step):
    """Bind ``loop`` to a GPU thread axis (GPU targets: every block's loops must be bound)."""

    op: Literal["bind"]
    loop: str = _Name
    thread: Literal[
        "blockIdx.x", "blockIdx.y", "blockIdx.z", "threadIdx.x", "threadIdx.y", "threadIdx.z",
        "vthread.x", "vthread.y",
    ]  # fmt: skip


class CacheRead(_Step):
    op: Literal["cache_read"]
    block: str = _Name
    buffer_index: int = Field(ge=0, le=64)
    scope: Literal["global", "local", "shared"] = "global"
    out: str = _Name


class CacheWrite(_Step):
    op: Literal["cache_write"]
    block: str = _Name
    buffer_index: int = Field(ge=0, le=64)
    scope: Literal["global", "local", "shared"] = "global"
    out: str = _Name


class ComputeAt(_Step):
    op: Literal["compute_at"]
    block: str = _Name
    loop: str = _Name


class ReverseComputeAt(_Step):
    op: Literal["reverse_compute_at"]
    block: str = _Name
    loop: str = _Name


class ComputeInline(_Step):
    op: Literal["compute_inline"]
    block: str = _Name


class ReverseComputeInline(_Step):
    op: Literal["reverse_compute_inline"]
    block: str = _Name


class DecomposeReduction(_Step):
    op: Literal["decompose_reduction"]
    block: str = _Name
    loop: str = _Name
    out: str | None = None


class Annotate(_Step):
    """Attach ``key = value`` to a block or loop (e.g. ``pragma_auto_unroll_max_step``)."""

    op: Literal["annotate"]
    target: str = _Name
    key: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
    value: int | str


class UnsafeSetDtype(_Step):
    """Change an intermediate buffer's dtype. Not semantics-preserving: the verifier judges it."""

    op: Literal["unsafe_set_dtype"]
    block: str = _Name
    buffer_index: int = Field(ge=0, le=64)
    dtype: Literal["float16", "bfloat16", "float32", "float64", "int32", "int64"]


Step = (
    GetSBlock
    | GetLoops
    | Split
    | Reorder
    | Fuse
    | Parallel
    | Vectorize
    | Unroll
    | Bind
    | CacheRead
    | CacheWrite
    | ComputeAt
    | ReverseComputeAt
    | ComputeInline
    | ReverseComputeInline
    | DecomposeReduction
    | Annotate
    | UnsafeSetDtype
)

_STEP_TYPES: dict[str, type[_Step]] = {
    t.model_fields["op"].annotation.__args__[0]: t  # type: ignore[union-attr]
    for t in Step.__args__  # type: ignore[attr-defined]
}
PRIMITIVES: tuple[str, ...] = tuple(sorted(_STEP_TYPES))


class ScheduleProgram(BaseModel):
    """A schedule program: an ordered list of primitive steps (the JSON form is the contract)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: tuple[Step, ...] = Field(max_length=MAX_STEPS)

    def to_json(self) -> str:
        """Stable compact JSON text (used as the database and prompt form)."""
        return json.dumps(self.to_data(), separators=(",", ":"), sort_keys=True)

    def to_data(self) -> dict[str, Any]:
        return {"steps": [s.model_dump(exclude_none=True) for s in self.steps]}

    def key(self) -> str:
        """Canonical text used to deduplicate candidates."""
        return self.to_json()


def parse_program(data: str | Mapping[str, Any] | Sequence[Any]) -> ScheduleProgram:
    """Validate JSON text or decoded data into a program, with a precise reason on failure.

    Accepts ``{"steps": [...]}`` or a bare list of steps.

    Raises:
        ScheduleProgramError: unknown primitive, missing/extra/ill-typed argument, or bad JSON.
    """
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as e:
            raise ScheduleProgramError(f"not valid JSON: {e}") from None
    if isinstance(data, list):
        data = {"steps": data}
    if not isinstance(data, Mapping) or not isinstance(data.get("steps"), list):
        raise ScheduleProgramError('expected an object {"steps": [ ... ]}')
    steps = data["steps"]
    if len(steps) > MAX_STEPS:
        raise ScheduleProgramError(f"program has {len(steps)} steps; at most {MAX_STEPS}")
    parsed: list[_Step] = []
    for i, raw in enumerate(steps):
        if not isinstance(raw, Mapping):
            raise ScheduleProgramError(f"expected an object, found {type(raw).__name__}", i)
        op = raw.get("op")
        if op not in _STEP_TYPES:
            raise ScheduleProgramError(
                f"unknown primitive {op!r}; known: {', '.join(PRIMITIVES)}", i
            )
        try:
            parsed.append(_STEP_TYPES[op].model_validate(dict(raw)))
        except ValidationError as e:
            errs = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or op}: {err['msg']}" for err in e.errors()
            )
            raise ScheduleProgramError(f"{op}: {errs}", i) from None
    return ScheduleProgram(steps=tuple(parsed))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Application.


def schedule_error_reason(err: Exception) -> str:
    """The one-paragraph reason of a TVM ScheduleError (drops the IR dump around it)."""
    text = str(err)
    marker = "Error message:"
    if marker in text:
        text = text[text.rindex(marker) + len(marker) :]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " ".join(lines)[:600] or type(err).__name__


class _Env:
    """Symbol table of a program being applied: names → BlockRV / LoopRV."""

    def __init__(self, sch: Any) -> None:
        self.sch = sch
        self.blocks: dict[str, Any] = {}
        self.loops: dict[str, Any] = {}

    def block(self, name: str, step: int) -> Any:
        if name not in self.blocks:
            kind = "a loop" if name in self.loops else "unbound"
            raise ScheduleProgramError(f"block name {name!r} is {kind}", step)
        return self.blocks[name]

    def loop(self, name: str, step: int) -> Any:
        if name not in self.loops:
            kind = "a block" if name in self.blocks else "unbound"
            raise ScheduleProgramError(f"loop name {name!r} is {kind}", step)
        return self.loops[name]

    def any(self, name: str, step: int) -> Any:
        if name in self.loops:
            return self.loops[name]
        return self.block(name, step)

    def bind_block(self, name: str, rv: Any) -> None:
        self.loops.pop(name, None)
        self.blocks[name] = rv

    def bind_loop(self, name: str, rv: Any) -> None:
        self.blocks.pop(name, None)
        self.loops[name] = rv


def _extent(sch: Any, loop: Any) -> int | None:
    ext = sch.get(loop).extent
    try:
        return int(ext)
    except (TypeError, ValueError):
        return None


def _split(env: _Env, st: Split, i: int) -> None:
    if len(st.out) != len(st.factors):
        raise ScheduleProgramError(
            f"split: {len(st.factors)} factors but {len(st.out)} output names", i
        )
    loop = env.loop(st.loop, i)
    nones = sum(f is None for f in st.factors)
    if nones > 1:
        raise ScheduleProgramError("split: at most one factor may be null (inferred)", i)
    if any(f is not None and f < 1 for f in st.factors):
        raise ScheduleProgramError(f"split: factors must be positive, found {st.factors}", i)
    extent = _extent(env.sch, loop)
    if nones == 0 and extent is not None:
        product = math.prod(f for f in st.factors if f is not None)
        if product != extent:
            raise ScheduleProgramError(
                f"split of loop {st.loop!r} (extent {extent}): factors {st.factors} multiply "
                f"to {product}, expected {extent} (use null for one factor to infer it)",
                i,
            )
    rvs = env.sch.split(loop, factors=list(st.factors))
    for name, rv in zip(st.out, rvs, strict=True):
        env.bind_loop(name, rv)


def _get_loops(env: _Env, st: GetLoops, i: int) -> None:
    rvs = env.sch.get_loops(env.block(st.block, i))
    if len(rvs) != len(st.out):
        raise ScheduleProgramError(
            f"get_loops: block {st.block!r} has {len(rvs)} loops, program names {len(st.out)}", i
        )
    for name, rv in zip(st.out, rvs, strict=True):
        env.bind_loop(name, rv)


def _decompose(env: _Env, st: DecomposeReduction, i: int) -> None:
    rv = env.sch.decompose_reduction(env.block(st.block, i), env.loop(st.loop, i))
    if st.out:
        env.bind_block(st.out, rv)


def _annotate(env: _Env, st: Annotate, i: int) -> None:
    env.sch.annotate(env.any(st.target, i), st.key, st.value)


_APPLY: dict[str, Callable[[_Env, Any, int], None]] = {
    "get_sblock": lambda env, st, i: env.bind_block(st.out, env.sch.get_sblock(st.name)),
    "get_loops": _get_loops,
    "split": _split,
    "reorder": lambda env, st, i: env.sch.reorder(*[env.loop(n, i) for n in st.loops]),
    "fuse": lambda env, st, i: env.bind_loop(
        st.out, env.sch.fuse(*[env.loop(n, i) for n in st.loops])
    ),
    "parallel": lambda env, st, i: env.sch.parallel(env.loop(st.loop, i)),
    "vectorize": lambda env, st, i: env.sch.vectorize(env.loop(st.loop, i)),
    "unroll": lambda env, st, i: env.sch.unroll(env.loop(st.loop, i)),
    "bind": lambda env, st, i: env.sch.bind(env.loop(st.loop, i), st.thread),
    "cache_read": lambda env, st, i: env.bind_block(
        st.out, env.sch.cache_read(env.block(st.block, i), st.buffer_index, st.scope)
    ),
    "cache_write": lambda env, st, i: env.bind_block(
        st.out, env.sch.cache_write(env.block(st.block, i), st.buffer_index, st.scope)
    ),
    "compute_at": lambda env, st, i: env.sch.compute_at(
        env.block(st.block, i), env.loop(st.loop, i)
    ),
    "reverse_compute_at": lambda env, st, i: env.sch.reverse_compute_at(
        env.block(st.block, i), env.loop(st.loop, i)
    ),
    "compute_inline": lambda env, st, i: env.sch.compute_inline(env.block(st.block, i)),
    "reverse_compute_inline": lambda env, st, i: env.sch.reverse_compute_inline(
        env.block(st.block, i)
    ),
    "decompose_reduction": _decompose,
    "annotate": _annotate,
    "unsafe_set_dtype": lambda env, st, i: env.sch.unsafe_set_dtype(
        env.block(st.block, i), st.buffer_index, st.dtype
    ),
}
assert set(_APPLY) == set(_STEP_TYPES)


def apply_step(env: _Env, step: _Step, index: int) -> None:
    """Apply one step to ``env.sch``; TVM errors become ScheduleProgramError(kind='schedule')."""
    from tvm.s_tir import ScheduleError

    try:
        _APPLY[step.op](env, step, index)  # type: ignore[attr-defined]
    except ScheduleProgramError:
        raise
    except ScheduleError as e:
        raise ScheduleProgramError(
            f"{step.op}: {schedule_error_reason(e)}",  # type: ignore[attr-defined]
            index,
            kind="schedule",
        ) from None
    except Exception as e:  # TVM raises plain TVMError/ValueError for some misuse.
        raise ScheduleProgramError(
            f"{step.op}: {type(e).__name__}: {schedule_error_reason(e)}",  # type: ignore[attr-defined]
            index,
            kind="schedule",
        ) from None


def new_schedule(func: Any) -> Any:
    """A fresh ``tvm.s_tir.Schedule`` over ``func`` as the module's ``main``."""
    import tvm
    from tvm import s_tir

    return s_tir.Schedule(tvm.IRModule({"main": func}), debug_mask="all")


def apply_program(func: Any, program: ScheduleProgram) -> Any:
    """Apply ``program`` to a PrimFunc and return the scheduled PrimFunc.

    Args:
        func: a schedulable ``tvm.tirx.PrimFunc`` (``s_tir=True``).
        program: the validated schedule program.

    Returns:
        The scheduled PrimFunc (same signature and attributes).

    Raises:
        ScheduleProgramError: with the failing step index and the precise reason.
    """
    sch = new_schedule(func)
    env = _Env(sch)
    for i, step in enumerate(program.steps):
        apply_step(env, step, i)
    return sch.mod["main"]


__all__ = [
    "PRIMITIVES",
    "ScheduleProgram",
    "ScheduleProgramError",
    "apply_program",
    "parse_program",
    "schedule_error_reason",
]
