"""Transfer costs between device classes: which link joins them, and latency + bytes / bandwidth.

Same class → free (the value stays on the device); a CPU and an accelerator → the
accelerator's host link (PCIe); two instances inside one chassis → the scale-up link
(NVLink-like); anything else → the network (the slower of the two scale-out links).
"""

from __future__ import annotations

from dataclasses import dataclass

from terrazzo.costmodel.catalog import DeviceSpec
from terrazzo.costmodel.efficiency import LINK_LATENCY_S
from terrazzo.errors import CostModelError


@dataclass(frozen=True, slots=True)
class Link:
    """A link between two devices: its kind, per-direction bandwidth and fixed latency."""

    kind: str
    bw_bytes_per_s: float
    latency_s: float

    def transfer_latency_s(self, nbytes: float) -> float:
        """latency + bytes / bandwidth (0 for an empty transfer or the same device)."""
        if nbytes < 0:
            raise CostModelError(f"transfer size must be ≥ 0 bytes, found {nbytes!r}")
        if self.kind == "same" or nbytes == 0:
            return 0.0
        return self.latency_s + nbytes / self.bw_bytes_per_s


def link_between(src: DeviceSpec, dst: DeviceSpec, same_chassis: bool = False) -> Link:
    """The link a transfer from ``src`` to ``dst`` crosses.

    Args:
        src: producing device.
        dst: consuming device.
        same_chassis: for two instances of one class, use the scale-up link (tensor or
            pipeline parallelism inside a chassis) instead of treating them as one device.
    """
    if src.name == dst.name:
        if same_chassis:
            return Link("scaleup", src.scaleup_bw_bytes_per_s, LINK_LATENCY_S["scaleup"])
        return Link("same", float("inf"), 0.0)
    if (src.kind == "cpu") != (dst.kind == "cpu"):
        acc = dst if src.kind == "cpu" else src
        host = src if src.kind == "cpu" else dst
        bw = min(acc.host_link_bw_bytes_per_s, host.mem_bw_bytes_per_s)
        return Link("pcie", bw, LINK_LATENCY_S["pcie"])
    bw = min(src.scaleout_bw_bytes_per_s, dst.scaleout_bw_bytes_per_s)
    return Link("network", bw, LINK_LATENCY_S["network"])


def transfer_latency_s(
    nbytes: float, src: DeviceSpec, dst: DeviceSpec, same_chassis: bool = False
) -> float:
    """Seconds to move ``nbytes`` from ``src`` to ``dst`` (0 on the same device class)."""
    return link_between(src, dst, same_chassis).transfer_latency_s(nbytes)
