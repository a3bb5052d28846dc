"""Configuration of the schedule search read from the environment (the one place that does).

Sits under the tuning CLI and the LLM proposer: the API key, endpoint and cache directory
come from explicit arguments first, then from ``TERRAZZO_LLM_*``/``OPENAI_*`` variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class LLMEndpoint:
    """An OpenAI-compatible chat-completions endpoint."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 2
    temperature: float = 0.2
    max_tokens: int = 2048
    #: ask for ``response_format: json_schema`` (falls back to plain text if refused)
    structured_output: bool = True


def llm_endpoint(
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    timeout_s: float = 60.0,
    max_retries: int = 2,
) -> LLMEndpoint:
    """Endpoint from arguments, else ``TERRAZZO_LLM_URL``/``OPENAI_BASE_URL``, model, key."""
    env = os.environ
    return LLMEndpoint(
        base_url=base_url
        or env.get("TERRAZZO_LLM_URL")
        or env.get("OPENAI_BASE_URL")
        or "http://127.0.0.1:8000/v1",
        model=model or env.get("TERRAZZO_LLM_MODEL") or env.get("OPENAI_MODEL") or "default",
        api_key=api_key or env.get("TERRAZZO_LLM_API_KEY") or env.get("OPENAI_API_KEY"),
        timeout_s=timeout_s,
        max_retries=max_retries,
    )


def cache_dir() -> Path:
    """Per-user cache: ``$TERRAZZO_CACHE_DIR``, else ``$XDG_CACHE_HOME/terrazzo``, else ~/.cache."""
    env = os.environ
    if env.get("TERRAZZO_CACHE_DIR"):
        return Path(env["TERRAZZO_CACHE_DIR"])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "terrazzo"


__all__ = ["LLMEndpoint", "cache_dir", "llm_endpoint"]
