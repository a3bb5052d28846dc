"""Serving estimate of one LLM on a node of N devices: TP/PP/replicas, batch, tokens/s, TTFT, TBT.

Built on the phase model of :mod:`terrazzo.costmodel.llm` (FLOPs, KV bytes, TP all-reduce),
for an *aggregated* server with continuous batching (vLLM, TensorRT-LLM, SGLang): prefill and
decode share the devices, a request's prompt is prefilled in the iteration it is admitted
(chunked prefill) and then decodes one token per iteration.

Per replica (``tp`` × ``pp`` devices) at ``B`` concurrent sequences:

- one decode iteration: ``max(GEMM FLOPs / (peak·c), weight bytes / (bw·m))`` (the GEMMs
  stream every weight once, compute- or bandwidth-bound) ``+ KV bytes / (bw·m)`` (attention
  reads each sequence's cache, a separate bandwidth-bound kernel) ``+`` two all-reduces per
  layer over the scale-up link (:func:`terrazzo.costmodel.llm.allreduce_latency_s`);
- prefill of ``n`` prompt tokens: ``FLOPs / (peak·c)`` plus its all-reduces;
- steady state: every ``osl`` iterations the batch turns over once, so one cycle is
  ``prefill(B·isl) + osl · decode(B, isl + osl/2)``; tokens/s = ``B·osl / cycle``; the mean
  time between tokens (TBT) is ``cycle / osl`` (decode iterations stretched by the prefill
  chunks mixed into them); TTFT is one prompt's prefill plus one iteration.

``c`` and ``m`` — the achievable fractions of peak FLOP/s and of HBM bandwidth — are fitted
per device class against published measurements (``benchmarks/llm_validation.py`` writes
``data/llm_efficiency.yaml``); classes without measurements use the per-kind prior.

Scenarios follow MLPerf Inference: ``offline`` has no latency bound (batch limited by memory
and by :data:`MAX_BATCH`); ``server`` and ``interactive`` bound p99 TTFT and TPOT. This model
predicts means; it reads the p99 bounds as bounds on the predicted TTFT and TBT (MLPerf runs
with no queue build-up at the reported rate, so p99 ≈ steady-state iteration time).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from terrazzo.costmodel import llm
from terrazzo.costmodel.catalog import DeviceSpec
from terrazzo.costmodel.efficiency import LINK_LATENCY_S
from terrazzo.errors import CostModelError

SCENARIOS = ("offline", "server", "interactive")
PRECISIONS = ("fp16", "bf16", "fp8", "fp4")
# Scheduler cap on concurrent sequences (TensorRT-LLM max_batch_size / vLLM max_num_seqs as
# MLPerf submissions set them: a few thousand at most).
MAX_BATCH = 4096

# MLPerf Inference datacenter latency bounds (p99 TTFT s, p99 TPOT s) per model and scenario.
# Llama 2 70B interactive 450 ms / 40 ms and Llama 3.1 405B server 6 s / 175 ms: NVIDIA's
# MLPerf v5.0 blog and AMD's v5.1 blog (rocm.blogs.amd.com/.../mlperf-inference5.1-repro).
# Llama 2 70B server 2 s / 200 ms: the v5.0 announcements give interactive as "4.4x lower
# TTFT and 5x shorter TPOT" than server (it-online.co.za, 2025-04-03) = 1.98 s / 200 ms.
# Models MLPerf does not run (or whose bounds we found no source for) use the Llama 2 70B ones.
MLPERF_BOUNDS: Mapping[str, Mapping[str, tuple[float, float]]] = MappingProxyType(
    {
        "llama2-70b": {"server": (2.0, 0.200), "interactive": (0.450, 0.040)},
        "llama3.1-405b": {"server": (6.0, 0.175), "interactive": (0.450, 0.040)},
    }
)
DEFAULT_BOUNDS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"server": (2.0, 0.200), "interactive": (0.450, 0.040)}
)

_EFFICIENCY_FILE = "llm_efficiency.yaml"


@dataclass(frozen=True, slots=True)
class ServingEfficiency:
    """Achievable fractions of peak: ``compute`` (GEMM FLOP/s), ``memory`` (HBM bandwidth)."""

    compute: float
    memory: float
    source: str = "prior"

    def __post_init__(self) -> None:
        for f in ("compute", "memory"):
            v = getattr(self, f)
            if not (0.0 < v <= 1.0):
                raise CostModelError(f"serving efficiency {f} must be in (0, 1], found {v!r}")


def load_efficiencies(path: str | Path | None = None) -> dict[str, ServingEfficiency]:
    """Device class (or ``kind:<kind>`` prior) → fitted efficiencies, from the data file."""
    if path is None:
        text = resources.files("terrazzo.costmodel").joinpath("data", _EFFICIENCY_FILE).read_text()
    else:
        text = Path(path).read_text()
    raw = yaml.safe_load(text) or {}
    out: dict[str, ServingEfficiency] = {}
    for name, e in (raw.get("classes") or {}).items():
        out[name] = ServingEfficiency(float(e["compute"]), float(e["memory"]), "fitted")
    for kind, e in (raw.get("priors") or {}).items():
        out[f"kind:{kind}"] = ServingEfficiency(float(e["compute"]), float(e["memory"]), "prior")
    return out


_EFF_CACHE: dict[str, dict[str, ServingEfficiency]] = {}


def efficiency_for(
    dev: DeviceSpec, table: Mapping[str, ServingEfficiency] | None = None
) -> ServingEfficiency:
    """The class's fitted efficiency, else its kind's prior."""
    if table is None:
        if "default" not in _EFF_CACHE:
            _EFF_CACHE["default"] = load_efficiencies()
        table = _EFF_CACHE["default"]
    if dev.name in table:
        return table[dev.name]
    if f"kind:{dev.kind}" in table:
        return table[f"kind:{dev.kind}"]
    return ServingEfficiency(0.5, 0.7, "prior")


# --- models -------------------------------------------------------------------------------------


def config_from_hf(path: str | Path) -> llm.LLMConfig:
    """An LLMConfig from a Hugging Face model directory (its ``config.json``) or the file itself.

    Reads hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads (default:
    heads), intermediate_size, vocab_size. MoE configs (num_local_experts / n_routed_experts)
    are refused: this dense model would misprice them.
    """
    p = Path(path)
    f = p / "config.json" if p.is_dir() else p
    if not f.is_file():
        raise CostModelError(f"{path}: no config.json (expected a Hugging Face model directory)")
    try:
        cfg = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CostModelError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CostModelError(f"{f}: expected a JSON object")
    for moe in ("num_local_experts", "n_routed_experts", "num_experts"):
        if cfg.get(moe):
            raise CostModelError(
                f"{f}: a mixture-of-experts model ({moe}={cfg[moe]}); the estimate models dense "
                "decoders only"
            )
    need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")  # fmt: skip
    missing = [k for k in need if not isinstance(cfg.get(k), int) or cfg[k] <= 0]
    if missing:
        raise CostModelError(f"{f}: missing or non-positive integer field(s) {', '.join(missing)}")
    kv = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    if not isinstance(kv, int) or kv <= 0:
        raise CostModelError(f"{f}: num_key_value_heads must be a positive integer, found {kv!r}")
    name = str(cfg.get("_name_or_path") or (p.name if p.is_dir() else p.parent.name) or "hf-model")
    return llm.LLMConfig.llama(
        name,
        cfg["num_hidden_layers"],
        cfg["hidden_size"],
        cfg["num_attention_heads"],
        kv,
        cfg["intermediate_size"],
        cfg["vocab_size"],
    )


def resolve_model(name_or_dir: str) -> llm.LLMConfig:
    """A preset name (``llama2-70b``, ``llama3.1-8b``, …) or a Hugging Face model directory."""
    if name_or_dir in llm.PRESETS:
        return llm.PRESETS[name_or_dir]
    if Path(name_or_dir).exists():
        return config_from_hf(name_or_dir)
    raise CostModelError(
        f"unknown model {name_or_dir!r}: neither a preset ({', '.join(llm.PRESETS)}) nor a "
        "directory with a config.json"
    )


def default_bounds(model: str, scenario: str) -> tuple[float, float] | None:
    """MLPerf's (TTFT s, TPOT s) for ``model`` in ``scenario``; None for offline."""
    if scenario == "offline":
        return None
    return MLPERF_BOUNDS.get(model, DEFAULT_BOUNDS).get(scenario, DEFAULT_BOUNDS[scenario])


# --- the estimate -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServingEstimate:
    """The chosen configuration of one node and its predicted figures."""

    model: str
    device: str
    count: int
    precision: str
    scenario: str
    isl: int
    osl: int
    tp: int
    pp: int
    replicas: int
    batch: int  # concurrent sequences per replica
    tokens_per_s: float  # output tokens/s of the whole node
    tokens_per_s_per_device: float
    ttft_ms: float
    tbt_ms: float
    ttft_bound_ms: float | None
    tbt_bound_ms: float | None
    weights_gb_per_device: float
    kv_gb_per_device: float
    mem_gb_per_device: float
    efficiency_compute: float
    efficiency_memory: float
    efficiency_source: str
    binding: str  # what limits the batch: memory, tbt, ttft, max_batch, fixed

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Replica:
    cfg: llm.LLMConfig
    dev: DeviceSpec
    precision: str
    tp: int
    pp: int
    eff: ServingEfficiency
    allreduce: Any

    @property
    def n(self) -> int:
        return self.tp * self.pp

    def _comm(self, tokens: int) -> float:
        act = tokens * self.cfg.d_model * llm.dtype_bytes(self.precision)
        return 2 * self.cfg.layers * float(self.allreduce(act, self.tp, self.dev))

    def _p2p(self) -> float:
        return (self.pp - 1) * LINK_LATENCY_S["scaleup"]

    def decode_s(self, batch: int, ctx: int) -> float:
        """Time between two tokens of a sequence at ``batch`` concurrent sequences.

        With ``pp`` stages the batch runs as ``pp`` micro-batches; each stage streams its share of
        the weights once per micro-batch, and a token crosses every stage: the latency is ``pp``
        stage times (so PP divides memory, not the per-token weight traffic).
        """
        mb = math.ceil(batch / self.pp)
        peak = self.dev.peak_flops_per_s(self.precision) * self.eff.compute
        bw = self.dev.mem_bw_bytes_per_s * self.eff.memory
        gemm = 2.0 * self.cfg.params * mb / self.n / peak
        weights = self.cfg.weight_bytes(self.precision) / self.n / bw
        attn_flops = 4.0 * self.cfg.layers * ctx * self.cfg.d_model * mb / self.n / peak
        kv = llm.kv_cache_bytes(self.cfg, ctx, mb, self.precision) / self.n / bw
        stage = max(gemm, weights) + max(kv, attn_flops) + self._comm(mb) / self.pp
        return self.pp * stage + self._p2p()

    def prefill_s(self, prompts: int, isl: int, *, latency: bool = False) -> float:
        """Prefill of ``prompts`` prompts: pipelined over the stages for throughput; for one
        prompt's latency (``latency=True``) the stages run one after the other."""
        if prompts <= 0:
            return 0.0
        peak = self.dev.peak_flops_per_s(self.precision) * self.eff.compute
        bw = self.dev.mem_bw_bytes_per_s * self.eff.memory
        compute = llm.prefill_flops(self.cfg, isl, prompts) / self.n / peak
        weights = self.cfg.weight_bytes(self.precision) / self.n / bw
        stages = self.pp if latency else 1
        return (
            stages * max(compute, weights)
            + self._comm(prompts * isl) / (1 if latency else self.pp)
            + self._p2p()
        )

    def max_batch_memory(self, ctx: int, utilisation: float = llm.MEM_UTILISATION) -> int:
        free = self.dev.mem_bytes * utilisation - self.weights_per_device()
        per_seq = llm.kv_cache_bytes(self.cfg, ctx, 1, self.precision) / self.n
        return max(0, int(free // per_seq)) if per_seq > 0 else MAX_BATCH

    def weights_per_device(self) -> float:
        return self.cfg.weight_bytes(self.precision) / self.n

    def figures(self, batch: int, isl: int, osl: int) -> tuple[float, float, float]:
        """(tokens/s of this replica, TTFT s, mean TBT s) at ``batch`` concurrent sequences."""
        step = self.decode_s(batch, isl + osl // 2)
        cycle = self.prefill_s(batch, isl) + osl * step
        tbt = cycle / osl
        ttft = self.prefill_s(1, isl, latency=True) + step
        return batch * osl / cycle, ttft, tbt


def _largest(ok: Any, hi: int) -> int:
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


def _pow2_upto(n: int) -> list[int]:
    out, v = [], 1
    while v <= n:
        out.append(v)
        v *= 2
    return out


def estimate_serving(
    cfg: llm.LLMConfig,
    dev: DeviceSpec,
    count: int,
    precision: str,
    isl: int,
    osl: int,
    scenario: str = "offline",
    *,
    ttft_s: float | None = None,
    tbt_s: float | None = None,
    tp: int | None = None,
    pp: int | None = None,
    batch: int | None = None,
    efficiency: ServingEfficiency | None = None,
    efficiencies: Mapping[str, ServingEfficiency] | None = None,
    allreduce: Any = None,
) -> ServingEstimate:
    """Best TP/PP split and batch of ``count`` devices of class ``dev`` serving ``cfg``.

    Every power-of-two TP degree up to the chassis (and ``count``) and PP degree with
    ``tp·pp ≤ count`` is tried; the node holds ``count // (tp·pp)`` replicas. Each replica
    takes the largest batch that fits memory (weights + KV of ``isl + osl`` tokens per
    sequence, ``MEM_UTILISATION`` of each device) and meets the bounds; the split with the
    most tokens/s wins (fewer devices per replica on ties). ``tp``/``pp``/``batch`` pin a
    choice (a measured configuration).

    Raises:
        CostModelError: bad arguments, the model does not fit, or no split meets the bounds
            (the message names the closest miss).
    """
    if scenario not in SCENARIOS:
        raise CostModelError(
            f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}"
        )
    if precision not in PRECISIONS:
        raise CostModelError(
            f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}"
        )
    for label, v in (("count", count), ("isl", isl), ("osl", osl)):
        if not isinstance(v, int) or v < 1:
            raise CostModelError(f"{label} must be a positive integer, found {v!r}")
    for label, b in (("ttft", ttft_s), ("tbt", tbt_s)):
        if b is not None and not (b > 0 and math.isfinite(b)):
            raise CostModelError(f"{label} bound must be a positive duration, found {b!r}")
    if precision == "fp4" and dev.peak_tflops.get("fp4", 0.0) <= 0:
        raise CostModelError(f"{dev.name} has no FP4 tensor rate; use fp8 or fp16")
    if scenario != "offline":
        d_ttft, d_tbt = default_bounds(cfg.name, scenario) or (None, None)
        ttft_s = ttft_s if ttft_s is not None else d_ttft
        tbt_s = tbt_s if tbt_s is not None else d_tbt
    eff = efficiency or efficiency_for(dev, efficiencies)
    ar = allreduce or llm.allreduce_latency_s
    tps = [tp] if tp is not None else [t for t in _pow2_upto(min(count, dev.chassis_size))]
    best: ServingEstimate | None = None
    misses: list[str] = []
    for t in tps:
        if t < 1 or t > dev.chassis_size or t > count:
            raise CostModelError(
                f"tp={t} must be in [1, min(count={count}, chassis={dev.chassis_size})]"
            )
        pps = [pp] if pp is not None else [p for p in _pow2_upto(count // t)]
        for p in pps:
            if p < 1 or t * p > count:
                raise CostModelError(f"tp·pp = {t * p} exceeds count={count}")
            rep = _Replica(cfg, dev, precision, t, p, eff, ar)
            hi_mem = rep.max_batch_memory(isl + osl)
            if hi_mem < 1:
                misses.append(f"tp={t} pp={p}: weights + one sequence's KV do not fit")
                continue
            hi = min(hi_mem, MAX_BATCH)
            if batch is not None:
                # A pinned batch is a configuration someone ran: hold it to the whole memory,
                # not to the MEM_UTILISATION headroom the estimate leaves itself.
                if batch > rep.max_batch_memory(isl + osl, 1.0):
                    misses.append(
                        f"tp={t} pp={p}: batch {batch} needs more than the memory holds ({hi_mem})"
                    )
                    continue
                b, binding = batch, "fixed"
            else:

                def ok(b: int, rep: _Replica = rep) -> bool:
                    _, ttft, tbt = rep.figures(b, isl, osl)
                    return (ttft_s is None or ttft <= ttft_s) and (tbt_s is None or tbt <= tbt_s)

                b = _largest(ok, hi)
                if b < 1:
                    _, ttft1, tbt1 = rep.figures(1, isl, osl)
                    misses.append(
                        f"tp={t} pp={p}: batch 1 gives TTFT {ttft1 * 1e3:.1f} ms, TBT {tbt1 * 1e3:.1f} ms"
                    )
                    continue
                binding = (
                    "memory" if b == hi_mem else "max_batch" if b == MAX_BATCH
                    else "tbt" if tbt_s is not None and rep.figures(b + 1, isl, osl)[2] > tbt_s
                    else "ttft"
                )  # fmt: skip
            tok_s, ttft, tbt = rep.figures(b, isl, osl)
            replicas = count // rep.n
            kv_dev = llm.kv_cache_bytes(cfg, isl + osl, b, precision) / rep.n
            cand = ServingEstimate(
                model=cfg.name, device=dev.name, count=count, precision=precision, scenario=scenario,
                isl=isl, osl=osl, tp=t, pp=p, replicas=replicas, batch=b,
                tokens_per_s=tok_s * replicas, tokens_per_s_per_device=tok_s * replicas / count,
                ttft_ms=ttft * 1e3, tbt_ms=tbt * 1e3,
                ttft_bound_ms=None if ttft_s is None else ttft_s * 1e3,
                tbt_bound_ms=None if tbt_s is None else tbt_s * 1e3,
                weights_gb_per_device=rep.weights_per_device() / 1e9, kv_gb_per_device=kv_dev / 1e9,
                mem_gb_per_device=(rep.weights_per_device() + kv_dev) / 1e9,
                efficiency_compute=eff.compute, efficiency_memory=eff.memory,
                efficiency_source=eff.source, binding=binding,
            )  # fmt: skip
            if best is None or cand.tokens_per_s > best.tokens_per_s * (1 + 1e-9):
                best = cand
    if best is None:
        need = cfg.weight_bytes(precision) / 1e9
        if all("do not fit" in m or "memory holds" in m for m in misses):
            raise CostModelError(
                f"{cfg.name} {precision} ({need:.0f} GB of weights) with {isl}+{osl} tokens per "
                f"sequence does not fit {count} x {dev.name} ({dev.mem_bytes / 1e9:.0f} GB, "
                f"{llm.MEM_UTILISATION:.0%} usable) in any TP/PP split"
            )
        bounds = (
            f"TTFT <= {ttft_s * 1e3:.0f} ms, TBT <= {tbt_s * 1e3:.1f} ms"
            if ttft_s and tbt_s
            else "the bounds"
        )
        raise CostModelError(
            f"no TP/PP split of {count} x {dev.name} meets {bounds} for {cfg.name} {precision}; "
            f"at the widest split tried: {misses[-1] if misses else 'none'}"
        )
    return best
