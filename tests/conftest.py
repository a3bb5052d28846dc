"""Shared test fixtures: temporary dirs, the model zoo cache, and marker handling."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TVM_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Every compile in the suite re-reads its placed IR with the IR's parser and verifier.
os.environ.setdefault("TERRAZZO_VERIFY_IR", "1")
# Hermetic trust: the local signing key (created by the first compile) and the trust directory
# live in a per-session home, never in the real ~/.config/terrazzo; no inherited trust list.
_HOME = tempfile.mkdtemp(prefix="terrazzo-test-home-")
os.environ["TERRAZZO_HOME"] = _HOME
os.environ.pop("TERRAZZO_TRUST", None)
atexit.register(shutil.rmtree, _HOME, True)


def _has_cuda_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda_gpu():
        return
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
