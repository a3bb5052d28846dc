"""CPU tools for the voice-agent example: a 'web search' over a local document set."""

from __future__ import annotations

import numpy as np


def web_search(tokens: np.ndarray) -> np.ndarray:
    """Turn the planner's tokens into a 32-d query embedding (deterministic hashing of bytes)."""
    t = np.asarray(tokens, dtype=np.int64).ravel()
    q = np.zeros(32, dtype=np.float32)
    np.add.at(q, t % 32, 1.0)
    return q / max(float(np.linalg.norm(q)), 1e-6)
