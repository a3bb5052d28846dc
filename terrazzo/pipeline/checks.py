"""IR checks the pipeline runs after a pass: re-read the pass's text with the IR's parser and verifier.

Off by default (parsing needs the MLIR bindings and takes time); ``tests/conftest.py`` turns it
on for every test, so each compile in the suite checks that the placed IR it writes parses,
verifies, and states the same placement as the Plan codegen follows.
"""

from __future__ import annotations

from terrazzo.errors import VerifyError
from terrazzo.ir import Graph
from terrazzo.placement import Plan, read_placed

VERIFY_IR_AFTER_PASSES = False


def verify_placed_ir(text: str, graph: Graph, plan: Plan) -> None:
    """Check the placement→MLIR pass's text when ``VERIFY_IR_AFTER_PASSES`` is on.

    Raises:
        VerifyError: the text does not parse or verify, or states another placement.
    """
    if not VERIFY_IR_AFTER_PASSES:
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
