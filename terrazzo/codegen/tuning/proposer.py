"""The proposer contract of the schedule search: what a proposer gets and what it returns.

Sits between the tuning loop and the concrete proposers (offline heuristic/evolutionary,
LLM): the loop passes the kernel, the target and the history of trials with their times or
rejection reasons; a proposer returns candidate programs (or a proposal that already failed,
e.g. an unparsable LLM reply, so the loop can record why).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from terrazzo.codegen.tuning.kernel import Kernel
from terrazzo.codegen.tuning.program import ScheduleProgram


@dataclass(frozen=True, slots=True)
class Proposal:
    """A candidate from a proposer: a program, or the reason none could be obtained."""

    program: ScheduleProgram | None
    raw: str = ""
    #: why the proposal is unusable ("" when ``program`` is set)
    error: str = ""
    #: "parse" (reply not a valid program) or "proposer" (endpoint failure, timeout)
    error_stage: str = ""
    note: str = ""
    usage: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Trial:
    """One evaluated proposal, fed back to the proposers."""

    index: int
    proposer: str
    program: ScheduleProgram | None
    ok: bool
    latency_s: float | None
    #: "ok" | "proposer" | "parse" | "apply" | "build" | "run" | "verify" | "timing" | "duplicate"
    stage: str
    reason: str = ""
    note: str = ""

    def summary(self) -> str:
        """One line for prompts and progress output."""
        if self.ok and self.latency_s is not None:
            return f"trial {self.index}: ok {self.latency_s * 1e6:.1f} us"
        return f"trial {self.index}: rejected at {self.stage}: {self.reason}"


@dataclass(frozen=True, slots=True)
class HardwareSpec:
    """What a proposer may know about the machine."""

    description: str = "x86-64 CPU"
    cores: int = 2
    vector_bits: int = 512
    peak_flops: float = 85e9
    mem_bw_bytes_per_s: float = 20e9
    l2_bytes: int = 2 * 1024 * 1024

    def text(self) -> str:
        return (
            f"{self.description}; {self.cores} cores; SIMD {self.vector_bits} bit "
            f"({self.vector_bits // 32} fp32 lanes); peak ~{self.peak_flops / 1e9:.0f} GFLOP/s fp32; "
            f"memory ~{self.mem_bw_bytes_per_s / 1e9:.0f} GB/s; L2 {self.l2_bytes // 1024} KiB per core"
        )


class Proposer(Protocol):
    """Suggests schedule programs for one kernel, learning from the trial history."""

    name: str

    def propose(
        self,
        kernel: Kernel,
        target: Any,
        history: Sequence[Trial],
        n: int,
        hardware: HardwareSpec,
    ) -> list[Proposal]:
        """Return up to ``n`` proposals (fewer when the proposer has nothing new)."""
        ...


def local_hardware() -> HardwareSpec:
    """HardwareSpec of this machine (cores from the OS; AVX-512 detected from /proc/cpuinfo)."""
    import os

    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    bits = 128
    desc = "x86-64 CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            info = fh.read(20000)
        if " avx512f" in info:
            bits = 512
        elif " avx2" in info:
            bits = 256
        for line in info.splitlines():
            if line.startswith("model name"):
                desc = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return HardwareSpec(description=desc, cores=cores, vector_bits=bits)


__all__ = ["HardwareSpec", "Proposal", "Proposer", "Trial", "local_hardware"]
