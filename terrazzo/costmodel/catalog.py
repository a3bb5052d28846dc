"""Device catalog: the hardware the cost model prices and placement chooses from, loaded from data files.

Catalog files are YAML validated by pydantic (``DeviceEntry``); every number carries a source.
Profiles: ``datasheet`` (vendor peaks and public prices), ``paper-2025`` (arXiv 2507.19635
Table 5 as published, over ``datasheet``), or a path to a YAML file of the same schema
(optionally ``base: <profile>`` to override only some fields).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from terrazzo.errors import CostModelError

DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8", "fp4", "int8")
PROFILES = ("datasheet", "paper-2025")

# Where a dtype has no native rate, the next entries are tried in order.
_DTYPE_FALLBACK = {
    "fp32": ("fp32", "tf32"),
    "tf32": ("tf32", "fp32"),
    "fp16": ("fp16", "bf16", "fp32"),
    "bf16": ("bf16", "fp16", "fp32"),
    "fp8": ("fp8", "int8", "fp16", "bf16"),
    "fp4": ("fp4", "fp8", "int8", "fp16", "bf16"),
    "int8": ("int8", "fp8", "fp16", "bf16"),
}
# ir dtype names → catalog dtype keys.
IR_DTYPE_TO_KEY = {
    "float32": "fp32",
    "float64": "fp32",
    "float16": "fp16",
    "bfloat16": "bf16",
    "float8": "fp8",
    "int8": "int8",
    "uint8": "int8",
    "int32": "fp32",
    "int64": "fp32",
    "int16": "fp16",
    "bool": "int8",
}
HOST_FALLBACK_TARGET: Mapping[str, Any] = MappingProxyType({"kind": "llvm"})

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One device class (one GPU, accelerator chip or CPU socket) with sourced figures.

    Link bandwidths are per direction. ``operating_usd_per_hour``, when set (the paper
    profile), replaces the TDP-based power term in TCO. ``fallback_target`` is what codegen
    builds for when ``tvm_target`` is None or the device is absent (``fallback_reason`` says why).
    """

    name: str
    vendor: str
    kind: str
    year: int
    peak_tflops: Mapping[str, float]
    mem_bytes: int
    mem_bw_bytes_per_s: float
    tdp_w: float
    capex_usd: float | None
    cloud_usd_per_hour: float | None
    cloud_provider: str
    cloud_price_date: str
    chassis_size: int
    scaleup_bw_bytes_per_s: float
    scaleout_bw_bits_per_s: float
    tvm_target: Mapping[str, Any] | None
    fallback_target: Mapping[str, Any]
    sources: Mapping[str, str]
    model: str = ""
    host_link_bw_bytes_per_s: float = 32e9
    fallback_reason: str = ""
    operating_usd_per_hour: float | None = None
    published_name: str = ""
    notes: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    def peak_flops_per_s(self, dtype: str = "fp32") -> float:
        """Dense peak FLOP/s for ``dtype`` (catalog key or ir dtype), falling back to a wider type.

        Raises:
            CostModelError: the dtype is unknown or the device lists no rate at all.
        """
        key = IR_DTYPE_TO_KEY.get(dtype, dtype)
        if key not in _DTYPE_FALLBACK:
            raise CostModelError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        for k in _DTYPE_FALLBACK[key]:
            tf = self.peak_tflops.get(k, 0.0)
            if tf > 0:
                return tf * 1e12
        nonzero = [v for v in self.peak_tflops.values() if v > 0]
        if not nonzero:
            raise CostModelError(f"device {self.name!r}: peak_tflops has no non-zero entry")
        return min(nonzero) * 1e12

    @property
    def scaleout_bw_bytes_per_s(self) -> float:
        return self.scaleout_bw_bits_per_s / 8.0

    def to_json(self) -> dict[str, Any]:
        """Plain-data form (JSON-ready)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            v = getattr(self, name)
            out[name] = dict(v) if isinstance(v, Mapping) else v
        return out


class Catalog(Mapping[str, DeviceSpec]):
    """An immutable name → DeviceSpec mapping; unknown names raise CostModelError with a suggestion."""

    __slots__ = ("_devices", "profile", "description")

    def __init__(self, devices: Mapping[str, DeviceSpec], profile: str = "", description: str = ""):
        self._devices = MappingProxyType(dict(devices))
        self.profile = profile
        self.description = description

    def __getitem__(self, name: str) -> DeviceSpec:
        try:
            return self._devices[name]
        except KeyError:
            raise CostModelError(unknown_device_message(name, self._devices)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._devices

    def __iter__(self) -> Iterator[str]:
        return iter(self._devices)

    def __len__(self) -> int:
        return len(self._devices)

    def __repr__(self) -> str:
        return f"Catalog(profile={self.profile!r}, devices={list(self._devices)})"

    def with_devices(self, extra: Mapping[str, DeviceSpec]) -> Catalog:
        """A copy with ``extra`` devices added (or replaced)."""
        return Catalog({**self._devices, **extra}, self.profile, self.description)


def unknown_device_message(name: str, known: Mapping[str, Any] | list[str]) -> str:
    names = list(known)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.4)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown device {name!r}{hint} (known: {', '.join(names)})"


# --- file schema ------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PeakTflops(_Strict):
    """Dense peak TFLOPs per dtype; 0 = no native support."""

    fp32: float = Field(ge=0, description="dense FP32 TFLOPs")
    tf32: float = Field(ge=0, description="dense TF32 tensor TFLOPs")
    fp16: float = Field(ge=0, description="dense FP16 tensor TFLOPs")
    bf16: float = Field(ge=0, description="dense BF16 tensor TFLOPs")
    fp8: float = Field(ge=0, description="dense FP8 tensor TFLOPs")
    fp4: float = Field(default=0.0, ge=0, description="dense FP4 tensor TFLOPs (0 = none)")
    int8: float = Field(ge=0, description="dense INT8 tensor TOPs")


class DeviceEntry(_Strict):
    """One device in a catalog YAML file (units as in the field names; GB = 1e9 bytes)."""

    model: str = ""
    vendor: str
    kind: Literal["cpu", "gpu", "accelerator"]
    year: int = Field(ge=1990, le=2100)
    peak_tflops: PeakTflops
    mem_gb: float = Field(gt=0)
    mem_bw_gb_per_s: float = Field(gt=0)
    host_link_gb_per_s: float = Field(default=32.0, gt=0)
    tdp_w: float = Field(ge=0)
    capex_usd: float | None = Field(default=None, ge=0)
    cloud_usd_per_hour: float | None = Field(default=None, ge=0)
    cloud_provider: str = ""
    cloud_price_date: str = ""
    chassis_size: int = Field(ge=1)
    scaleup_gb_per_s: float = Field(gt=0)
    scaleout_gbps: float = Field(gt=0)
    tvm_target: dict[str, str] | None = None
    fallback_target: dict[str, str] | None = None
    fallback_reason: str = ""
    operating_usd_per_hour: float | None = Field(default=None, ge=0)
    published_name: str = ""
    notes: dict[str, str] = Field(default_factory=dict)
    sources: dict[str, str] = Field(min_length=1)

    @field_validator("cloud_price_date", mode="before")
    @classmethod
    def _date_to_str(cls, v: Any) -> str:
        return "" if v is None else str(v)

    @field_validator("tvm_target")
    @classmethod
    def _target_has_kind(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and "kind" not in v:
            raise ValueError("tvm_target needs a 'kind' (llvm, cuda, rocm)")
        return v


class CatalogFile(_Strict):
    """A catalog YAML file: ``devices`` (complete entries), or ``base`` + partial overrides."""

    profile: str = ""
    base: str | None = None
    description: str = ""
    source: str = ""
    devices: dict[str, dict[str, Any]] = Field(min_length=1)


def _entry_to_spec(name: str, e: DeviceEntry) -> DeviceSpec:
    fallback = e.fallback_target or dict(HOST_FALLBACK_TARGET)
    reason = e.fallback_reason or (
        "" if e.tvm_target is not None else f"TVM cannot target {name}; built for the host CPU"
    )
    return DeviceSpec(
        name=name,
        vendor=e.vendor,
        kind=e.kind,
        year=e.year,
        peak_tflops=MappingProxyType(e.peak_tflops.model_dump()),
        mem_bytes=int(e.mem_gb * 1e9),
        mem_bw_bytes_per_s=e.mem_bw_gb_per_s * 1e9,
        tdp_w=e.tdp_w,
        capex_usd=e.capex_usd,
        cloud_usd_per_hour=e.cloud_usd_per_hour,
        cloud_provider=e.cloud_provider,
        cloud_price_date=e.cloud_price_date,
        chassis_size=e.chassis_size,
        scaleup_bw_bytes_per_s=e.scaleup_gb_per_s * 1e9,
        scaleout_bw_bits_per_s=e.scaleout_gbps * 1e9,
        tvm_target=MappingProxyType(dict(e.tvm_target)) if e.tvm_target is not None else None,
        fallback_target=MappingProxyType(dict(fallback)),
        sources=MappingProxyType(dict(e.sources)),
        model=e.model,
        host_link_bw_bytes_per_s=e.host_link_gb_per_s * 1e9,
        fallback_reason=reason,
        operating_usd_per_hour=e.operating_usd_per_hour,
        published_name=e.published_name,
        notes=MappingProxyType(dict(e.notes)),
    )


def _format_validation(where: str, err: ValidationError) -> str:
    parts = []
    for item in err.errors()[:5]:
        loc = ".".join(str(x) for x in item["loc"])
        parts.append(f"{loc}: {item['msg']} (got {item.get('input')!r})")
    return f"{where}: " + "; ".join(parts)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and k != "notes":
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path | None, text: str | None, where: str) -> Any:
    try:
        return yaml.safe_load(text if text is not None else path.read_text())  # type: ignore[union-attr]
    except FileNotFoundError:
        raise CostModelError(f"catalog file {where} does not exist") from None
    except yaml.YAMLError as e:
        raise CostModelError(f"catalog file {where} is not valid YAML: {e}") from None


def _raw_devices(
    profile: str, seen: tuple[str, ...] = ()
) -> tuple[dict[str, dict[str, Any]], str, str, str]:
    """Return (raw entries, profile name, description, file-level source) after resolving ``base``."""
    if profile in seen:
        raise CostModelError(f"catalog profiles form a cycle: {' -> '.join((*seen, profile))}")
    if profile in PROFILES:
        text = resources.files("terrazzo.costmodel").joinpath("data", f"{profile}.yaml").read_text()
        raw = _read_yaml(None, text, profile)
        where = f"profile {profile!r}"
    else:
        path = Path(profile)
        if path.suffix.lower() not in (".yaml", ".yml", ".json") and not path.exists():
            raise CostModelError(
                f"unknown catalog profile {profile!r}; expected one of {', '.join(PROFILES)} "
                "or a path to a YAML file"
            )
        raw = _read_yaml(path, None, str(path))
        where = str(path)
    if not isinstance(raw, Mapping):
        raise CostModelError(f"{where}: expected a mapping with a 'devices' key")
    try:
        cf = CatalogFile.model_validate(raw)
    except ValidationError as e:
        raise CostModelError(_format_validation(where, e)) from None
    devices = {k: dict(v or {}) for k, v in cf.devices.items()}
    if cf.base is not None:
        base_devices, _, _, _ = _raw_devices(cf.base, (*seen, profile))
        merged = {}
        for name, over in devices.items():
            if name not in base_devices:
                merged[name] = over  # a new device: must be complete
            else:
                merged[name] = _merge(base_devices[name], over)
                if cf.source:  # fields the overlay sets are sourced to the overlay
                    stamped = {
                        k: cf.source
                        for k in over
                        if k not in ("notes", "published_name", "sources")
                    }
                    merged[name]["sources"] = {**base_devices[name].get("sources", {}), **stamped}
        devices = merged
    return devices, cf.profile or profile, cf.description, cf.source or where


def load_catalog(profile: str | Path = "datasheet") -> Catalog:
    """Load a device catalog.

    Args:
        profile: ``"datasheet"``, ``"paper-2025"``, or a path to a catalog YAML file.

    Returns:
        The catalog (a read-only ``Mapping[str, DeviceSpec]``).

    Raises:
        CostModelError: unknown profile, unreadable file, or an invalid field (named).
    """
    key = str(profile)
    if key in _BUILTIN_CACHE:
        return _BUILTIN_CACHE[key]
    raw, name, description, source = _raw_devices(key)
    specs: dict[str, DeviceSpec] = {}
    for dev_name, entry in raw.items():
        try:
            e = DeviceEntry.model_validate(entry)
        except ValidationError as err:
            raise CostModelError(
                _format_validation(f"{source}: device {dev_name!r}", err)
            ) from None
        specs[dev_name] = _entry_to_spec(dev_name, e)
    cat = Catalog(specs, name, description)
    if key in PROFILES:
        _BUILTIN_CACHE[key] = cat
    return cat


_BUILTIN_CACHE: dict[str, Catalog] = {}


def resolve_device(
    dev: DeviceSpec | str, catalog: Mapping[str, DeviceSpec] | None = None
) -> DeviceSpec:
    """A DeviceSpec from a spec or a name (looked up in ``catalog``, default datasheet)."""
    if isinstance(dev, DeviceSpec):
        return dev
    cat = catalog if catalog is not None else load_catalog("datasheet")
    if dev not in cat:
        raise CostModelError(unknown_device_message(dev, cat))
    return cat[dev]
