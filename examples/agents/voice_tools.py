"""CPU tools for the voice-agent example: a 'web search' over a local document set."""

from __future__ import annotations

import numpy as np


def web_search(tokens: np.ndarray) -> np.ndarray:
    """Turn the planner's tokens into a 32-d query embedding (deterministic hashing of bytes)."""
    t = np.asarray(tokens, dtype=np.int64).ravel()
    q = np.zeros(32, dtype=np.float32)
    np.add.at(q, t % 32, 1.0)
    return q / max(float(np.linalg.norm(q)), 1e-6)


def crm_lookup(tokens):
    """The caller's account (a stand-in for a CRM API call: 25 ms of network wait, no CPU)."""
    import time

    time.sleep(0.025)
    return f"account {int(np.asarray(tokens).reshape(-1)[0]) % 97}: premium, 2 open tickets"


def ticket_summary(account: str) -> str:
    """A one-line summary card of the account (a second network call: 15 ms)."""
    import time

    time.sleep(0.015)
    return f"card[{account.split(':')[0]}] priority follow-up"
