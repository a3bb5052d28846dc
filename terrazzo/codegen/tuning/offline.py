"""Offline proposer: heuristic schedule templates per kernel class plus evolutionary mutation.

Sits in the schedule search as the default proposer (no network). A template turns a small
set of decisions (tile sizes, loop order, vector width, cache-write, unroll) into a schedule
program for the kernel's block structure; the first round tries seeds around sensible
defaults, later rounds mutate the fastest candidates' decisions one or two at a time.
Templates are built step by step against a live schedule, so optional steps that TVM
refuses for a particular kernel are dropped instead of sinking the whole candidate.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from terrazzo.codegen.tuning.kernel import BlockInfo, Kernel
from terrazzo.codegen.tuning.program import (
    ScheduleProgram,
    ScheduleProgramError,
    _Env,
    apply_step,
    new_schedule,
    parse_program,
)
from terrazzo.codegen.tuning.proposer import HardwareSpec, Proposal, Trial

_SPACE: dict[str, tuple[Any, ...]] = {
    "vt": (4, 8, 16, 32, 64, 128),
    "rt": (1, 2, 4, 8, 16, 32),
    "kt": (1, 2, 4, 8, 16, 32),
    "order": ("k_mid", "k_out"),
    "cache_write": (0, 1),
    "unroll": (0, 1),
    "inline": (0, 1),
    "parallel": (0, 1),
    "co_first": (0, 1),
    "hin": (0, 1),
}
#: Extra decisions mutated only in the matmul micro-kernel variant (``mk``).
_MK_SPACE: dict[str, tuple[Any, ...]] = {"nc": (1, 2, 4, 8), "pack": (0, 1)}


def _fit(extent: int, want: int) -> int:
    """Largest divisor of ``extent`` that is ≤ ``want`` (tiles that divide avoid predicates)."""
    for f in range(min(want, extent), 0, -1):
        if extent % f == 0:
            return f
    return 1


class _Builder:
    """Builds a program step by step, keeping optional steps only when TVM accepts them."""

    def __init__(self, func: Any) -> None:
        self.func = func
        self.steps: list[dict[str, Any]] = []
        self.env = _Env(new_schedule(func))

    def _replay(self, steps: list[dict[str, Any]]) -> _Env:
        env = _Env(new_schedule(self.func))
        prog = parse_program({"steps": steps})
        for i, st in enumerate(prog.steps):
            apply_step(env, st, i)
        return env

    def add(self, step: dict[str, Any]) -> None:
        """A required step: raises ScheduleProgramError when it does not apply."""
        prog = parse_program({"steps": [step]})
        apply_step(self.env, prog.steps[0], len(self.steps))
        self.steps.append(step)

    def try_add(self, step: dict[str, Any]) -> bool:
        """An optional step: kept if it applies, otherwise the schedule is rebuilt without it."""
        try:
            self.add(step)
            return True
        except ScheduleProgramError:
            self.env = self._replay(self.steps)
            return False

    def try_group(self, steps: list[dict[str, Any]]) -> bool:
        """Optional steps that stand or fall together (all kept, or the schedule is rebuilt)."""
        kept = list(self.steps)
        try:
            for st in steps:
                self.add(st)
            return True
        except ScheduleProgramError:
            self.steps = kept
            self.env = self._replay(kept)
            return False

    def loops_of(self, block: str) -> list[int]:
        return [
            int(self.env.sch.get(lp).extent)
            for lp in self.env.sch.get_loops(self.env.block(block, 0))
        ]

    def program(self) -> ScheduleProgram:
        return parse_program({"steps": self.steps})


def _epilogue_and_loops(b: Any, main: Any, consumers: list[Any]) -> tuple[str | None, list[str]]:
    """Inline every elementwise consumer but the last (the epilogue), then bind main's loops.

    Returns the epilogue's block name (None without consumers) and the loop names l0, l1, ...
    """
    epilogue = None
    for n, blk in enumerate(consumers):
        name = f"e{n}"
        b.add({"op": "get_sblock", "name": blk.name, "out": name})
        if n < len(consumers) - 1:
            b.try_add({"op": "compute_inline", "block": name})
        else:
            epilogue = name
    b.add({"op": "get_sblock", "name": main.name, "out": "b"})
    names = [f"l{i}" for i in range(len(main.loop_kinds))]
    b.add({"op": "get_loops", "block": "b", "out": names})
    return epilogue, names


def _split_rows_and_k(
    b: Any, d: dict[str, Any], ext: dict[str, int], outer: list[str], reduce: list[str]
) -> tuple[list[str], list[str], int, int, list[str]]:
    """Split the innermost non-trivial row loop by ``rt`` (``ro``/``ri``) and the longest
    reduction loop by ``kt`` (``ko``/``ki``); shared by the tiled and micro-kernel templates.

    Returns:
        (outer loops with ``ro`` in place of the split one, ``["ri"]`` or ``[]``, the row
        tile, the reduction tile, the other reduction loops).
    """
    row_inner: list[str] = []
    rt = 1
    if outer:
        prev = max(outer, key=lambda n: (ext[n] > 1, outer.index(n)))
        rt = _fit(ext[prev], d["rt"])
        b.add({"op": "split", "loop": prev, "factors": [None, rt], "out": ["ro", "ri"]})
        outer = [("ro" if n == prev else n) for n in outer]
        row_inner = ["ri"]
    r_main = max(reduce, key=lambda n: ext[n])
    kt = _fit(ext[r_main], d["kt"])
    b.add({"op": "split", "loop": r_main, "factors": [None, kt], "out": ["ko", "ki"]})
    return outer, row_inner, rt, kt, [n for n in reduce if n != r_main]


def _tiled_template(kernel: Kernel, d: dict[str, Any], lanes: int) -> ScheduleProgram:
    """Multi-level tiling of the main reduction block (matmul, conv, batched reductions)."""
    main = kernel.main_block
    b = _Builder(kernel.func)
    idx = kernel.blocks.index(main)
    producers = [blk for blk in kernel.blocks[:idx] if "R" not in blk.loop_kinds]
    consumers = [blk for blk in kernel.blocks[idx + 1 :] if "R" not in blk.loop_kinds]
    for blk in producers:
        b.try_add({"op": "get_sblock", "name": blk.name, "out": f"p{kernel.blocks.index(blk)}"})
        b.try_add({"op": "compute_inline", "block": f"p{kernel.blocks.index(blk)}"})
    epilogue, names = _epilogue_and_loops(b, main, consumers)
    spatial = [n for n, k in zip(names, main.loop_kinds, strict=True) if k == "S"]
    reduce = [n for n, k in zip(names, main.loop_kinds, strict=True) if k == "R"]
    ext = dict(zip(names, main.loop_extents, strict=True))
    if epilogue is None and d["cache_write"] and main.writes_param:
        b.add(
            {"op": "cache_write", "block": "b", "buffer_index": 0, "scope": "global", "out": "cw"}
        )
        epilogue = "cw"
    if d.get("mk"):
        return _micro_kernel(b, d, lanes, ext, spatial, reduce, epilogue)
    inner_s = spatial[-1]
    vt = _fit(ext[inner_s], d["vt"])
    b.add({"op": "split", "loop": inner_s, "factors": [None, vt], "out": ["so", "si"]})
    outer, row_inner, _rt, kt, rest_r = _split_rows_and_k(b, d, ext, spatial[:-1], reduce)
    if d["order"] == "k_mid":
        order = outer + ["so", "ko"] + rest_r + row_inner + ["ki", "si"]
    else:
        order = outer + ["so", "ko"] + rest_r + ["ki"] + row_inner + ["si"]
    b.add({"op": "reorder", "loops": order})
    if epilogue is not None:
        if b.try_add({"op": "reverse_compute_at", "block": epilogue, "loop": "so"}):
            n_epi = len(b.loops_of(epilogue))
            epi_loops = [f"el{i}" for i in range(n_epi)]
            b.add({"op": "get_loops", "block": epilogue, "out": epi_loops})
            b.try_add({"op": "vectorize", "loop": epi_loops[-1]})
    par = outer + ["so"]
    if len(par) > 1:
        b.add({"op": "fuse", "loops": par, "out": "par"})
        par_loop = "par"
    else:
        par_loop = par[0]
    if d["parallel"]:
        b.try_add({"op": "parallel", "loop": par_loop})
    if vt > 1:
        b.try_add({"op": "vectorize", "loop": "si"})
    if d["unroll"]:
        b.try_add({"op": "unroll", "loop": "ki" if kt > 1 else (row_inner or ["ki"])[0]})
    b.add({"op": "decompose_reduction", "block": "b", "loop": "ko"})
    return b.program()


def _micro_kernel(
    b: _Builder,
    d: dict[str, Any],
    lanes: int,
    ext: dict[str, int],
    spatial: list[str],
    reduce: list[str],
    epilogue: str | None,
) -> ScheduleProgram:
    """Register-tiled micro-kernel for matmul-like blocks (the ``mk`` variant of ``tiled``).

    The innermost spatial loop (columns, contiguous in the output and the right-hand
    operand) is split into ``[so, sm, si]`` with ``si = vt`` columns (``vt/lanes`` vectors)
    and ``sm = nc`` column tiles sharing one row tile; the row loop into ``[ro, ri]`` with
    ``ri = rt`` rows; the reduction into ``[ko, ki]``. The whole reduction runs inside one
    ``rt × vt`` output tile (``ko, ki, ri, si`` innermost), so its accumulators stay in
    registers and the tile is written once (into the ``cache_write`` buffer or the
    epilogue, computed per ``sm``). ``co_first`` puts column tiles outside row tiles, so one
    thread sweeps all rows against one ``K × vt`` panel of the right-hand operand, which
    stays in L2 — at 512³ the operand (1 MiB) does not fit L2 and re-reading it per row tile
    halves the speed. ``pack`` goes further: each thread owns whole column panels (the row
    loop leaves the parallel loop) and first copies its ``K × nc·vt`` panel of the operand
    into a contiguous buffer (``cache_read`` + ``compute_at``), so the micro-kernel streams
    it with unit stride (1.4× at 512³ on this machine).
    """
    pack = _column_operand(b) if d.get("pack") and len(spatial) >= 2 else None
    inner_s = spatial[-1]
    vt = _fit(ext[inner_s], d["vt"])
    nc = _fit(ext[inner_s] // vt, int(d.get("nc", 1)))
    b.add({"op": "split", "loop": inner_s, "factors": [None, nc, vt], "out": ["so", "sm", "si"]})
    outer, row_inner, rt, kt, rest_r = _split_rows_and_k(b, d, ext, spatial[:-1], reduce)
    rows: list[str] = []
    if pack is not None and outer:
        # Packed panels: one thread owns a column panel and sweeps every row tile over it.
        par, rows = [*outer[:-1], "so"], [outer[-1]]
    elif d.get("co_first") and outer:
        par = [*outer[:-1], "so", outer[-1]]
    else:
        par = [*outer, "so"]
    order = [*par, *rows, "sm", "ko", *rest_r, "ki", *row_inner, "si"]
    b.add({"op": "reorder", "loops": order})
    if epilogue is not None and b.try_add(
        {"op": "reverse_compute_at", "block": epilogue, "loop": "sm"}
    ):
        epi_loops = [f"el{i}" for i in range(len(b.loops_of(epilogue)))]
        b.add({"op": "get_loops", "block": epilogue, "out": epi_loops})
        b.try_add({"op": "vectorize", "loop": epi_loops[-1]})
    if len(par) > 1:
        b.add({"op": "fuse", "loops": par, "out": "par"})
        par_loop = "par"
    else:
        par_loop = par[0]
    if pack is not None and rows:
        # Copy the operand's K × (nc·vt) panel into a contiguous buffer once per panel.
        b.add(
            {"op": "cache_read", "block": "b", "buffer_index": pack, "scope": "global", "out": "pk"}
        )
        b.add({"op": "compute_at", "block": "pk", "loop": par_loop})
        pk_loops = [f"pk{i}" for i in range(len(b.loops_of("pk")))]
        b.add({"op": "get_loops", "block": "pk", "out": pk_loops})
        b.try_add({"op": "vectorize", "loop": pk_loops[-1]})
    if d["parallel"]:
        b.try_add({"op": "parallel", "loop": par_loop})
    n_vec = vt // lanes if vt % lanes == 0 else 0
    if n_vec > 1:
        b.add({"op": "split", "loop": "si", "factors": [None, lanes], "out": ["sv", "sl"]})
        b.try_add({"op": "vectorize", "loop": "sl"})
    elif vt > 1:
        b.try_add({"op": "vectorize", "loop": "si"})
    # Unroll the register tile (at most 16 accumulator vectors) and a short k step.
    if d["unroll"] and rt * max(1, n_vec) <= 16:
        if n_vec > 1:
            b.try_add({"op": "unroll", "loop": "sv"})
        if row_inner and rt > 1:
            b.try_add({"op": "unroll", "loop": "ri"})
        if 1 < kt <= 8:
            b.try_add({"op": "unroll", "loop": "ki"})
    b.add({"op": "decompose_reduction", "block": "b", "loop": "ko"})
    return b.program()


def _column_operand(b: _Builder) -> int | None:
    """Read index of the main block's right-hand operand: the input whose innermost index
    is the column iterator and which is not indexed by the row iterator (``B`` of ``A @ B``),
    or None when no read has that shape."""
    from tvm import tirx

    blk = b.env.sch.get(b.env.block("b", 0))
    spatial = [iv.var for iv in blk.iter_vars if int(iv.iter_type) == 0]
    if len(spatial) < 2:
        return None
    col, row = spatial[-1], spatial[-2]
    written = [w.source for w in blk.writes]
    for idx, r in enumerate(blk.reads):
        if any(r.source.same_as(w) for w in written) or not r.region:
            continue
        dims = [list(tirx.analysis.undefined_vars(rg.min)) for rg in r.region]
        uses_col = any(v.same_as(col) for v in dims[-1])
        uses_row = any(v.same_as(row) for dim in dims for v in dim)
        if uses_col and not uses_row:
            return idx
    return None


def _conv_template(kernel: Kernel, d: dict[str, Any], lanes: int) -> ScheduleProgram:
    """Direct convolution: vectorized output channels × register-tiled width, parallel outside.

    For NHWC/HWIO convolutions (see ``prepare_module``) the innermost spatial loop is the
    output channel, contiguous in output and weight: it is split by ``vt`` and vectorized;
    the width loop is split by ``rt`` into a register tile; the input-channel reduction is
    split by ``kt``. ``k_out`` puts the filter window outside the channel reduction and the
    register tile innermost (accumulators stay in registers); ``k_mid`` keeps the channel
    tiles outermost. Padding producers are inlined (``inline``) or computed per width tile;
    element-wise epilogues (bias, residual, ReLU) are computed per output-channel tile.
    """
    main = kernel.main_block
    b = _Builder(kernel.func)
    idx = kernel.blocks.index(main)
    producers = [blk for blk in kernel.blocks[:idx] if "R" not in blk.loop_kinds]
    consumers = [blk for blk in kernel.blocks[idx + 1 :] if "R" not in blk.loop_kinds]
    pads: list[str] = []
    for blk in producers:
        name = f"p{kernel.blocks.index(blk)}"
        b.add({"op": "get_sblock", "name": blk.name, "out": name})
        if not (d["inline"] and b.try_add({"op": "compute_inline", "block": name})):
            pads.append(name)
    epilogue, names = _epilogue_and_loops(b, main, consumers)
    ext = dict(zip(names, main.loop_extents, strict=True))
    spatial = [n for n, k in zip(names, main.loop_kinds, strict=True) if k == "S"]
    reduce = [n for n, k in zip(names, main.loop_kinds, strict=True) if k == "R"]
    if epilogue is None and d["cache_write"] and main.writes_param:
        b.add(
            {"op": "cache_write", "block": "b", "buffer_index": 0, "scope": "global", "out": "cw"}
        )
        epilogue = "cw"
    co, w = spatial[-1], spatial[-2]
    outer = spatial[:-2]
    vt = _fit(ext[co], d["vt"])
    rt = _fit(ext[w], d["rt"])
    r_main = max(reduce, key=lambda n: (ext[n], reduce.index(n)))
    kt = _fit(ext[r_main], d["kt"])
    rest_r = [n for n in reduce if n != r_main]
    b.add({"op": "split", "loop": co, "factors": [None, vt], "out": ["co_o", "co_i"]})
    b.add({"op": "split", "loop": w, "factors": [None, rt], "out": ["w_o", "w_i"]})
    b.add({"op": "split", "loop": r_main, "factors": [None, kt], "out": ["ci_o", "ci_i"]})
    # ``hin``: small feature maps also keep the height loop inside the register tile, so the
    # weights (the bulk of the traffic in late layers) are streamed once, not once per row.
    inner_h: list[str] = []
    if d.get("hin") and outer and ext[outer[-1]] * rt <= 16:
        inner_h = [outer[-1]]
        outer = outer[:-1]
    # ``co_first``: output-channel tiles outermost, so the tasks one thread runs in a row
    # share a weight tile (read from DRAM once, then from L2) instead of sweeping all weights
    # once per output row.
    par = ["co_o", *outer, "w_o"] if d.get("co_first") else [*outer, "w_o", "co_o"]
    if d["order"] == "k_out":
        order = par + rest_r + ["ci_o", "ci_i", *inner_h, "w_i", "co_i"]
    else:
        order = par + ["ci_o"] + rest_r + ["ci_i", *inner_h, "w_i", "co_i"]
    b.add({"op": "reorder", "loops": order})
    if epilogue is not None and b.try_add(
        {"op": "reverse_compute_at", "block": epilogue, "loop": par[-1]}
    ):
        epi_loops = [f"el{i}" for i in range(len(b.loops_of(epilogue)))]
        b.add({"op": "get_loops", "block": epilogue, "out": epi_loops})
        b.try_add({"op": "vectorize", "loop": epi_loops[-1]})
    b.add({"op": "fuse", "loops": par, "out": "par"})
    for name in pads:
        b.try_add({"op": "compute_at", "block": name, "loop": "par"})
    if d["parallel"]:
        b.try_add({"op": "parallel", "loop": "par"})
    # One vector of output channels per instruction: a wider channel tile is unrolled over
    # vectors (an accumulator tile rt × vt/vec), and a packed-weight block (see
    # ``prepare_module``) is never straddled by one vector, so its loads stay contiguous.
    vec = _vector_lanes(kernel, lanes)
    if vt > vec and vt % vec == 0:
        b.add({"op": "split", "loop": "co_i", "factors": [None, vec], "out": ["co_v", "co_l"]})
        b.try_add({"op": "vectorize", "loop": "co_l"})
        if d["unroll"]:
            b.try_add({"op": "unroll", "loop": "co_v"})
    elif vt > 1:
        b.try_add({"op": "vectorize", "loop": "co_i"})
    if d["unroll"]:
        for h in inner_h:
            b.try_add({"op": "unroll", "loop": h})
        if rt > 1:
            b.try_add({"op": "unroll", "loop": "w_i"})
        if 1 < kt <= 8:
            b.try_add({"op": "unroll", "loop": "ci_i"})
    first_r = (rest_r + ["ci_o"])[0] if d["order"] == "k_out" else "ci_o"
    b.add({"op": "decompose_reduction", "block": "b", "loop": first_r})
    return b.program()


def _vector_lanes(kernel: Kernel, lanes: int) -> int:
    """Vector width for output channels: the machine's lanes, capped by a packed weight's
    innermost block (a 5-D weight ``[CO/P, KH, KW, CI, P]``)."""
    vec = lanes
    for buf in kernel.func.params:  # TVM 0.27: PrimFunc parameters are the buffers
        if len(getattr(buf, "shape", ())) == 5:
            p = int(buf.shape[-1])
            if p > 1:
                vec = min(vec, p) if vec % p == 0 or p % vec == 0 else vec
    return max(1, vec)


def _rows_template(kernel: Kernel, d: dict[str, Any], lanes: int) -> ScheduleProgram:
    """Row-parallel schedule for elementwise and multi-block row reductions (softmax, norm)."""
    b = _Builder(kernel.func)
    outputs = [blk for blk in kernel.blocks if blk.writes_param]
    out_blk = outputs[-1] if outputs else kernel.blocks[-1]
    others = [blk for blk in kernel.blocks if blk is not out_blk]
    kept: list[tuple[str, BlockInfo]] = []
    for n, blk in enumerate(others):
        name = f"q{n}"
        b.add({"op": "get_sblock", "name": blk.name, "out": name})
        if d["inline"] and "R" not in blk.loop_kinds and not blk.writes_param:
            if b.try_add({"op": "compute_inline", "block": name}):
                continue
        kept.append((name, blk))
    b.add({"op": "get_sblock", "name": out_blk.name, "out": "o"})
    n_loops = len(b.loops_of("o"))
    names = [f"l{i}" for i in range(n_loops)]
    b.add({"op": "get_loops", "block": "o", "out": names})
    if n_loops == 0:
        return b.program()
    if n_loops == 1:
        ext = b.loops_of("o")[0]
        vt = _fit(ext, d["vt"])
        b.add({"op": "split", "loop": "l0", "factors": [None, vt], "out": ["r", "c"]})
        if d["parallel"]:
            b.try_add({"op": "parallel", "loop": "r"})
        b.try_add({"op": "vectorize", "loop": "c"})
        return b.program()
    rows, col = names[:-1], names[-1]
    tile = int(d.get("tile2d", 0))
    if tile > 1 and not kept:
        return _tile2d(b, names, b.loops_of("o"), tile, d)
    attached = []
    for name, _blk in reversed(kept):
        if b.try_add({"op": "compute_at", "block": name, "loop": rows[-1]}):
            attached.append(name)
    if len(rows) > 1:
        b.try_add({"op": "fuse", "loops": rows, "out": "rows"})
        row = "rows" if "rows" in b.env.loops else rows[0]
    else:
        row = rows[0]
    if d["parallel"]:
        b.try_add({"op": "parallel", "loop": row})
    ext = b.loops_of("o")[-1]
    vt = _fit(ext, d["vt"])
    if vt > 1 and b.try_add(
        {"op": "split", "loop": col, "factors": [None, vt], "out": ["co", "ci"]}
    ):
        b.try_add({"op": "vectorize", "loop": "ci"})
    for name, blk in kept:
        if "R" in blk.loop_kinds or name not in attached:
            continue
        inner = b.loops_of(name)
        lnames = [f"{name}_l{i}" for i in range(len(inner))]
        b.add({"op": "get_loops", "block": name, "out": lnames})
        vt2 = _fit(inner[-1], d["vt"])
        if vt2 > 1 and b.try_add(
            {
                "op": "split",
                "loop": lnames[-1],
                "factors": [None, vt2],
                "out": [f"{name}_co", f"{name}_ci"],
            }
        ):
            b.try_add({"op": "vectorize", "loop": f"{name}_ci"})
    return b.program()


def _tile2d(
    b: _Builder, names: list[str], extents: list[int], tile: int, d: dict[str, Any]
) -> ScheduleProgram:
    """Cache-blocked copy (transposes, layout changes): tile the last two loops by ``tile``."""
    ti, tj = _fit(extents[-2], tile), _fit(extents[-1], tile)
    if ti == 1 or tj == 1:
        raise ScheduleProgramError("tile2d needs two tileable innermost loops")
    b.add({"op": "split", "loop": names[-2], "factors": [None, ti], "out": ["i_o", "i_i"]})
    b.add({"op": "split", "loop": names[-1], "factors": [None, tj], "out": ["j_o", "j_i"]})
    b.add({"op": "reorder", "loops": ["i_o", "j_o", "i_i", "j_i"]})
    outer = [*names[:-2], "i_o", "j_o"]
    if len(outer) > 1:
        b.add({"op": "fuse", "loops": outer, "out": "par"})
    par = "par" if len(outer) > 1 else outer[0]
    if d["parallel"]:
        b.try_add({"op": "parallel", "loop": par})
    b.try_add({"op": "vectorize", "loop": "j_i"})
    return b.program()


# --- GPU ------------------------------------------------------------------------------------------
#: Decisions of the GPU template: threads over rows (``ty``) and columns (``tx``), each thread's
#: register tile (``ri`` × ``ci``), the reduction chunk staged in shared memory (``kt``), the
#: vector width of the cooperative shared-memory loads (``vec``).
_GPU_SPACE: dict[str, tuple[Any, ...]] = {
    "ty": (4, 8, 16, 32),
    "tx": (8, 16, 32),
    "ri": (1, 2, 4, 8),
    "ci": (1, 2, 4, 8),
    "kt": (4, 8, 16, 32),
    "vec": (1, 2, 4),
    "unroll": (0, 1),
}


def is_gpu_target(target: Any) -> bool:
    """True for targets whose kernels must bind every loop to GPU threads (CUDA, ROCm, ...)."""
    keys = getattr(target, "keys", None)
    if keys is not None:
        return "gpu" in [str(k) for k in keys]
    return isinstance(target, dict) and target.get("kind") in ("cuda", "rocm", "vulkan", "metal")


def gpu_template_fits(kernel: Kernel) -> bool:
    """The GPU template tiles one reduction block whose spatial loops all come before its
    reduction loops (matmul, batched matmul, NHWC conv); other blocks must be inlinable."""
    kinds = kernel.main_block.loop_kinds
    if "R" not in kinds or "O" in kinds or "S" not in kinds:
        return False
    first_r = kinds.index("R")
    return all(k == "S" for k in kinds[:first_r]) and all(k == "R" for k in kinds[first_r:])


def _gpu_template(kernel: Kernel, d: dict[str, Any]) -> ScheduleProgram:
    """Two-level tiling for a GPU: a thread block computes a (ty·ri) × (tx·ci) output tile, each
    of its ty·tx threads an ri × ci register tile (``cache_write`` to ``local``); for each ``kt``
    chunk of the innermost reduction loop the inputs' slices are staged in shared memory by all
    threads together (``_stage_in_shared``). Spatial loops before the row loop (batch, image
    rows) join the block index; reduction loops before the innermost (a conv's window) stay
    outside the chunk. Producers (padding) are inlined; an elementwise consumer is computed by
    the thread that owns the tile. Raises ScheduleProgramError when it does not fit.
    """
    if not gpu_template_fits(kernel):
        raise ScheduleProgramError("GPU template: needs spatial loops, then reduction loops")
    main = kernel.main_block
    b = _Builder(kernel.func)
    idx = kernel.blocks.index(main)
    consumers = []
    for n, blk in enumerate(kernel.blocks):
        if blk.name == main.name:
            continue
        b.add({"op": "get_sblock", "name": blk.name, "out": f"o{n}"})
        if n < idx:
            b.add({"op": "compute_inline", "block": f"o{n}"})
        else:
            consumers.append(f"o{n}")
    for c in consumers[:-1]:
        b.add({"op": "compute_inline", "block": c})
    epilogue = consumers[-1] if consumers else None
    b.add({"op": "get_sblock", "name": main.name, "out": "b"})
    b.add({"op": "cache_write", "block": "b", "buffer_index": 0, "scope": "local", "out": "wb"})
    kinds = main.loop_kinds
    names = [f"l{i}" for i in range(len(kinds))]
    b.add({"op": "get_loops", "block": "b", "out": names})
    ext = dict(zip(names, main.loop_extents, strict=True))
    spatial = [n for n, k in zip(names, kinds, strict=True) if k == "S"]
    reduce = [n for n, k in zip(names, kinds, strict=True) if k == "R"]
    cols = spatial[-1]
    rows = spatial[-2] if len(spatial) >= 2 else None
    red_outer, red = reduce[:-1], reduce[-1]
    tx = _fit(ext[cols], d["tx"])
    ci = _fit(ext[cols] // tx, d["ci"])
    b.add({"op": "split", "loop": cols, "factors": [None, tx, ci], "out": ["co", "txl", "cin"]})
    order_o, order_t, order_i = [*spatial[:-2], "co"], ["txl"], ["cin"]
    ty = 1
    if rows is not None:
        ty = _fit(ext[rows], d["ty"])
        ri = _fit(ext[rows] // ty, d["ri"])
        b.add({"op": "split", "loop": rows, "factors": [None, ty, ri], "out": ["ro", "tyl", "rin"]})
        order_o, order_t, order_i = [*spatial[:-2], "ro", "co"], ["tyl", "txl"], ["rin", "cin"]
    kt = _fit(ext[red], d["kt"])
    b.add({"op": "split", "loop": red, "factors": [None, kt], "out": ["ko", "ki"]})
    b.add({"op": "reorder", "loops": [*order_o, *order_t, *red_outer, "ko", "ki", *order_i]})
    bx = order_o[0]
    if len(order_o) > 1:
        b.add({"op": "fuse", "loops": order_o, "out": "bx"})
        bx = "bx"
    b.add({"op": "bind", "loop": bx, "thread": "blockIdx.x"})
    th = order_t[0]
    if len(order_t) > 1:
        b.add({"op": "fuse", "loops": order_t, "out": "th"})
        th = "th"
    b.add({"op": "bind", "loop": th, "thread": "threadIdx.x"})
    b.add({"op": "reverse_compute_at", "block": "wb", "loop": th})
    if epilogue is not None:
        b.add({"op": "reverse_compute_at", "block": epilogue, "loop": th})
    for i in range(main.n_reads):
        _stage_in_shared(b, f"s{i}", i, tx * ty, red_outer, d.get("vec", 1))
    b.add({"op": "decompose_reduction", "block": "b", "loop": (red_outer or ["ko"])[0]})
    if d.get("unroll"):
        b.try_add({"op": "unroll", "loop": "ki"})
    return b.program()


def _stage_in_shared(
    b: _Builder, sh: str, index: int, threads: int, red_outer: list[str], vec: int
) -> None:
    """Stage input ``index`` of the main block in shared memory per reduction chunk, loaded by
    all ``threads`` together (vectorised by ``vec`` when it applies). Optional: a slice TVM cannot
    bound leaves that input read from global memory."""
    steps: list[dict[str, Any]] = [
        {"op": "cache_read", "block": "b", "buffer_index": index, "scope": "shared", "out": sh},
        {"op": "compute_at", "block": sh, "loop": "ko"},
    ]
    if not b.try_group(steps):
        return
    # its loops: the block's (bx), the thread's (th), the reduction's down to the chunk (ko),
    # then the slice's
    outer = [f"{sh}_bx", f"{sh}_th", *[f"{sh}_{n}" for n in red_outer], f"{sh}_ko"]
    inner = [f"{sh}_d{j}" for j in range(len(b.loops_of(sh)) - len(outer))]
    b.add({"op": "get_loops", "block": sh, "out": [*outer, *inner]})
    fused = inner[0]
    if len(inner) > 1:
        b.add({"op": "fuse", "loops": inner, "out": f"{sh}_f"})
        fused = f"{sh}_f"
    vector: list[dict[str, Any]] = [
        {"op": "split", "loop": fused, "factors": [None, threads, vec],
         "out": [f"{sh}_o", f"{sh}_t", f"{sh}_v"]},
        {"op": "bind", "loop": f"{sh}_t", "thread": "threadIdx.x"},
        {"op": "vectorize", "loop": f"{sh}_v"},
    ]  # fmt: skip
    if vec > 1 and b.try_group(vector):
        return
    b.add({"op": "split", "loop": fused, "factors": [None, threads], "out": [f"{sh}_o", f"{sh}_t"]})
    b.add({"op": "bind", "loop": f"{sh}_t", "thread": "threadIdx.x"})


def _gpu_seeds() -> list[dict[str, Any]]:
    base: dict[str, Any] = {"gpu": 1, "ty": 16, "tx": 16, "ri": 4, "ci": 4, "kt": 16, "vec": 1,
                            "unroll": 1}  # fmt: skip
    variants: list[dict[str, Any]] = [
        {},
        {"ty": 8, "tx": 32, "ri": 8, "ci": 4, "kt": 8},
        {"ri": 2, "ci": 2, "kt": 8},
        {"vec": 4},
        {"ty": 16, "tx": 8, "ri": 8, "ci": 8, "kt": 8},
        {"ty": 32, "tx": 8, "ri": 4, "ci": 4, "kt": 32},
        {"ty": 8, "tx": 16, "ri": 4, "ci": 8, "kt": 16, "vec": 2},
        {"ri": 1, "ci": 1, "kt": 32, "unroll": 0},
    ]
    return [{**base, **v} for v in variants]


def template_for(kernel: Kernel) -> str:
    """Which template fits the kernel: ``conv``, ``tiled`` (matmul/batched reduction) or ``rows``."""
    main = kernel.main_block
    if (
        kernel.kernel_class == "conv"
        and "O" not in main.loop_kinds
        and main.loop_kinds.count("S") >= 2
        and main.loop_kinds.count("R") >= 1
    ):
        return "conv"
    if kernel.kernel_class in ("matmul", "conv") and "O" not in main.loop_kinds:
        return "tiled"
    if (
        kernel.kernel_class == "reduction"
        and main.loop_kinds.count("S") >= 2
        and "O" not in main.loop_kinds
        and len([b for b in kernel.blocks if "R" in b.loop_kinds]) == 1
    ):
        return "tiled"
    return "rows"


def build_program(kernel: Kernel, decisions: dict[str, Any], lanes: int = 16) -> ScheduleProgram:
    """The template program for ``kernel`` under ``decisions`` (raises ScheduleProgramError)."""
    if decisions.get("gpu"):
        return _gpu_template(kernel, decisions)
    name = template_for(kernel)
    if name == "conv" and decisions.get("tmpl") == "tiled":
        name = "tiled"
    tmpl = {"conv": _conv_template, "tiled": _tiled_template}.get(name, _rows_template)
    return tmpl(kernel, decisions, lanes)


class OfflineProposer:
    """Heuristic templates seeded around sensible tiles, then evolutionary mutation."""

    name = "offline"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._decisions: dict[str, dict[str, Any]] = {}
        self._seen: set[str] = set()
        self._pending: list[dict[str, Any]] | None = None

    def _seeds(self, kernel: Kernel, lanes: int) -> list[dict[str, Any]]:
        if template_for(kernel) == "conv":
            return self._conv_seeds(kernel, lanes)
        base: dict[str, Any] = {
            "vt": lanes * 4,
            "rt": 8,
            "kt": 4,
            "order": "k_mid",
            "cache_write": 0,
            "unroll": 1,
            "inline": 1,
            "parallel": 1,
        }
        variants: list[dict[str, Any]] = [
            {},
            {"vt": lanes, "rt": 8},
            {"vt": lanes * 2, "rt": 4, "kt": 8},
            {"cache_write": 1},
            {"vt": lanes * 4, "rt": 16, "kt": 8, "order": "k_out"},
            {"vt": lanes, "rt": 32, "kt": 16, "unroll": 0},
            {"vt": lanes * 8, "rt": 4, "kt": 2, "cache_write": 1},
            {"inline": 0},
        ]
        seeds = [{**base, **v} for v in variants]
        if kernel.kernel_class == "matmul" and template_for(kernel) == "tiled":
            seeds = _interleave(self._mk_seeds(lanes), seeds)
        if kernel.kernel_class == "elementwise" and len(kernel.blocks) == 1:
            seeds[1:1] = [{**base, "tile2d": 16}, {**base, "tile2d": 8, "parallel": 0}]
        # Thread-pool launch costs ~10-20 us: small kernels also start single-threaded.
        if kernel.flops < 4e6:
            seeds = [
                s
                for pair in zip(seeds, [{**s, "parallel": 0} for s in seeds], strict=True)
                for s in pair
            ]
        return seeds

    @staticmethod
    def _mk_seeds(lanes: int) -> list[dict[str, Any]]:
        # Register micro-kernels: rt rows × vt/lanes vectors of accumulators (≤ 8-12 of the
        # 16 ymm registers on AVX2), column panels outermost first.
        base: dict[str, Any] = {
            "mk": 1,
            "vt": lanes * 2,
            "rt": 4,
            "kt": 4,
            "nc": 1,
            "pack": 1,
            "order": "k_out",
            "cache_write": 0,
            "co_first": 1,
            "unroll": 1,
            "inline": 1,
            "parallel": 1,
        }
        variants: list[dict[str, Any]] = [
            {},
            {"pack": 0},
            {"cache_write": 1},
            {"vt": lanes * 4, "rt": 2},
            {"pack": 0, "co_first": 0},
            {"vt": lanes, "rt": 8},
            {"nc": 4},
            {"kt": 1},
            {"vt": lanes * 3, "rt": 4},
        ]
        return [{**base, **v} for v in variants]

    def _conv_seeds(self, kernel: Kernel, lanes: int) -> list[dict[str, Any]]:
        # Register tile rt × vt/lanes accumulators (≤ 8 of 16 ymm registers on AVX2).
        base: dict[str, Any] = {
            "vt": lanes * 2,
            "rt": 4,
            "kt": 4,
            "order": "k_out",
            "cache_write": 1,
            "unroll": 1,
            "inline": 1,
            "parallel": 1,
        }
        variants: list[dict[str, Any]] = [
            {},
            {"vt": lanes * 4, "rt": 2},
            {"vt": lanes, "rt": 8},
            {"vt": lanes * 2, "rt": 4, "kt": 1},
            {"vt": lanes * 4, "rt": 2, "kt": 8},
            {"vt": lanes * 8, "rt": 1},
            {"inline": 0},
            {"order": "k_mid"},
        ]
        seeds = [{**base, **v} for v in variants]
        # Weight-bound convolutions (few output pixels per weight) also try channel tiles
        # outermost, each weight tile streamed once (see ``_conv_template``).
        seeds[1:1] = [{**s, "co_first": 1} for s in seeds[:2]]
        spatial = [
            e
            for e, k in zip(
                kernel.main_block.loop_extents, kernel.main_block.loop_kinds, strict=True
            )
            if k == "S"
        ]
        if len(spatial) >= 3 and spatial[-2] * spatial[-3] <= 16:
            seeds[1:1] = [
                {**base, "hin": 1, "rt": 2, "vt": lanes * 2, "kt": 8},
                {**base, "hin": 1, "rt": 2, "vt": lanes * 2, "kt": 8, "co_first": 1},
                {**base, "hin": 1, "rt": 4, "vt": lanes, "kt": 8},
            ]
        # The generic tiled template (register tile over width, k_mid) competes too.
        tiled: dict[str, Any] = {
            "vt": lanes * 4,
            "rt": 8,
            "kt": 4,
            "order": "k_mid",
            "cache_write": 1,
            "unroll": 1,
            "inline": 1,
            "parallel": 1,
            "tmpl": "tiled",
        }
        seeds = [seeds[0], tiled, seeds[1], {**tiled, "vt": lanes * 2, "rt": 4}, *seeds[2:]]
        if kernel.flops < 2e6:
            seeds = [
                s
                for pair in zip(seeds, [{**s, "parallel": 0} for s in seeds], strict=True)
                for s in pair
            ]
        return seeds

    def _mutate(self, d: dict[str, Any]) -> dict[str, Any]:
        out = dict(d)
        space = _GPU_SPACE if d.get("gpu") else {**_SPACE, **_MK_SPACE} if d.get("mk") else _SPACE
        for _ in range(self._rng.choice((1, 1, 2))):
            key = self._rng.choice(list(space))
            vals = space[key]
            cur = out.get(key, vals[0])
            i = vals.index(cur) if cur in vals else 0
            j = max(0, min(len(vals) - 1, i + self._rng.choice((-1, 1))))
            if j == i:
                j = self._rng.randrange(len(vals))
            out[key] = vals[j]
        return out

    def propose(
        self,
        kernel: Kernel,
        target: Any,
        history: Sequence[Trial],
        n: int,
        hardware: HardwareSpec,
    ) -> list[Proposal]:
        lanes = max(1, hardware.vector_bits // 32)
        for t in history:
            if t.program is not None:
                self._seen.add(t.program.key())
        good = sorted(
            (
                t
                for t in history
                if t.ok and t.program is not None and t.program.key() in self._decisions
            ),
            key=lambda t: t.latency_s or float("inf"),
        )
        if self._pending is None:
            self._pending = _gpu_seeds() if is_gpu_target(target) else self._seeds(kernel, lanes)
        pool: list[dict[str, Any]]
        if not good:
            pool = list(self._pending)
        else:
            # Half the round from untried seeds (template variants), half mutations of the best.
            parents = [self._decisions[t.program.key()] for t in good[:3]]  # type: ignore[union-attr]
            n_seed = max(1, n // 2) if self._pending else 0
            mutants = [self._mutate(parents[min(i % len(parents), i // 3)]) for i in range(n * 6)]
            pool = list(self._pending[:n_seed]) + mutants + list(self._pending[n_seed:])
        out: list[Proposal] = []
        for d in pool:
            if len(out) >= n:
                break
            if d in self._pending:
                self._pending.remove(d)
            try:
                prog = build_program(kernel, d, lanes)
            except ScheduleProgramError:
                continue
            key = prog.key()
            if key in self._seen:
                continue
            self._seen.add(key)
            self._decisions[key] = d
            out.append(Proposal(program=prog, note=_describe(d)))
        return out


def _interleave(first: list[Any], second: list[Any]) -> list[Any]:
    """``first[0], second[0], first[1], second[1], ...`` then the longer list's rest."""
    out: list[Any] = []
    for i in range(max(len(first), len(second))):
        out.extend(x[i] for x in (first, second) if i < len(x))
    return out


def _describe(d: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(d.items()))


__all__ = ["OfflineProposer", "build_program", "gpu_template_fits", "is_gpu_target", "template_for"]
