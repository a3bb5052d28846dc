"""Runtime: cost attribution of served requests (USD per request and per hour) from the plan's prices, and planned vs actual devices.

Prices come from the bundle (``device_prices``): the device-class prices placement used (the
cost model's ``usd_per_hour`` under the fleet's pricing), or, where the catalog cannot be read
here, the plan's total ``usd_per_hour`` split evenly over the devices it uses. A stage replica
holds one device of its class, so a model costs ``sum(replicas × price)`` per hour whether it
is busy or not (``terrazzo_provisioned_usd_per_hour``). A request is charged the device-seconds
it used on each stage (its share of a batched execution) at that stage's price: ``cost_usd`` in
its response parameters and ``terrazzo_cost_usd_total``. The gap between the provisioned cost
and the charged cost is idle capacity.

Every family is labelled with ``model``, ``version``, ``stage``, ``device_class`` (what the plan
placed the stage on) and ``device`` (what actually runs it: the host CPU when a stage runs its
CPU build, e.g. a T4 stage on a machine without one).
"""

from __future__ import annotations

import functools
import platform
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CostAccount", "actual_device", "device_prices"]


def device_prices(manifest: Mapping[str, Any]) -> dict[str, float]:
    """USD per device-hour of every device class the plan uses (empty when it has no prices)."""
    plan = manifest.get("plan") or {}
    devices = {str(k): float(v) for k, v in (plan.get("devices") or {}).items()}
    try:
        from terrazzo import costmodel
        from terrazzo.placement import Fleet

        fleet = Fleet.from_dict(manifest.get("fleet") or {})
        catalog = costmodel.load_catalog(fleet.profile or "datasheet")
        tco = fleet.pricing.to_tco_options()
        return {d: float(costmodel.usd_per_hour(catalog[d], tco)) for d in fleet.names}
    except Exception:  # no fleet/catalog here (a runtime-only image): the plan's own total
        total = float(plan.get("usd_per_hour") or 0.0)
        count = sum(devices.values())
        return {d: total / count for d in devices} if total > 0 and count > 0 else {}


@functools.cache
def _host_cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu: " + (platform.processor() or platform.machine())


@functools.cache
def _gpu_name() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = [n.strip() for n in out.splitlines() if n.strip()]
    return "gpu: " + names[0] if names else None


def actual_device(stage: Any) -> str:
    """What runs ``stage`` here: the GPU when its build targets one and one is present, else the
    host CPU (a CPU class, a fallback build, or an accelerator class absent on this host)."""
    target = str(getattr(stage, "target", "llvm")).lower()
    if getattr(stage, "fallback_reason", None) is None and target.startswith(("cuda", "rocm")):
        gpu = _gpu_name()
        if gpu is not None:
            return gpu
    return _host_cpu()


class CostAccount(Collector):
    """Charges requests the device-seconds they use and exports cost metrics (module docstring).

    Args:
        plan: the served ``ServingPlan`` (stages, model name, version).
        prices: USD per device-hour by device class (``device_prices``).
    """

    def __init__(self, plan: Any, prices: Mapping[str, float]):
        self.plan = plan
        self._lock = threading.Lock()
        self._rows: dict[int, tuple[list[str], float, float]] = {}
        self._charged: dict[int, float] = {}
        self._busy: dict[int, float] = {}
        self._local = threading.local()
        for st in plan.stages:
            price = float(prices.get(st.device, 0.0))
            labels = [plan.model_name, plan.version, str(st.index), st.device, actual_device(st)]
            self._rows[st.index] = (labels, price, price * st.replicas)
            self._charged[st.index] = 0.0
            self._busy[st.index] = 0.0

    def usd_per_hour(self) -> float:
        """What the model's provisioned devices cost per hour."""
        return sum(r[2] for r in self._rows.values())

    def begin(self) -> None:
        """Start charging a request on this thread (the gateway serves one per thread)."""
        self._local.usd = 0.0

    def charge(self, stage_index: int, compute_s: float) -> None:
        """Charge ``compute_s`` device-seconds on a stage to the model and the current request."""
        row = self._rows.get(stage_index)
        if row is None or compute_s <= 0:
            return
        usd = row[1] * compute_s / 3600.0
        with self._lock:
            self._charged[stage_index] += usd
            self._busy[stage_index] += compute_s
        self._local.usd = getattr(self._local, "usd", 0.0) + usd

    def request_usd(self) -> float:
        """USD charged to the current request since ``begin``."""
        return float(getattr(self._local, "usd", 0.0))

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        names = ["model", "version", "stage", "device_class", "device"]
        charged = CounterMetricFamily(
            "terrazzo_cost_usd",
            "USD charged to requests: device-seconds used x the plan's price of the stage's class.",
            labels=names,
        )
        busy = CounterMetricFamily(
            "terrazzo_stage_device_busy_seconds",
            "Device-seconds stage executions used (a batched execution's time once).",
            labels=names,
        )
        hourly = GaugeMetricFamily(
            "terrazzo_provisioned_usd_per_hour",
            "USD per hour of the devices a stage holds (replicas x the plan's price).",
            labels=names,
        )
        info = GaugeMetricFamily(
            "terrazzo_stage_device_info",
            "1 per stage: the device class planned and the device actually running it.",
            labels=names,
        )
        with self._lock:
            for index, (labels, _, per_hour) in self._rows.items():
                charged.add_metric(labels, self._charged[index])
                busy.add_metric(labels, self._busy[index])
                hourly.add_metric(labels, per_hour)
                info.add_metric(labels, 1.0)
        yield from (charged, busy, hourly, info)
