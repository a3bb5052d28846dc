"""The ``terrazzo`` command: parses arguments, calls the API, prints. Thin by design.

Each subcommand lives in its own module under ``terrazzo.commands`` and exposes
``register(subparsers)``, which adds a parser and sets ``func`` to a ``run(args) -> int``.
Heavy imports (tvm, torch, grpc, ray) happen inside ``run`` so ``terrazzo --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from terrazzo import __version__
from terrazzo.errors import TerrazzoError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="terrazzo",
        description="Compile models and agents for mixed hardware, serve them over gRPC, "
        "and report their total cost of ownership.",
    )
    parser.add_argument("--version", action="version", version=f"terrazzo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import terrazzo.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"terrazzo.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TerrazzoError as e:
        print(f"terrazzo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"terrazzo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
