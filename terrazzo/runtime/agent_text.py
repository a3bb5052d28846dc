"""Text values at serve time: the faiss retrieval runner that returns passages as text.

The index and passages were built at compile time (``terrazzo.pipeline.retrieval``) and sit
in the node's entry of the bundle's signed ``plan.json``; this runner loads them once per
worker, reads the query embedding its embedder stage produced, and returns the top-k passages
as a text value (1-D object array of UTF-8 bytes, KServe ``BYTES``).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np

from terrazzo.errors import ServingError

Runner = Any


def load_index(b64: str) -> Any:
    """The faiss index a ``retrieve`` entry carries (``faiss.serialize_index``, base64)."""
    try:
        import faiss
    except ImportError:
        raise ServingError(
            "text retrieval needs faiss-cpu: pip install 'terrazzo[agents]'"
        ) from None
    return faiss.deserialize_index(np.frombuffer(base64.b64decode(b64), np.uint8))


def retrieve_text(
    path: str,
    node: str,
    input: str,
    output: str,
    top_k: int,
    active: str | None = None,
    prev: str | None = None,
    trust_key: Any = None,
) -> Runner:
    """Top-k passages (text) for a query embedding, from the index in the bundle's entry for ``node``."""
    from terrazzo.bundle import open_bundle

    if isinstance(trust_key, Mapping) and "hex" in trust_key:
        trust_key = bytes.fromhex(trust_key["hex"])
    with open_bundle(path, trust_key=trust_key) as b:
        entry = b.agent.node(node) if b.agent is not None else None
    if entry is None or not getattr(entry, "index_b64", ""):
        raise ServingError(f"retrieve node {node!r}: the bundle carries no text index")
    index = load_index(entry.index_b64)
    passages = [p.encode() for p in entry.passages]
    k = min(int(top_k), len(passages))

    def run(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if active is not None and not int(np.asarray(values[active]).reshape(-1)[0]):
            return {output: np.asarray(values[str(prev)])}
        q = np.asarray(values[input], np.float32).reshape(1, -1)
        if q.shape[1] != index.d:
            raise ServingError(
                f"retrieve {node!r}: query has {q.shape[1]} dims, the index {index.d}"
            )
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        _, ids = index.search(np.ascontiguousarray(q), k)
        return {output: np.array([passages[i] for i in ids[0] if i >= 0], dtype=object)}

    return run


__all__ = ["load_index", "retrieve_text"]
