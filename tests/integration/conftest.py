"""Session fixtures of the integration tests: TVM-built stage libraries compiled once per session."""

from __future__ import annotations

import pytest

from tests.integration.serving_helpers import _build_libs


@pytest.fixture(scope="session")
def libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Three tiny Relax functions (double, addone, combine) exported as CPU libraries, built once."""
    return _build_libs(tmp_path_factory.mktemp("relax_libs"))
