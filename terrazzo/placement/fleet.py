"""Placement inputs from the user: the fleet of device classes (YAML), its pricing, and the SLA.

The fleet names device classes of the cost-model catalog (model graphs) or the free-form
device names of a measured task graph; ``count`` omitted means unlimited. Durations given as
text (``--sla 50ms``) are parsed here, next to the SLA they become.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from terrazzo.errors import PlacementError, TerrazzoError

_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}


#: A fleet file lists device classes; anything larger is not one (and is not parsed).
_MAX_FLEET_BYTES = 1 << 20


def parse_duration_s(text: str) -> float:
    """Parse '50ms', '0.2s', '250us' or a bare number of milliseconds into seconds.

    Raises:
        TerrazzoError: the text is not a positive number with an optional unit.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs)?\s*", text)
    if not m:
        raise TerrazzoError(f"cannot parse duration {text!r}; expected e.g. 50ms, 0.2s, 250us")
    value = float(m.group(1))
    if value <= 0:
        raise TerrazzoError(f"duration {text!r} must be positive")
    return value * _TIME_UNITS[m.group(2) or "ms"]


class DeviceEntry(BaseModel):
    """One device class in the fleet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int | None = Field(
        default=None, description="Devices of this class available; omitted means unlimited."
    )

    @field_validator("count")
    @classmethod
    def _count_positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"count must be >= 1 (or omitted for unlimited), got {v}")
        return v


class PricingOptions(BaseModel):
    """How a device-hour is priced; mapped onto ``terrazzo.costmodel.TCOOptions``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["cloud", "capex"] = Field(
        default="cloud", description="cloud: list $/hour; capex: annuity + power + opex."
    )
    years: float = Field(default=4.0, description="Depreciation period of capex, years.")
    interest_rate: float = Field(default=0.08, description="Yearly interest rate of financing.")
    usd_per_kwh: float = Field(default=0.40, description="Electricity price, USD per kWh.")
    pue: float = Field(default=1.0, description="Power usage effectiveness of the site (>= 1).")
    utilisation: float = Field(default=1.0, description="Average power draw as a fraction of TDP.")
    opex_usd_per_hour: float = Field(default=0.0, description="Other running cost per device-hour.")

    @field_validator("years")
    @classmethod
    def _years(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"years must be > 0, got {v}")
        return v

    @field_validator("interest_rate", "usd_per_kwh", "opex_usd_per_hour")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"must be >= 0, got {v}")
        return v

    @field_validator("pue")
    @classmethod
    def _pue(cls, v: float) -> float:
        if v < 1.0:
            raise ValueError(f"pue must be >= 1.0, got {v}")
        return v

    @field_validator("utilisation")
    @classmethod
    def _util(cls, v: float) -> float:
        if not 0.0 < v <= 1.0:
            raise ValueError(f"utilisation must be in (0, 1], got {v}")
        return v

    def to_tco_options(self) -> Any:
        """The equivalent ``terrazzo.costmodel.TCOOptions``."""
        from terrazzo.costmodel import TCOOptions

        return TCOOptions(
            years=self.years,
            interest_rate=self.interest_rate,
            usd_per_kwh=self.usd_per_kwh,
            utilisation=self.utilisation,
            pue=self.pue,
            opex_usd_per_hour=self.opex_usd_per_hour,
            pricing=self.mode,
        )


class Fleet(BaseModel):
    """The device classes placement may use, with availability and pricing.

    YAML form::

        devices: {cpu: {count: 4}, t4: {}, h100: {count: 2}}
        pricing: {mode: capex, years: 4, interest_rate: 0.08, usd_per_kwh: 0.3}
        profile: datasheet          # optional catalog profile
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: dict[str, DeviceEntry] = Field(description="Device class name -> availability.")
    pricing: PricingOptions = Field(default_factory=PricingOptions)
    profile: str | None = Field(default=None, description="Cost-model catalog profile or path.")

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):  # allow `devices: [cpu, t4]`
            v = {str(name): {} for name in v}
        if isinstance(v, dict):
            v = {str(k): ({} if e is None else e) for k, e in v.items()}
            if not v:
                raise ValueError("devices is empty; name at least one device class")
        return v

    @staticmethod
    def from_yaml(path: str | Path) -> Fleet:
        """Load and validate a fleet file.

        Raises:
            PlacementError: the file is missing, not YAML, or has invalid fields (the message
                names the field and the offending value).
        """
        p = Path(path)
        if not p.is_file():
            raise PlacementError(f"fleet file {str(p)!r} not found")
        raw = p.read_bytes()[: _MAX_FLEET_BYTES + 1]
        if len(raw) > _MAX_FLEET_BYTES:
            raise PlacementError(
                f"fleet file {str(p)!r} is larger than {_MAX_FLEET_BYTES} bytes; not a fleet"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PlacementError(
                f"fleet file {str(p)!r} is not UTF-8 text (byte {e.start}); expected fleet YAML"
            ) from None
        try:
            data = yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PlacementError(f"fleet file {str(p)!r} is not valid YAML: {first}") from None
        return Fleet.from_dict(data, where=str(p))

    @staticmethod
    def from_dict(data: Any, where: str = "fleet") -> Fleet:
        """Validate a fleet given as a mapping (see class docstring)."""
        if not isinstance(data, dict):
            raise PlacementError(f"{where}: expected a mapping with 'devices:', found {data!r}")
        try:
            return Fleet.model_validate(data)
        except ValidationError as e:
            msgs = []
            for err in e.errors():
                loc = ".".join(str(x) for x in err["loc"])
                msgs.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
            raise PlacementError(f"{where}: invalid fleet: " + "; ".join(msgs)) from None

    def count(self, name: str) -> float:
        """Available devices of a class (math.inf when unlimited)."""
        c = self.devices[name].count
        return math.inf if c is None else float(c)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.devices)


@dataclass(frozen=True, slots=True)
class SLA:
    """Service-level bounds: end-to-end latency on the critical path, optional LLM TTFT/TBT."""

    latency_s: float
    ttft_s: float | None = None
    tbt_s: float | None = None

    def __post_init__(self) -> None:
        for n in ("latency_s", "ttft_s", "tbt_s"):
            v = getattr(self, n)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise PlacementError(f"SLA {n} must be a positive finite number, got {v!r}")

    def to_json(self) -> dict[str, float | None]:
        return {"latency_s": self.latency_s, "ttft_s": self.ttft_s, "tbt_s": self.tbt_s}

    @staticmethod
    def from_json(d: dict[str, Any]) -> SLA:
        return SLA(float(d["latency_s"]), d.get("ttft_s"), d.get("tbt_s"))
