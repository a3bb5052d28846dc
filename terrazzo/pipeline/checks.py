"""IR checks the pipeline runs after a pass: re-read the pass's text with the IR's parser and verifier.

Off by default (parsing needs the MLIR bindings and takes time); ``TERRAZZO_VERIFY_IR=1`` turns
it on, and ``tests/conftest.py`` sets it for the whole suite, so each compile in the tests checks
that the placed IR it writes parses, verifies, and states the same placement as the Plan
codegen follows.
"""

from __future__ import annotations

import os

from terrazzo.errors import VerifyError
from terrazzo.ir import Graph
from terrazzo.placement import Plan, read_placed

VERIFY_IR_ENV = "TERRAZZO_VERIFY_IR"


def verify_placed_ir(text: str, graph: Graph, plan: Plan) -> None:
    """Check the placement→MLIR pass's text when ``TERRAZZO_VERIFY_IR=1``.

    Raises:
        VerifyError: the text does not parse or verify, or states another placement.
    """
    if os.environ.get(VERIFY_IR_ENV, "0") != "1":
        return
    placed = read_placed(text)
    stage = plan.stage_of()
    want = {o.name: (plan.assignment[o.name], stage[o.name]) for o in graph.ops}
    got = {o.name: (o.device, o.stage) for o in placed.ops}
    if got != want:
        diff = sorted(n for n in set(want) | set(got) if want.get(n) != got.get(n))
        raise VerifyError(
            f"placed IR of {graph.name!r} states another placement than the plan for ops "
            f"{', '.join(diff[:5])}"
        )
