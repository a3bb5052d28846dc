"""Measured profiles: per task and device class latency and cost, used instead of the roofline model.

This is the ``tasks:``/``transfers:`` form of the placement issue (latency_ms, cost_usd per
device class, free-form class names). ``CostModel(measured=...)`` returns these numbers for
any (task, device) pair they cover.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from terrazzo.errors import CostModelError


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measured figure: latency and (optionally) cost of one request."""

    latency_s: float
    cost_usd: float | None = None

    def __post_init__(self) -> None:
        if self.latency_s < 0:
            raise CostModelError(f"measured latency must be ≥ 0, found {self.latency_s!r} s")
        if self.cost_usd is not None and self.cost_usd < 0:
            raise CostModelError(f"measured cost must be ≥ 0, found {self.cost_usd!r} USD")


_ZERO = Measurement(0.0, 0.0)


@dataclass(frozen=True, slots=True)
class MeasuredProfile:
    """Measured costs: ``tasks[task][device] -> Measurement``, ``transfers[(src, dst)] -> Measurement``.

    A transfer pair that is not listed costs nothing (as the placement issue specifies);
    transfers are directional.
    """

    tasks: Mapping[str, Mapping[str, Measurement]]
    transfers: Mapping[tuple[str, str], Measurement] = field(
        default_factory=lambda: MappingProxyType({})
    )

    @property
    def devices(self) -> tuple[str, ...]:
        """Every device class named anywhere, in first-seen order."""
        seen: dict[str, None] = {}
        for per_dev in self.tasks.values():
            for d in per_dev:
                seen.setdefault(d, None)
        for s, d in self.transfers:
            seen.setdefault(s, None)
            seen.setdefault(d, None)
        return tuple(seen)

    def get(self, task: str, device: str) -> Measurement | None:
        """The measurement for ``task`` on ``device``, or None when not measured there."""
        return self.tasks.get(task, {}).get(device)

    def latency_s(self, task: str, device: str) -> float | None:
        m = self.get(task, device)
        return None if m is None else m.latency_s

    def cost_usd(self, task: str, device: str) -> float | None:
        m = self.get(task, device)
        return None if m is None else m.cost_usd

    def transfer(self, src: str, dst: str) -> Measurement:
        """Cost of moving a task's output from ``src`` to ``dst`` (zero when unlisted or same)."""
        if src == dst:
            return _ZERO
        return self.transfers.get((src, dst), _ZERO)

    @staticmethod
    def from_dict(data: Mapping[str, Any], where: str = "task graph") -> MeasuredProfile:
        """Build from the YAML form (``tasks: [{name, profile: {dev: {latency_ms, cost_usd}}}]``).

        Extra keys (``after``, ``sla``) are ignored here; placement reads them.

        Raises:
            CostModelError: a missing or negative field, named with its task.
        """
        try:
            f = _TaskFile.model_validate(data)
        except ValidationError as e:
            parts = []
            for item in e.errors()[:5]:
                loc = ".".join(str(x) for x in item["loc"])
                parts.append(f"{loc}: {item['msg']} (got {item.get('input')!r})")
            raise CostModelError(f"{where}: " + "; ".join(parts)) from None
        tasks: dict[str, Mapping[str, Measurement]] = {}
        for t in f.tasks:
            if t.name in tasks:
                raise CostModelError(f"{where}: task name {t.name!r} appears twice")
            tasks[t.name] = MappingProxyType(
                {d: Measurement(p.latency_ms / 1e3, p.cost_usd) for d, p in t.profile.items()}
            )
        transfers = {
            (x.from_, x.to): Measurement(x.latency_ms / 1e3, x.cost_usd) for x in f.transfers
        }
        return MeasuredProfile(MappingProxyType(tasks), MappingProxyType(transfers))


class _Point(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latency_ms: float = Field(ge=0, description="measured latency of one request, ms")
    cost_usd: float | None = Field(default=None, ge=0, description="cost of one request, USD")


class _Task(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    profile: dict[str, _Point] = Field(min_length=1)


class _Transfer(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: str = Field(alias="from")
    to: str
    latency_ms: float = Field(ge=0)
    cost_usd: float | None = Field(default=None, ge=0)


class _TaskFile(BaseModel):
    model_config = ConfigDict(extra="allow")
    tasks: list[_Task] = Field(min_length=1)
    transfers: list[_Transfer] = Field(default_factory=list)
