"""terrazzo.costmodel: device catalog, roofline op costs, LLM phase model, calibration fitting and TCO.

Sits between the IR and placement: placement asks it what each op costs on each device
class, what moving a value between classes costs, and what a device-hour costs. Host probing
(``host``) and the fitting of calibration measurements (``fit``) live here; the harness that
builds and times kernels is ``terrazzo.pipeline.calibrate``, above codegen.
"""

from terrazzo.costmodel import llm
from terrazzo.costmodel.catalog import (
    DTYPES,
    PROFILES,
    Catalog,
    DeviceEntry,
    DeviceSpec,
    load_catalog,
)
from terrazzo.costmodel.efficiency import (
    DEFAULT_EFFICIENCY,
    DEFAULT_LAUNCH_OVERHEAD_S,
    LINK_LATENCY_S,
    Efficiency,
    default_efficiency,
)
from terrazzo.costmodel.fit import VIEW_KINDS, OpMeasurement, fit_profile, mape, spearman
from terrazzo.costmodel.host import LOCAL_DEVICE, local_cpu_spec, measure_copy_bw_bytes_per_s
from terrazzo.costmodel.measured import MeasuredProfile, Measurement
from terrazzo.costmodel.model import CostModel, fold_weights, is_folded_constant
from terrazzo.costmodel.profile import (
    CALIBRATION_DIR,
    CalibrationProfile,
    EfficiencyBucket,
    measured_calibration,
)
from terrazzo.costmodel.tco import (
    TCOBreakdown,
    TCOOptions,
    annuity_usd_per_year,
    energy_j_per_request,
    power_w,
    tco_breakdown,
    usd_per_hour,
    usd_per_million_tokens,
    usd_per_request,
)
from terrazzo.costmodel.transfer import Link, link_between, transfer_latency_s

__all__ = [
    "DEFAULT_EFFICIENCY",
    "DEFAULT_LAUNCH_OVERHEAD_S",
    "DTYPES",
    "LINK_LATENCY_S",
    "LOCAL_DEVICE",
    "PROFILES",
    "VIEW_KINDS",
    "CalibrationProfile",
    "Catalog",
    "CostModel",
    "DeviceEntry",
    "DeviceSpec",
    "Efficiency",
    "EfficiencyBucket",
    "Link",
    "MeasuredProfile",
    "Measurement",
    "OpMeasurement",
    "TCOBreakdown",
    "TCOOptions",
    "annuity_usd_per_year",
    "default_efficiency",
    "energy_j_per_request",
    "fit_profile",
    "measured_calibration",
    "CALIBRATION_DIR",
    "fold_weights",
    "is_folded_constant",
    "link_between",
    "llm",
    "load_catalog",
    "local_cpu_spec",
    "mape",
    "measure_copy_bw_bytes_per_s",
    "power_w",
    "spearman",
    "tco_breakdown",
    "transfer_latency_s",
    "usd_per_hour",
    "usd_per_million_tokens",
    "usd_per_request",
]
