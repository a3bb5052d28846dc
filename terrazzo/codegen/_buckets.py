"""Codegen step 2c: static builds of a stage at a few batch sizes ("buckets") beside its symbolic build.

CPU default schedules (``tuning.defaults``) and tuning records apply to kernels with static
shapes only; a stage compiled for a symbolic batch runs TVM's plain loop nests, which can be
tens of times slower (the tiny BERT encoder of ``benchmarks/dynamic_batching.py``). A
bucketed stage also carries one static library per bucket size (``host_b<N>.so``); at run
time a batch of ``n`` rows runs on the smallest bucket ``>= n``, padded with copies of its
last row whose outputs are dropped, and a batch above the largest bucket runs on the
symbolic build (``bundle.StageRunner``).

Bucketing needs the batch dimension proven from the stage's signature, by the dynamic
batcher's rule: dimension 0 of every input and every output is the same plain symbol, used
nowhere else. Whether rows are independent (padding rows must not change the real rows'
results) cannot be read from shapes; asking for buckets asserts it, as turning on dynamic
batching does.

Default schedules are a starting point, not a tuned result: the kernels of a 32-row bucket
have other shapes (and workload hashes) than the 1-row bucket's, so a tuning database built at
one batch size leaves every other bucket on its defaults. ``tune_bucket`` tunes one bucket's
per-request kernels (those without a record for this host and thread count) into the
database before that bucket is built (``compile --tune-buckets TRIALS``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from terrazzo.errors import CodegenError

_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: ``compile(batch_buckets=...)``: powers of two from the range's low end, plus its high end.
AUTO = "auto"


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """The static batch sizes one stage is built at.

    Attributes:
        symbol: the batch symbol (dimension 0 of every input and output).
        sizes: ascending bucket sizes, each inside the symbol's declared range.
    """

    symbol: str
    sizes: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """The manifest form: ``{"symbol": "batch", "sizes": [1, 2, 4]}``."""
        return {"symbol": self.symbol, "sizes": list(self.sizes)}


def parse_buckets(value: str | Sequence[int] | None) -> str | tuple[int, ...] | None:
    """``"auto"``, ``"1,2,4,8"`` or a sequence of sizes → ``"auto"`` / sorted sizes / None.

    Raises:
        CodegenError: a size that is not a positive integer (one line naming it).
    """
    if value is None or value == "" or value == ():
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == AUTO:
            return AUTO
        parts: Sequence[Any] = [p for p in text.split(",") if p.strip()]
    else:
        parts = list(value)
    sizes = set()
    for p in parts:
        try:
            n = int(str(p).strip())
        except ValueError:
            n = 0
        if n < 1:
            raise CodegenError(
                f"batch buckets: {str(p).strip()!r} is not a positive integer "
                "(give 'auto' or sizes such as 1,2,4,8)"
            )
        sizes.add(n)
    return tuple(sorted(sizes))


def bucket_sizes(request: str | tuple[int, ...], lo: int, hi: int) -> tuple[int, ...]:
    """The bucket sizes for a batch symbol declared ``lo..hi``.

    ``"auto"``: ``lo``, every power of two between, and ``hi`` (``1..64`` → 1, 2, 4, ..., 64).
    Explicit sizes must lie inside the range.

    Raises:
        CodegenError: an explicit size outside ``lo..hi``.
    """
    if isinstance(request, str):
        if request != AUTO:
            raise CodegenError(f"batch buckets {request!r}: give 'auto' or sizes such as 1,2,4,8")
        sizes = {lo, hi}
        p = 1
        while p < hi:
            if p > lo:
                sizes.add(p)
            p *= 2
        return tuple(sorted(sizes))
    outside = [n for n in request if not lo <= n <= hi]
    if outside:
        raise CodegenError(
            f"batch buckets {outside} lie outside the batch range {lo}..{hi} the model was "
            "compiled for"
        )
    return tuple(request)


def leading_symbol(
    input_dims: Sequence[Sequence[str]], output_dims: Sequence[Sequence[str]], n_outputs: int
) -> str | None:
    """The symbol at dimension 0 of every input and output, used nowhere else; None if there
    is none (a fixed dimension 0, two symbols, an expression, a stage without outputs)."""
    if not input_dims or not output_dims or len(output_dims) != n_outputs:
        return None
    symbol: str | None = None
    for dims in (*input_dims, *output_dims):
        if not dims or not dims[0] or not _SYMBOL.fullmatch(dims[0]):
            return None
        if symbol is None:
            symbol = dims[0]
        elif dims[0] != symbol:
            return None
        word = re.compile(rf"\b{re.escape(symbol)}\b")
        if any(word.search(d) for d in dims[1:]):
            return None
    return symbol


def plan_stage_buckets(
    stage: Any, request: str | tuple[int, ...], ranges: Mapping[str, tuple[int, int]]
) -> BucketSpec | str:
    """The buckets of one stage (a ``StageModule``), or a sentence saying why it has none."""
    symbol = leading_symbol(stage.input_dims, stage.output_dims, len(stage.outputs))
    if symbol is None:
        return (
            f"stage {stage.index}: no buckets (dimension 0 of its inputs and outputs is not one "
            "batch symbol); it runs its symbolic build only"
        )
    if symbol not in ranges:
        return f"stage {stage.index}: no buckets (no declared range for {symbol!r})"
    lo, hi = ranges[symbol]
    return BucketSpec(symbol, bucket_sizes(request, int(lo), int(hi)))


def bind_symbol(mod: Any, symbol: str, size: int) -> Any:
    """``mod`` with ``main``'s symbolic dimension ``symbol`` fixed to ``size``.

    Raises:
        CodegenError: ``main`` has no parameter dimension named ``symbol``.
    """
    from tvm import relax

    func = mod["main"]
    found = None
    for p in func.params:
        for v in relax.analysis.definable_tir_vars_in_type(p.ty):
            if str(v.name) == symbol:
                found = v
    if found is None:
        raise CodegenError(f"the stage's main has no symbolic dimension {symbol!r} to bind")
    bound = func.bind_symbolic_vars({found: int(size)})
    for attr in ("tir_var_upper_bound", "tir_var_lower_bound"):
        if bound.attrs is not None and attr in bound.attrs:
            rest = {str(k): int(v) for k, v in bound.attrs[attr].items() if str(k) != symbol}
            bound = bound.with_attr(attr, rest) if rest else bound.without_attr(attr)
    out = mod.clone()
    out["main"] = bound
    return out


def tune_bucket(
    stage_mod: Any, symbol: str, size: int, target: Mapping[str, Any], db: Any, trials: int
) -> list[Any]:
    """Tune the per-request kernels of ``stage_mod`` at batch ``size`` for ``target`` into ``db``.

    The kernels are those ``build_stage`` compiles for this bucket (weight preparation lifted
    out, ``request_module``); kernels ``db`` already holds a record for (this host, this
    thread count) are skipped, so a second compile with the same database tunes nothing.

    Args:
        stage_mod: the stage's Relax module with its symbolic batch.
        symbol: the batch symbol; size: the bucket's batch size.
        target: the host target dict (``host_target()``).
        db: a ``TuningDatabase`` the records are added to (the caller saves it).
        trials: schedule candidates per kernel (offline proposer).

    Returns:
        The ``KernelResult`` of every kernel tuned.
    """
    import tvm

    from terrazzo.codegen._build import request_module
    from terrazzo.codegen.tuning import OfflineProposer, TuneOptions, tune_module

    tgt = tvm.target.Target(dict(target))
    per_request = request_module(bind_symbol(stage_mod, symbol, size), tgt)
    opts = TuneOptions(trials=trials, batch=min(4, trials))
    return tune_module(per_request, tgt, OfflineProposer, opts, db=db, prepare=True)


__all__ = [
    "AUTO",
    "BucketSpec",
    "bind_symbol",
    "bucket_sizes",
    "leading_symbol",
    "parse_buckets",
    "plan_stage_buckets",
    "tune_bucket",
]
