"""Import contracts (pyproject ``[tool.importlinter]``): the real tree keeps them; a bad import breaks them.

Each bad case copies the package's sources and the real config into a temporary directory,
adds one import that goes against a contract, and runs ``lint-imports`` there: ``make lint``
fails on the same import in the real tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter not installed")

PIPELINE_ORDER = "Stages import only earlier stages; only the pipeline orders them"
IR_ALONE = "terrazzo.ir imports nothing else from terrazzo (errors aside)"
NO_PRIVATE = "No package imports another package's private (_x) modules; import from its __init__"


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(cwd), COLUMNS="200")
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _status(out: str, contract: str) -> str:
    """KEPT or BROKEN for one contract in lint-imports' summary (the word after its name)."""
    flat = " ".join(out.split())  # long names wrap over lines
    if contract not in flat:
        raise AssertionError(f"contract {contract!r} not in lint-imports output:\n{out}")
    return flat.split(contract, 1)[1].split()[0]


def test_real_tree_keeps_every_contract() -> None:
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def _not_python_source(folder: str, names: list[str]) -> list[str]:
    keep = [n for n in names if n.endswith(".py") or (Path(folder) / n).is_dir()]
    return [n for n in names if n not in keep or n == "__pycache__"]


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A copy of terrazzo's Python sources, the real pyproject.toml and the custom contract."""
    shutil.copytree(ROOT / "terrazzo", tmp_path / "terrazzo", ignore=_not_python_source)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "__init__.py").write_text("")
    shutil.copy(ROOT / "tests" / "import_contracts.py", tmp_path / "tests" / "import_contracts.py")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "bad_import", "broken", "kept"),
    [
        # the IR reaches up into the cost model
        ("terrazzo/ir/graph.py", "from terrazzo.costmodel import CostModel", IR_ALONE, NO_PRIVATE),
        # codegen calls back into the CLI layer (what parse_duration_s used to do)
        ("terrazzo/codegen/_split.py", "from terrazzo.commands import compile", PIPELINE_ORDER,
         NO_PRIVATE),
        # the cost model builds with codegen again: the old costmodel <-> codegen cycle
        ("terrazzo/costmodel/fit.py", "from terrazzo.codegen import compile_module",
         PIPELINE_ORDER, IR_ALONE),
        # the pipeline (allowed to import codegen) reaches past codegen's facade
        ("terrazzo/pipeline/model.py", "from terrazzo.codegen._build import build_stage",
         NO_PRIVATE, PIPELINE_ORDER),
    ],
)  # fmt: skip
def test_bad_import_breaks_its_contract(
    tree: Path, module: str, bad_import: str, broken: str, kept: str
) -> None:
    path = tree / module
    path.write_text(path.read_text() + f"\n\ndef _bad() -> None:\n    {bad_import}  # noqa\n")
    r = _lint(tree)
    assert r.returncode == 1, r.stdout + r.stderr
    assert _status(r.stdout, broken) == "BROKEN", r.stdout
    assert _status(r.stdout, kept) == "KEPT", r.stdout


def test_private_import_inside_its_own_package_is_fine(tree: Path) -> None:
    path = tree / "terrazzo/codegen/_targets.py"
    path.write_text(path.read_text() + "\n\ndef _ok() -> None:\n    from terrazzo.codegen._split import StageModule  # noqa\n")  # fmt: skip
    r = _lint(tree)
    assert r.returncode == 0, r.stdout + r.stderr
