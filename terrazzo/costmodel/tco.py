"""Total cost of ownership: USD/hour of a device (capex annuity + power + opex, or a cloud price).

Placement minimises the USD/hour this module assigns; reports turn it into USD per request,
per 1M tokens and energy per request. Defaults follow arXiv 2507.19635: 4 years at 8%,
power at full TDP, $0.40/kWh, PUE 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass

from terrazzo.costmodel.catalog import DeviceSpec
from terrazzo.errors import CostModelError

HOURS_PER_YEAR = 8760.0


@dataclass(frozen=True, slots=True)
class TCOOptions:
    """How to price a device-hour.

    ``pricing="capex"``: capex as an annuity over ``years`` at ``interest_rate`` + power
    (TDP × ``utilisation`` × ``pue`` × ``usd_per_kwh``) + ``opex_usd_per_hour``.
    ``pricing="cloud"``: the catalog's cloud USD/hour + ``opex_usd_per_hour``.
    """

    years: float = 4.0
    interest_rate: float = 0.08
    usd_per_kwh: float = 0.40
    utilisation: float = 1.0
    pue: float = 1.0
    opex_usd_per_hour: float = 0.0
    pricing: str = "capex"

    def __post_init__(self) -> None:
        if self.pricing not in ("capex", "cloud"):
            raise CostModelError(
                f"TCOOptions.pricing must be 'capex' or 'cloud', found {self.pricing!r}"
            )
        if self.years <= 0:
            raise CostModelError(f"TCOOptions.years must be > 0, found {self.years!r}")
        for name in ("interest_rate", "usd_per_kwh", "opex_usd_per_hour"):
            if getattr(self, name) < 0:
                raise CostModelError(
                    f"TCOOptions.{name} must be ≥ 0, found {getattr(self, name)!r}"
                )
        if not (0.0 <= self.utilisation <= 1.0):
            raise CostModelError(
                f"TCOOptions.utilisation must be in [0, 1], found {self.utilisation!r}"
            )
        if self.pue < 1.0:
            raise CostModelError(f"TCOOptions.pue must be ≥ 1, found {self.pue!r}")


@dataclass(frozen=True, slots=True)
class TCOBreakdown:
    """USD/hour split into its parts (capex annuity, power, opex) or a cloud price."""

    device: str
    pricing: str
    capex_usd_per_hour: float
    power_usd_per_hour: float
    opex_usd_per_hour: float
    cloud_usd_per_hour: float

    @property
    def usd_per_hour(self) -> float:
        return (
            self.capex_usd_per_hour
            + self.power_usd_per_hour
            + self.opex_usd_per_hour
            + self.cloud_usd_per_hour
        )


def annuity_usd_per_year(capex_usd: float, years: float, interest_rate: float) -> float:
    """Equal yearly payment that repays ``capex_usd`` over ``years`` at ``interest_rate``.

    ``capex · r / (1 − (1 + r)^−n)``; with r = 0 it is ``capex / n``.
    """
    if years <= 0:
        raise CostModelError(f"years must be > 0, found {years!r}")
    if interest_rate == 0:
        return capex_usd / years
    return capex_usd * interest_rate / (1.0 - (1.0 + interest_rate) ** (-years))


def power_w(dev: DeviceSpec, opts: TCOOptions = TCOOptions()) -> float:
    """Average wall power of one device: TDP × utilisation × PUE."""
    return dev.tdp_w * opts.utilisation * opts.pue


def tco_breakdown(dev: DeviceSpec, opts: TCOOptions = TCOOptions()) -> TCOBreakdown:
    """USD/hour of one device by part.

    A device with a published ``operating_usd_per_hour`` (the paper-2025 profile) uses it in
    place of the TDP power term.

    Raises:
        CostModelError: the device lacks the price the pricing mode needs.
    """
    if opts.pricing == "cloud":
        if dev.cloud_usd_per_hour is None:
            raise CostModelError(
                f"device {dev.name!r} has no cloud_usd_per_hour in the catalog; use pricing='capex'"
            )
        return TCOBreakdown(
            dev.name, "cloud", 0.0, 0.0, opts.opex_usd_per_hour, dev.cloud_usd_per_hour
        )
    if dev.capex_usd is None:
        raise CostModelError(
            f"device {dev.name!r} has no capex_usd (it is not sold); use pricing='cloud'"
        )
    capex_h = annuity_usd_per_year(dev.capex_usd, opts.years, opts.interest_rate) / HOURS_PER_YEAR
    if dev.operating_usd_per_hour is not None:
        power_h = dev.operating_usd_per_hour
    else:
        power_h = power_w(dev, opts) / 1000.0 * opts.usd_per_kwh
    return TCOBreakdown(dev.name, "capex", capex_h, power_h, opts.opex_usd_per_hour, 0.0)


def usd_per_hour(dev: DeviceSpec, opts: TCOOptions = TCOOptions()) -> float:
    """USD per hour of owning (or renting) one device under ``opts``."""
    return tco_breakdown(dev, opts).usd_per_hour


def usd_per_request(usd_per_hour_total: float, requests_per_s: float) -> float:
    """USD per request when hardware costing ``usd_per_hour_total`` serves ``requests_per_s``."""
    if requests_per_s <= 0:
        raise CostModelError(f"requests_per_s must be > 0, found {requests_per_s!r}")
    return usd_per_hour_total / 3600.0 / requests_per_s


def usd_per_million_tokens(usd_per_hour_total: float, tokens_per_s: float) -> float:
    """USD per 1M generated tokens at a sustained ``tokens_per_s``."""
    if tokens_per_s <= 0:
        raise CostModelError(f"tokens_per_s must be > 0, found {tokens_per_s!r}")
    return usd_per_hour_total / 3600.0 / tokens_per_s * 1e6


def energy_j_per_request(power_w_total: float, requests_per_s: float) -> float:
    """Joules per request when devices drawing ``power_w_total`` serve ``requests_per_s``."""
    if requests_per_s <= 0:
        raise CostModelError(f"requests_per_s must be > 0, found {requests_per_s!r}")
    return power_w_total / requests_per_s
