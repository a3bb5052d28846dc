"""Python tools of the ReAct example."""

from __future__ import annotations

import numpy as np


def reply(tokens: np.ndarray) -> str:
    """The finish arm: the LLM's answer tokens as text (bytes, non-printable ones as '?')."""
    return "".join(
        chr(int(t)) if 32 <= int(t) < 127 else "?" for t in np.asarray(tokens).reshape(-1)
    )


def echo(text: str) -> str:
    """Identity (the latency benchmark's hop-calibration program)."""
    return text


def blob(text: str) -> np.ndarray:
    """256 KiB of float32 (the latency benchmark's per-byte hop calibration)."""
    return np.full(65536, float(len(text)), np.float32)
