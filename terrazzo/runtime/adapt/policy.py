"""The adaptation policy (``terrazzo serve --adapt POLICY.yaml``): SLA, budget, cadence and limits.

Read once at start; a malformed file is refused in one line naming the field, before any
worker starts. The fleet section says which device classes the controller may place stages on,
their price and how many are available; prices and availability may change while serving
(``AdaptRuntime.set_prices`` / ``set_available``: a price change, a preemption notice).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from terrazzo.errors import ServingError


class DeviceClassPolicy(BaseModel):
    """One device class the controller may use."""

    model_config = ConfigDict(extra="forbid")

    usd_per_hour: float = Field(gt=0, description="price of one device (one replica) per hour")
    count: int | None = Field(default=None, ge=0, description="devices available (None: any)")
    target: dict[str, Any] | None = Field(
        default=None,
        description="TVM target (dict form, e.g. {kind: llvm, mcpu: haswell}) a stage placed "
        "on this class is built for; None: the bundle's host build. A target the bundle has no "
        "build for is compiled from the bundle's stage IR when a plan first needs it",
    )


class RetunePolicy(BaseModel):
    """Background re-tuning of the hottest served kernels (``retune:`` in the policy)."""

    model_config = ConfigDict(extra="forbid")

    every_s: float = Field(default=300.0, gt=0, description="seconds between re-tune attempts")
    budget_trials: int = Field(default=8, ge=1, description="candidates tried per kernel")
    max_kernels: int = Field(default=2, ge=1, description="hottest kernels tuned per attempt")
    min_gain: float = Field(
        default=0.02,
        ge=-0.5,
        description="the new build must be this fraction faster to be kept (a negative value "
        "keeps a verified build even when slower: for tests of the swap path)",
    )
    database: str | None = Field(
        default=None,
        description="tuning database (JSONL) the kept records go to; default tuning.jsonl in "
        "work_dir, seeded with the bundle's records",
    )
    work_dir: str | None = Field(
        default=None, description="where re-tuned and rebuilt libraries go (default: a temp dir)"
    )
    timeout_s: float = Field(default=600.0, gt=0, description="limit of one attempt")


class AdaptPolicy(BaseModel):
    """What the controller optimises and how eagerly it may change the plan.

    Attributes mirror the YAML keys; every duration is in seconds, every price in USD/hour.
    """

    model_config = ConfigDict(extra="forbid")

    sla_p99_s: float = Field(gt=0, description="end-to-end p99 latency bound")
    budget_usd_per_hour: float | None = Field(default=None, gt=0)
    interval_s: float = Field(default=1.0, gt=0, description="seconds between decisions")
    window_s: float = Field(default=5.0, gt=0, description="rolling observation window")
    horizon_s: float = Field(
        default=5.0, ge=0, description="how far ahead the arrival trend is forecast"
    )
    hysteresis: float = Field(
        default=0.1, ge=0, lt=1, description="a cheaper plan must save this fraction (X%)"
    )
    cooldown_s: float = Field(default=3.0, ge=0, description="minimum time between changes")
    max_changes_per_hour: int = Field(default=60, ge=1)
    target_utilisation: float = Field(default=0.6, gt=0, le=1)
    max_utilisation: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="a stage busier than this is under-provisioned; a cheaper plan must stay "
        "below it at the rate's upper confidence bound before the controller scales down",
    )
    headroom: float = Field(default=1.1, ge=1, description="rate multiplier planned for")
    slow_factor: float = Field(
        default=2.0, gt=1, description="measured/predicted above this marks a class slow"
    )
    confidence_samples: int = Field(
        default=20, ge=1, description="samples at which measurements get weight 1/2"
    )
    min_samples: int = Field(default=5, ge=1, description="samples before a stage is judged")
    mode: Literal["full", "replicas", "off"] = Field(
        default="full",
        description="full: re-place and re-size; replicas: counts only (Ray/Dynamo style)",
    )
    solver: str = Field(default="milp")
    decision_log: str | None = Field(default=None, description="JSONL path of the decisions")
    fleet: dict[str, DeviceClassPolicy] = Field(min_length=1)
    retune: RetunePolicy | None = Field(
        default=None, description="re-tune hot kernels in the background (true: defaults)"
    )

    @field_validator("retune", mode="before")
    @classmethod
    def _retune_flag(cls, v: Any) -> Any:
        if v is True:
            return {}
        return None if v is False else v

    @field_validator("sla_p99_s", "interval_s", "window_s")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v


def parse_policy(data: Any, where: str = "policy") -> AdaptPolicy:
    """Validate a policy mapping; ``ServingError`` in one line naming the first bad field."""
    if not isinstance(data, dict):
        raise ServingError(
            f"{where}: expected a mapping of policy fields, got {type(data).__name__}"
        )
    data = dict(data)
    if "sla" in data and "sla_p99_s" not in data:  # "sla: 200ms" shorthand
        from terrazzo.placement import parse_duration_s

        try:
            data["sla_p99_s"] = parse_duration_s(str(data.pop("sla")))
        except Exception as e:
            raise ServingError(f"{where}: field 'sla': {e}") from None
    try:
        return AdaptPolicy.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = err.get("input")
        shown = "" if isinstance(got, dict) or err["type"] == "missing" else f" (got {got!r})"
        raise ServingError(f"{where}: field '{field}': {err['msg']}{shown}") from None


def load_policy(path: str | Path) -> AdaptPolicy:
    """Read a policy YAML file (see ``docs/adaptive.md``)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ServingError(f"cannot read adapt policy {p}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ServingError(f"adapt policy {p}: not valid YAML{at}") from None
    return parse_policy(data, where=f"adapt policy {p}")
