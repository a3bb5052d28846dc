"""The fleet study of arXiv 2507.19635: tokens/s per USD of every prefill::decode device pair, per workload cell.

A cell is (model, precision, ISL/OSL, SLA). For each pair P::D the study picks the tensor-parallel
degree of each side (within a chassis) and the largest batch the SLA and memory allow, then
prices a balanced disaggregated system: one prefill instance plus as many decode instances
(fractional, the paper assumes unlimited hardware) as it keeps busy. ``tco_benefit`` is
tokens per USD relative to ``h100::h100`` in the same cell.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from terrazzo.costmodel import llm
from terrazzo.costmodel.catalog import DeviceSpec
from terrazzo.costmodel.tco import TCOOptions, usd_per_hour
from terrazzo.errors import TerrazzoError
from terrazzo.frontend.agent import llm_config_from_hf
from terrazzo.frontend.agent_spec import LLM_PRESETS
from terrazzo.report import phases
from terrazzo.report.phases import PhaseDevice

MODELS = ("llama3-8b", "llama3-70b")
PRECISIONS = ("fp16", "fp8")
SEQ_LENS = ((512, 4096), (4096, 512))
SLAS = ("interactive", "offline")
TP_DEGREES = (1, 2, 4, 8)
BASELINE_PAIR = ("h100", "h100")
# Practical caps: scheduler limits of LLM servers (vLLM max_num_seqs, max_num_batched_tokens).
MAX_DECODE_BATCH = 1024
MAX_PREFILL_TOKENS = 65536


@dataclass(frozen=True, slots=True)
class StudyOptions:
    """What the study sweeps and how it prices hardware."""

    models: tuple[str, ...] = MODELS
    precisions: tuple[str, ...] = PRECISIONS
    seq_lens: tuple[tuple[int, int], ...] = SEQ_LENS
    slas: tuple[str, ...] = SLAS
    tp_degrees: tuple[int, ...] = TP_DEGREES
    ttft_s: float = 0.250
    tbt_s: float = 0.020
    tco: TCOOptions = field(default_factory=TCOOptions)
    devices: tuple[str, ...] | None = None  # None = every device of the catalog


@dataclass(frozen=True, slots=True)
class PhaseChoice:
    """The best configuration of one phase on one device class."""

    device: str
    tp: int
    batch: int
    latency_s: float  # prefill: TTFT incl. KV transfer; decode: TBT at the longest context
    requests_per_s: float  # per instance
    usd_per_hour: float  # per instance (tp devices)


@dataclass(frozen=True, slots=True)
class StudyRow:
    """One (cell, pair) result. Infeasible pairs have ``feasible=False`` and zero throughput."""

    model: str
    precision: str
    isl: int
    osl: int
    sla: str
    prefill: str
    decode: str
    feasible: bool
    tokens_per_s: float
    usd_per_hour: float
    tokens_per_usd: float
    tco_benefit: float | None
    baseline: str
    prefill_tp: int = 0
    decode_tp: int = 0
    prefill_batch: int = 0
    decode_batch: int = 0
    ttft_s: float = 0.0
    tbt_s: float = 0.0
    decode_instances_per_prefill: float = 0.0
    kv_bytes_per_request: int = 0
    fp8_mode: str = ""
    reason: str = ""

    @property
    def pair(self) -> str:
        return f"{self.prefill}::{self.decode}"

    @property
    def cell(self) -> tuple[str, str, int, int, str]:
        return (self.model, self.precision, self.isl, self.osl, self.sla)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["pair"] = self.pair
        return d


@dataclass(frozen=True, slots=True)
class StudyResult:
    """Every row of the study plus what it was run on."""

    profile: str
    options: StudyOptions
    rows: tuple[StudyRow, ...]
    device_usd_per_hour: Mapping[str, float]
    notes: tuple[str, ...] = ()

    def best_per_cell(self) -> list[StudyRow]:
        """The pair with the most tokens per USD in each cell (feasible rows only)."""
        best: dict[tuple[Any, ...], StudyRow] = {}
        for r in self.rows:
            if r.feasible and (
                r.cell not in best or r.tokens_per_usd > best[r.cell].tokens_per_usd
            ):
                best[r.cell] = r
        return list(best.values())

    def row(self, model: str, precision: str, isl: int, osl: int, sla: str, pair: str) -> StudyRow:
        for r in self.rows:
            if r.cell == (model, precision, isl, osl, sla) and r.pair == pair:
                return r
        raise KeyError((model, precision, isl, osl, sla, pair))

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "ttft_s": self.options.ttft_s,
            "tbt_s": self.options.tbt_s,
            "tco": asdict(self.options.tco),
            "device_usd_per_hour": dict(self.device_usd_per_hour),
            "assumptions": phases.describe(),
            "notes": list(self.notes),
            "rows": [r.to_json() for r in self.rows],
        }


def arch_of(model: str) -> llm.LLMConfig:
    """Cost-model config of a preset (``llama3-8b``, ``llama3-70b`` from ``costmodel.llm``; ``tiny-llama``)."""
    if model in llm.PRESETS:
        return llm.PRESETS[model]
    if model not in LLM_PRESETS:
        raise TerrazzoError(
            f"unknown model {model!r}; expected one of {sorted(set(LLM_PRESETS) | set(llm.PRESETS))}"
        )
    return phases.llm_config(llm_config_from_hf(LLM_PRESETS[model], model), model)


def _largest(ok: Any, hi: int) -> int:
    """Largest b in [1, hi] with ok(b) (ok monotone: true then false); 0 if ok(1) is false."""
    if hi < 1 or not ok(1):
        return 0
    lo = 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


class _Cell:
    """Memoised per-cell phase choices (prefill depends on the decode side only through its link)."""

    def __init__(self, arch: llm.LLMConfig, precision: str, isl: int, osl: int, sla: str, opts: StudyOptions,
                 prices: Mapping[str, float]) -> None:  # fmt: skip
        self.arch, self.precision, self.isl, self.osl, self.sla = arch, precision, isl, osl, sla
        self.opts, self.prices = opts, prices
        self.kv_req = phases.kv_cache_bytes(arch, isl, 1, precision)
        self._pcache: dict[tuple[str, float, float], PhaseChoice | None] = {}
        self._dcache: dict[tuple[str, float], PhaseChoice | None] = {}

    def prefill(
        self, dev: PhaseDevice, link_bw_per_tp: float, link_lat_s: float
    ) -> PhaseChoice | None:
        key = (dev.name, link_bw_per_tp, link_lat_s)
        if key not in self._pcache:
            self._pcache[key] = self._prefill(dev, link_bw_per_tp, link_lat_s)
        return self._pcache[key]

    def decode(self, dev: PhaseDevice, ingress_bw_per_tp: float) -> PhaseChoice | None:
        key = (dev.name, ingress_bw_per_tp)
        if key not in self._dcache:
            self._dcache[key] = self._decode(dev, ingress_bw_per_tp)
        return self._dcache[key]

    def _tps(self, dev: PhaseDevice) -> list[int]:
        return [t for t in self.opts.tp_degrees if t <= dev.spec.chassis_size]

    def _prefill(
        self, dev: PhaseDevice, link_bw_per_tp: float, link_lat_s: float
    ) -> PhaseChoice | None:
        a, p, isl = self.arch, self.precision, self.isl
        best: PhaseChoice | None = None
        for tp in self._tps(dev):
            if phases.max_batch(a, dev, isl, tp, p) < 1:
                continue
            bw = link_bw_per_tp * tp if math.isfinite(link_bw_per_tp) else math.inf

            def ttft(b: int, tp: int = tp, bw: float = bw) -> float:
                xfer = link_lat_s + self.kv_req * b / bw
                return phases.prefill_latency_s(a, dev, isl, b, tp, p) + xfer

            hi = min(phases.max_batch(a, dev, isl, tp, p), max(1, MAX_PREFILL_TOKENS // isl))
            if self.sla == "interactive":
                b = _largest(lambda b: ttft(b) <= self.opts.ttft_s, hi)
            else:
                b = hi
            if b < 1:
                continue
            lat = ttft(b)
            # The NIC streams KV out while the next batch computes: rate is the slower of the two.
            busy = max(phases.prefill_latency_s(a, dev, isl, b, tp, p), self.kv_req * b / bw)
            rps = b / busy
            usd = tp * self.prices[dev.name]
            cand = PhaseChoice(dev.name, tp, b, lat, rps, usd)
            if best is None or usd / rps < best.usd_per_hour / best.requests_per_s:
                best = cand
        return best

    def _decode(self, dev: PhaseDevice, ingress_bw_per_tp: float) -> PhaseChoice | None:
        a, p, isl, osl = self.arch, self.precision, self.isl, self.osl
        ctx_max = isl + osl
        best: PhaseChoice | None = None
        for tp in self._tps(dev):
            hi = min(phases.max_batch(a, dev, ctx_max, tp, p), MAX_DECODE_BATCH)
            if hi < 1:
                continue

            def tbt(b: int, tp: int = tp) -> float:
                return phases.decode_step_latency_s(a, dev, ctx_max, b, tp, p)

            b = (
                _largest(lambda b: tbt(b) <= self.opts.tbt_s, hi)
                if self.sla == "interactive"
                else hi
            )
            if b < 1:
                continue
            mean_step = phases.decode_step_latency_s(a, dev, isl + osl // 2, b, tp, p)
            rps = b / (osl * mean_step)
            rps = min(rps, ingress_bw_per_tp * tp / self.kv_req)  # KV arrivals over the NIC
            usd = tp * self.prices[dev.name]
            cand = PhaseChoice(dev.name, tp, b, tbt(b), rps, usd)
            if best is None or usd / rps < best.usd_per_hour / best.requests_per_s:
                best = cand
        return best


def run_study(
    catalog: Mapping[str, DeviceSpec],
    options: StudyOptions | None = None,
    *,
    datasheet: Mapping[str, DeviceSpec] | None = None,
    profile: str = "",
) -> StudyResult:
    """Evaluate every P::D pair of ``catalog`` in every cell of ``options``.

    Args:
        catalog: device classes (a costmodel Catalog or any name → DeviceSpec mapping).
        options: the sweep; defaults reproduce the paper's setup.
        datasheet: vendor datasheet entries used for the FP8:FP16 ratio (see
            ``phases.phase_device``); defaults to ``catalog`` itself.
        profile: label for the output.

    Returns:
        A StudyResult whose rows cover cells × pairs in a stable order.
    """
    opts = options or StudyOptions()
    names = list(opts.devices) if opts.devices is not None else list(catalog)
    if not names:
        raise TerrazzoError("the study needs at least one device class")
    devs: dict[str, PhaseDevice] = {}
    prices: dict[str, float] = {}
    skipped: list[str] = []
    for n in names:
        spec = catalog[n]
        try:
            prices[n] = usd_per_hour(spec, opts.tco)
        except TerrazzoError as e:
            skipped.append(f"{n}: {e}")
            continue
        ds = datasheet.get(n) if datasheet is not None and n in datasheet else None
        devs[n] = phases.phase_device(spec, ds)
    if not devs:
        raise TerrazzoError("no device of the study has a price: " + "; ".join(skipped))
    base_name = (
        "::".join(BASELINE_PAIR)
        if BASELINE_PAIR[0] in devs
        else f"{next(iter(devs))}::{next(iter(devs))}"
    )
    rows: list[StudyRow] = []
    for model, prec, (isl, osl), sla in itertools.product(
        opts.models, opts.precisions, opts.seq_lens, opts.slas
    ):
        arch = arch_of(model)
        cell = _Cell(arch, prec, isl, osl, sla, opts, prices)
        cell_rows = [
            _evaluate_pair(cell, devs[p], devs[d], model, prec, isl, osl, sla)
            for p, d in itertools.product(devs, devs)
        ]
        base = next((r for r in cell_rows if r.pair == base_name and r.feasible), None)
        for r in cell_rows:
            benefit = r.tokens_per_usd / base.tokens_per_usd if (base and r.feasible) else None
            rows.append(_replace(r, tco_benefit=benefit, baseline=base_name))
    notes = [f"skipped (no price under {opts.tco.pricing} pricing): {s}" for s in skipped]
    return StudyResult(profile, opts, tuple(rows), prices, tuple(notes))


def _replace(r: StudyRow, **kw: Any) -> StudyRow:
    from dataclasses import replace

    return replace(r, **kw)


def _evaluate_pair(cell: _Cell, pd: PhaseDevice, dd: PhaseDevice, model: str, prec: str, isl: int, osl: int,
                   sla: str) -> StudyRow:  # fmt: skip
    bw_p = pd.spec.scaleout_bw_bytes_per_s
    bw_d = dd.spec.scaleout_bw_bytes_per_s
    _, lat = phases.kv_link(pd, dd, 1, 1)
    # The link is bounded by the slower side; per-TP bandwidth of the prefill side as seen here.
    pre = cell.prefill(pd, min(bw_p, bw_d), lat)
    dec = cell.decode(dd, bw_d)
    mode = "native" if prec != "fp8" else f"{phases.fp8_mode(pd)}::{phases.fp8_mode(dd)}"
    common: dict[str, Any] = dict(model=model, precision=prec, isl=isl, osl=osl, sla=sla, prefill=pd.name, decode=dd.name,
                  kv_bytes_per_request=cell.kv_req, fp8_mode=mode, tco_benefit=None, baseline="")  # fmt: skip
    if pre is None or dec is None:
        why = []
        if pre is None:
            why.append(f"prefill on {pd.name}: " + _why(cell, pd, "prefill"))
        if dec is None:
            why.append(f"decode on {dd.name}: " + _why(cell, dd, "decode"))
        return StudyRow(**common, feasible=False, tokens_per_s=0.0, usd_per_hour=0.0, tokens_per_usd=0.0,
                        reason="; ".join(why))  # fmt: skip
    n_dec = pre.requests_per_s / dec.requests_per_s
    usd_h = pre.usd_per_hour + n_dec * dec.usd_per_hour
    tok_s = pre.requests_per_s * osl
    return StudyRow(
        **common, feasible=True, tokens_per_s=tok_s, usd_per_hour=usd_h, tokens_per_usd=tok_s * 3600.0 / usd_h,
        prefill_tp=pre.tp, decode_tp=dec.tp, prefill_batch=pre.batch, decode_batch=dec.batch,
        ttft_s=pre.latency_s, tbt_s=dec.latency_s, decode_instances_per_prefill=n_dec,
    )  # fmt: skip


def _why(cell: _Cell, dev: PhaseDevice, phase: str) -> str:
    tps = [t for t in cell.opts.tp_degrees if t <= dev.spec.chassis_size]
    tp = max(tps) if tps else 1
    tokens = cell.isl if phase == "prefill" else cell.isl + cell.osl
    if phases.max_batch(cell.arch, dev, tokens, tp, cell.precision) < 1:
        need = phases.weights_bytes(cell.arch, cell.precision) / 1e9
        return f"weights ({need:.0f} GB) + one sequence's KV do not fit in {tp}×{dev.spec.mem_bytes / 1e9:.0f} GB"
    if phase == "prefill":
        t = phases.prefill_latency_s(cell.arch, dev, cell.isl, 1, tp, cell.precision)
        return f"TTFT of one prompt is {t * 1e3:.0f} ms > {cell.opts.ttft_s * 1e3:.0f} ms at TP{tp}"
    t = phases.decode_step_latency_s(cell.arch, dev, tokens, 1, tp, cell.precision)
    return f"TBT at batch 1 is {t * 1e3:.1f} ms > {cell.opts.tbt_s * 1e3:.0f} ms at TP{tp}"


def headline(
    result: StudyResult, pairs: Sequence[str] = ("b200::gaudi3", "h100::gaudi3", "b200::b200")
) -> list[dict[str, Any]]:
    """Per cell: the best pair, its TCO benefit, and the benefit of the paper's named pairs."""
    out = []
    best = {r.cell: r for r in result.best_per_cell()}
    cells = list(dict.fromkeys(r.cell for r in result.rows))
    for c in cells:
        b = best.get(c)
        entry: dict[str, Any] = {
            "model": c[0], "precision": c[1], "isl": c[2], "osl": c[3], "sla": c[4],
            "best_pair": b.pair if b else None, "best_tco_benefit": b.tco_benefit if b else None,
            "best_tokens_per_usd": b.tokens_per_usd if b else None,
        }  # fmt: skip
        for p in pairs:
            try:
                r = result.row(*c, p)
                entry[p] = r.tco_benefit if r.feasible else None
            except KeyError:
                entry[p] = None
        out.append(entry)
    return out
