"""Calibration profiles: fitted efficiencies and launch overhead for one device, saved as JSON.

``terrazzo calibrate`` writes one for the local CPU; profiles measured elsewhere (other CPUs,
GPUs) can be passed to ``CostModel(calibration=...)`` and override the priors for the devices
they name. Efficiencies may be bucketed by op size because untuned kernels' efficiency varies
with shape: a bucket applies to ops whose ``work`` (FLOPs for matmul/conv, bytes moved for the
rest; the weight footprint for matmul, see ``op_work``) is at most ``max_work``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from terrazzo.costmodel.catalog import DeviceEntry, DeviceSpec, _entry_to_spec, _format_validation
from terrazzo.costmodel.efficiency import Efficiency
from terrazzo.errors import CostModelError

PROFILE_FORMAT = "terrazzo-calibration/1"
COMPUTE_WORK_CLASSES = frozenset({"llm_prefill"})


FOOTPRINT_WORK_CLASSES = frozenset({"matmul", "conv"})

#: Cache sets of an L1 data cache indexed by the page offset (64 B lines × 64 sets = 4 KiB):
#: every current x86 and Arm server core. The ways differ (8-12) and are absorbed by the fit.
L1_SETS = 64
CACHE_LINE_BYTES = 64


def _gemm_k_and_stride(
    flops: int, param_bytes: int, bytes_written: int, elem_bytes: int = 4
) -> tuple[float, float] | None:
    """(K, N · elem_bytes) of ``y[M, N] = x[M, K] · W[K, N]`` from FLOPs (2·M·K·N), the
    weight bytes (K·N) and the output bytes (M·N); None when they cannot be recovered."""
    if flops <= 0 or param_bytes <= 0 or bytes_written <= 0:
        return None
    macs = flops / 2.0
    m = macs * elem_bytes / param_bytes  # MKN / KN
    return macs / (bytes_written / elem_bytes), bytes_written / m


def weight_walk_sets(flops: int, param_bytes: int, bytes_written: int, elem_bytes: int = 4) -> int:
    """How many L1 sets an untuned kernel's walk down a weight column can use.

    For ``y[M, N] = x[M, K] · W[K, N]`` the default loop nest keeps the reduction
    innermost, so every multiply-add reads the next row of W: a stride of N elements. With
    a power-of-two stride those rows fall into few cache sets and evict each other
    (N = 1024 fp32: one set).

    Returns:
        The sets reached (1..64), or 0 when the shape cannot be recovered.
    """
    shape = _gemm_k_and_stride(flops, param_bytes, bytes_written, elem_bytes)
    if shape is None:
        return 0
    stride_bytes = shape[1]
    if stride_bytes < CACHE_LINE_BYTES:
        return L1_SETS
    lines = int(round(stride_bytes / CACHE_LINE_BYTES)) % L1_SETS
    return L1_SETS // math.gcd(lines, L1_SETS) if lines else 1


def op_work(
    op_class: str, flops: int, nbytes: int, param_bytes: int = 0, bytes_read: int = 0
) -> float:
    """The size measure buckets are keyed on.

    For matmul and conv that read a weight: the cache pressure of the weight-column walk
    (see ``weight_walk_sets``): 1 when the K rows it visits fit in the sets they map to
    (reduction length ≤ 8 × sets), else 64 / sets (4 = 16 sets reached … 64 = one set).
    Untuned GEMM speed follows it far more closely than size (1.5 ns per multiply-add at
    4-16 sets, 5 ns at one). Convolutions read output-channel-packed weights sequentially;
    their measure is the reduction length kh·kw·cin (0.56 ns per multiply-add at K = 72,
    0.9 at K = 4608 here). Activation-only matmuls (attention) use half of ``bytes_read``.
    FLOPs for prefill; bytes moved otherwise.
    """
    if op_class in FOOTPRINT_WORK_CLASSES:
        shape = _gemm_k_and_stride(flops, param_bytes, nbytes - bytes_read)
        if shape is not None:
            k_rows = shape[0]
            if op_class == "conv":
                # CPU codegen packs conv weights in output-channel blocks
                # (codegen.tuning.layout): the walk is sequential, K = kh·kw·cin sets the speed
                return k_rows
            sets = weight_walk_sets(flops, param_bytes, nbytes - bytes_read)
            return 1.0 if k_rows <= 8 * sets else float(L1_SETS // sets)
        return float(param_bytes if param_bytes > 0 else bytes_read // 2)
    return float(flops if op_class in COMPUTE_WORK_CLASSES else nbytes)


def efficiency_key(kind: str, op_class: str, param_bytes: int) -> str:
    """The per-kind table key: a matmul of two activations (attention) is keyed apart from x·W."""
    if op_class == "matmul" and param_bytes == 0:
        return f"{kind}:activations"
    return kind


@dataclass(frozen=True, slots=True)
class EfficiencyBucket:
    """Efficiency for ops of one class whose work is ≤ ``max_work`` (``inf`` for the last bucket)."""

    max_work: float
    efficiency: Efficiency


@dataclass(frozen=True, slots=True)
class CalibrationProfile:
    """Fitted cost parameters for the devices in ``applies_to``.

    ``kind_efficiency`` refines ``efficiency`` for single op kinds (``nn.gelu`` is far slower
    per byte than ``add`` in untuned code). ``device_spec`` is set when the calibrated device is not in the catalog (``local-cpu``);
    the cost model then adds it. ``zero_cost_kinds`` are op kinds the device's compiler turns
    into views (no kernel runs). ``meta`` holds free-form provenance and accuracy figures.
    """

    device: str
    applies_to: tuple[str, ...]
    launch_overhead_s: float
    efficiency: Mapping[str, tuple[EfficiencyBucket, ...]]
    device_spec: DeviceSpec | None = None
    meta: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    zero_cost_kinds: tuple[str, ...] = ()
    kind_efficiency: Mapping[str, tuple[EfficiencyBucket, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def efficiency_for(
        self, op_class: str, work: float, kind: str | None = None
    ) -> Efficiency | None:
        """The fitted efficiency for an op of this kind (else class) and size, or None if not calibrated."""
        buckets = self.kind_efficiency.get(kind) if kind is not None else None
        if not buckets:
            buckets = self.efficiency.get(op_class)
        if not buckets:
            return None
        for b in buckets:
            if work <= b.max_work:
                return b.efficiency
        return buckets[-1].efficiency

    def to_json(self) -> dict[str, Any]:
        spec = None
        if self.device_spec is not None:
            d = self.device_spec
            spec = {
                "model": d.model,
                "vendor": d.vendor,
                "kind": d.kind,
                "year": d.year,
                "peak_tflops": dict(d.peak_tflops),
                "mem_gb": d.mem_bytes / 1e9,
                "mem_bw_gb_per_s": d.mem_bw_bytes_per_s / 1e9,
                "host_link_gb_per_s": d.host_link_bw_bytes_per_s / 1e9,
                "tdp_w": d.tdp_w,
                "capex_usd": d.capex_usd,
                "cloud_usd_per_hour": d.cloud_usd_per_hour,
                "cloud_provider": d.cloud_provider,
                "cloud_price_date": d.cloud_price_date,
                "chassis_size": d.chassis_size,
                "scaleup_gb_per_s": d.scaleup_bw_bytes_per_s / 1e9,
                "scaleout_gbps": d.scaleout_bw_bits_per_s / 1e9,
                "tvm_target": dict(d.tvm_target) if d.tvm_target is not None else None,
                "sources": dict(d.sources),
            }
        return {
            "format": PROFILE_FORMAT,
            "device": self.device,
            "applies_to": list(self.applies_to),
            "launch_overhead_s": self.launch_overhead_s,
            "efficiency": _buckets_json(self.efficiency),
            "kind_efficiency": _buckets_json(self.kind_efficiency),
            "zero_cost_kinds": list(self.zero_cost_kinds),
            "device_spec": spec,
            "meta": dict(self.meta),
        }

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON; returns the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")
        return p

    @staticmethod
    def from_json(
        data: Mapping[str, Any], where: str = "calibration profile"
    ) -> CalibrationProfile:
        """Validate and build a profile from its JSON form.

        Raises:
            CostModelError: a missing or invalid field, named.
        """
        try:
            pf = _ProfileFile.model_validate(data)
        except ValidationError as e:
            raise CostModelError(_format_validation(where, e)) from None
        eff = _buckets_from(pf.efficiency, where, "efficiency")
        kind_eff = _buckets_from(pf.kind_efficiency, where, "kind_efficiency")
        spec = _entry_to_spec(pf.device, pf.device_spec) if pf.device_spec is not None else None
        applies = tuple(pf.applies_to) if pf.applies_to else (pf.device,)
        return CalibrationProfile(
            device=pf.device,
            applies_to=applies,
            launch_overhead_s=pf.launch_overhead_s,
            efficiency=MappingProxyType(eff),
            device_spec=spec,
            meta=MappingProxyType(dict(pf.meta)),
            zero_cost_kinds=tuple(pf.zero_cost_kinds),
            kind_efficiency=MappingProxyType(kind_eff),
        )

    @staticmethod
    def load(path: str | Path) -> CalibrationProfile:
        """Read a profile JSON file.

        Raises:
            CostModelError: the file is missing, not JSON, or has an invalid field.
        """
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise CostModelError(f"calibration profile {p} does not exist") from None
        except json.JSONDecodeError as e:
            raise CostModelError(f"calibration profile {p} is not valid JSON: {e}") from None
        if not isinstance(data, Mapping):
            raise CostModelError(f"calibration profile {p}: expected a JSON object")
        return CalibrationProfile.from_json(data, str(p))


#: Measured calibration profiles shipped with Terrazzo, one ``<device>.json`` per device class.
CALIBRATION_DIR = Path(__file__).resolve().parent / "data" / "calibration"


def measured_calibration(device: str) -> CalibrationProfile | None:
    """The shipped profile measured on a real ``device`` (``h200``: on a lent H200, see
    ``docs/gpu.md``), or None when none was measured. Pass it to
    ``CostModel(catalog, calibration=...)``; its ``meta`` says when and how it was measured."""
    path = CALIBRATION_DIR / f"{device}.json"
    return CalibrationProfile.load(path) if path.is_file() else None


def _buckets_json(
    table: Mapping[str, tuple[EfficiencyBucket, ...]],
) -> dict[str, list[dict[str, Any]]]:
    return {
        key: [
            {
                "max_work": None if math.isinf(b.max_work) else b.max_work,
                "compute": b.efficiency.compute,
                "memory": b.efficiency.memory,
            }
            for b in buckets
        ]
        for key, buckets in table.items()
    }


def _buckets_from(
    table: Mapping[str, list[_BucketModel]], where: str, field_name: str
) -> dict[str, tuple[EfficiencyBucket, ...]]:
    out: dict[str, tuple[EfficiencyBucket, ...]] = {}
    for key, buckets in table.items():
        items = []
        for i, b in enumerate(buckets):
            try:
                e = Efficiency(b.compute, b.memory)
            except CostModelError as err:
                raise CostModelError(f"{where}: {field_name}.{key}[{i}]: {err}") from None
            items.append(EfficiencyBucket(math.inf if b.max_work is None else b.max_work, e))
        items.sort(key=lambda b: b.max_work)
        out[key] = tuple(items)
    return out


class _BucketModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_work: float | None = Field(default=None, gt=0, description="upper bound of the bucket")
    compute: float = Field(gt=0, le=1, description="fraction of peak FLOP/s")
    memory: float = Field(gt=0, le=8, description="fraction of DRAM bandwidth (>1: cache-resident)")


class _ProfileFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = Field(pattern=r"^terrazzo-calibration/1$")
    device: str = Field(min_length=1)
    applies_to: list[str] = Field(default_factory=list)
    launch_overhead_s: float = Field(ge=0)
    efficiency: dict[str, list[_BucketModel]]
    kind_efficiency: dict[str, list[_BucketModel]] = Field(default_factory=dict)
    zero_cost_kinds: list[str] = Field(default_factory=list)
    device_spec: DeviceEntry | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
