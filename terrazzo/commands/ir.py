"""``terrazzo ir``: import a model (ONNX, tz MLIR, agent YAML) and print its IR as tz-dialect MLIR."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from terrazzo.errors import FrontendError, TerrazzoError

_SHAPE = re.compile(r"([^=]+)=(\d+(?:x\d+)*)")


def register(subparsers: Any) -> None:
    """Add the ``ir`` subcommand."""
    p = subparsers.add_parser(
        "ir",
        help="print a model's operator graph as tz-dialect MLIR",
        description="Import MODEL (.onnx, .mlir in the tz dialect, or an agent .yaml) and print "
        "its operator graph as tz-dialect MLIR. Given its own output, prints it again "
        "byte for byte.",
    )
    p.add_argument("model", metavar="MODEL", help="an .onnx, .mlir (tz dialect) or .yaml/.yml file")
    p.add_argument("--json", action="store_true", help="print the graph as JSON instead of MLIR")
    p.add_argument(
        "--fuse", action="store_true", help="fuse elementwise chains into their producers"
    )
    p.add_argument(
        "--decompose",
        action="store_true",
        help="agent graphs: split llm.call into prefill, KV transfer and decode, and each "
        "model node into its granular operators",
    )
    p.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME=DIMS",
        help="fix an ONNX input's shape, e.g. --shape input=1x3x224x224 (repeatable)",
    )
    p.add_argument("-o", "--output", metavar="OUT", help="write to OUT instead of stdout")
    p.set_defaults(func=run)


def parse_shapes(specs: list[str]) -> dict[str, tuple[int, ...]]:
    """``["x=1x3x224x224"]`` → ``{"x": (1, 3, 224, 224)}``; a malformed spec is a TerrazzoError."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        m = _SHAPE.fullmatch(spec.strip())
        if not m:
            raise TerrazzoError(
                f"cannot parse --shape {spec!r}; expected NAME=DIMS, e.g. x=1x3x224x224"
            )
        shapes[m.group(1)] = tuple(int(d) for d in m.group(2).split("x"))
    return shapes


def load_graph(path: Path, shapes: dict[str, tuple[int, ...]]) -> Any:
    """Import ``path`` by its extension into an ``ir.Graph``."""
    if not path.is_file():
        raise FrontendError(f"model file {str(path)!r} does not exist or is not a file")
    suffix = path.suffix.lower()
    if shapes and suffix != ".onnx":
        raise TerrazzoError(f"--shape applies to .onnx models only, not {suffix or 'this file'}")
    if suffix == ".onnx":
        try:
            from terrazzo.frontend import from_onnx
        except ImportError as e:
            raise FrontendError(f"ONNX import is unavailable in this build ({e})") from None
        return from_onnx(path, shapes=shapes or None)
    if suffix == ".mlir":
        from terrazzo.ir.dialect import parse_graph

        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise FrontendError(
                f"{str(path)!r} is not UTF-8 text; expected tz-dialect MLIR"
            ) from None
        return parse_graph(text)
    if suffix in (".yaml", ".yml"):
        try:
            agent = importlib.import_module("terrazzo.frontend.agent")
        except ImportError:
            raise FrontendError("agent specs (.yaml) are not supported in this build") from None
        return agent.load_agent(path)
    raise FrontendError(
        f"{str(path)!r}: unknown model format {suffix or '(no extension)'!r}; "
        "expected .onnx, .mlir or .yaml/.yml"
    )


def run(args: argparse.Namespace) -> int:
    """Import, optionally fuse, and print the graph."""
    from terrazzo.commands._common import require_compiler

    require_compiler("ir")
    graph = load_graph(Path(args.model), parse_shapes(args.shape))
    if args.decompose:
        if graph.level != "agent":
            raise TerrazzoError("--decompose applies to agent graphs (.yaml), not model graphs")
        from terrazzo.frontend.agent import decompose

        graph = decompose(graph)
    if args.fuse:
        from terrazzo.ir.passes import fuse_elementwise

        graph = fuse_elementwise(graph)
    if args.json:
        text = json.dumps(graph.to_json(), indent=2) + "\n"
    else:
        from terrazzo.ir.dialect import print_graph

        text = print_graph(graph)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as e:
            raise TerrazzoError(f"cannot write {args.output!r}: {e.strerror}") from None
    else:
        sys.stdout.write(text)
    return 0
