"""Text retrieval for agent programs: a faiss index over a document set, built at compile time with the spec's own embedder.

A ``retrieve`` node with ``documents:`` (a JSONL file of ``{"text": ...}`` lines, or a folder of
``.txt``/``.md`` files) reads the query embedding from its predecessor, a ``model`` node (the
embedder), which is compiled like any model node and runs on its planned device at serve time.
At compile time every passage is embedded with the same model (torch eager, the module the
stage was exported from, on the same byte-level tokens the serving glue feeds it), the rows
are L2-normalised and put in a ``faiss.IndexFlatIP`` (exact cosine search), and the index
(``faiss.serialize_index``) and passages go into the node's signed ``plan.json`` entry. The
runtime (``terrazzo.runtime.agent_runners.retrieve_text``) returns the top-k passages as text,
which the LLM's prompt glue reads as UTF-8 bytes.

Why faiss (faiss-cpu, the ``agents`` extra): maintained by Meta, wheels for every platform we
build on, exact and approximate indexes behind one API (``IndexFlatIP`` here; IVF/HNSW when a
corpus outgrows exact search, without changing the runner), and a stable serialisation
format, so the index is built once at compile time and only loaded at serve time. hnswlib has
HNSW only and no exact index; a numpy matmul has no path to large corpora.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np

from terrazzo.errors import CodegenError, FrontendError


def load_documents(path: str | Path, where: str = "retrieve") -> list[str]:
    """The passages of a document set: JSONL lines (``{"text": ...}`` or a string) or a folder's text files.

    Raises:
        FrontendError: missing, empty or malformed, naming the file and line.
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".txt", ".md") and f.is_file())
        docs = [f.read_text().strip() for f in files]
    elif p.is_file():
        docs = []
        for no, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as e:
                raise FrontendError(
                    f"{where} field 'documents': {p}:{no} is not JSON ({e})"
                ) from None
            text = item.get("text") if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise FrontendError(f"{where} field 'documents': {p}:{no} has no string 'text'")
            docs.append(text.strip())
    else:
        raise FrontendError(f"{where} field 'documents': {p} does not exist")
    if not docs:
        raise FrontendError(f"{where} field 'documents': {p} holds no passages")
    return docs


def text_tokens(text: str, shape: tuple[int, ...]) -> np.ndarray:
    """Byte-level tokens of ``text`` fitted to ``shape`` (what the serving glue feeds an integer input)."""
    data = np.frombuffer(text.encode(), np.uint8).astype(np.int64)
    n = int(np.prod(shape))
    out = np.zeros(n, np.int64)
    out[: min(n, data.shape[0])] = data[:n]
    return out.reshape(shape)


def build_index(passages: list[str], embedder_op: Any) -> tuple[str, int]:
    """Embed every passage with the embedder model node and build a faiss inner-product index.

    Args:
        passages: the document texts.
        embedder_op: the ``model.call`` op (torch) whose output is the query embedding.

    Returns:
        (base64 of ``faiss.serialize_index``, embedding dimension).

    Raises:
        CodegenError: faiss is missing, or the embedder is not a torch model with one integer input.
    """
    try:
        import faiss
    except ImportError:
        raise CodegenError(
            "text retrieval needs faiss-cpu: pip install 'terrazzo[agents]'"
        ) from None
    import torch

    from terrazzo.frontend.agent import resolve_callable

    if embedder_op.kind != "model.call" or embedder_op.attr("format") != "torch":
        raise CodegenError(
            f"retrieve: the query embedder {embedder_op.name!r} must be a torch model node"
        )
    ex: tuple[Any, ...] = tuple(embedder_op.attr_dict.get("example_inputs") or ())
    if len(ex) != 1 or not str(ex[0][2]).startswith("int"):
        raise CodegenError(
            f"retrieve: the embedder {embedder_op.name!r} must take one integer (token) input"
        )
    _, shape, dtype = ex[0]
    module = resolve_callable(str(embedder_op.attr("source")))().eval()
    rows = []
    with torch.no_grad():
        for text in passages:
            x = torch.from_numpy(text_tokens(text, tuple(shape))).to(getattr(torch, dtype))
            rows.append(np.asarray(module(x), np.float32).reshape(-1))
    mat = np.stack(rows).astype(np.float32)
    faiss.normalize_L2(mat)
    index = faiss.IndexFlatIP(mat.shape[1])
    index.add(mat)
    blob = faiss.serialize_index(index)
    return base64.b64encode(np.asarray(blob).tobytes()).decode(), int(mat.shape[1])


__all__ = ["build_index", "load_documents", "text_tokens"]
