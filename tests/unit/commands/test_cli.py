"""The CLI shell: --version, --help for every subcommand, user errors as one line + exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from terrazzo.cli import build_parser, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("terrazzo ")


def test_every_subcommand_has_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        out = subprocess.run(
            [sys.executable, "-m", "terrazzo.cli", name, "--help"], capture_output=True, text=True
        )
        assert out.returncode == 0, (name, out.stderr)
        assert "usage: terrazzo" in out.stdout


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
