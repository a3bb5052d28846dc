"""fuse_elementwise: golden text tests (before → after) and its invariants."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from terrazzo.ir.dialect import parse_graph, print_graph
from terrazzo.ir.graph import Graph, Op, TensorType, make_attrs
from terrazzo.ir.passes import fuse_elementwise
from tests.unit.ir.test_dialect import graphs

GOLDEN = Path(__file__).parents[2] / "data" / "golden"
SEPARATOR = "// -----\n"


def run_pass(pass_fn: Callable[[Graph], Graph], graph: Graph) -> Graph:
    """Run a pass with the checks every pass owes: verify before and after, text round trip."""
    graph.verify()
    out = pass_fn(graph).verify()
    text = print_graph(out)
    assert parse_graph(text) == out
    return out


@pytest.mark.parametrize(
    "path", sorted(GOLDEN.glob("fuse_elementwise_*.mlir")), ids=lambda p: p.stem
)
def test_golden(path: Path) -> None:
    before, expected = path.read_text(encoding="utf-8").split(SEPARATOR)
    assert before.startswith("// RUN: fuse_elementwise\n")
    after = print_graph(run_pass(fuse_elementwise, parse_graph(before)))
    assert after == expected, f"{path.name}: pass output differs from the golden text"
    assert parse_graph(expected) == parse_graph(after)


def _chain() -> Graph:
    f = TensorType((4, 4), "float32")
    return Graph(
        name="sq",
        ops=(
            Op("m", "matmul", ("x",), ("m",), (), "matmul", 128, 64, 64, 64),
            Op("sq", "multiply", ("m", "m"), ("sq",), (), "elementwise", 16, 128, 64),
            Op(
                "r",
                "nn.relu",
                ("sq",),
                ("r",),
                make_attrs({"note": "kept?"}),
                "elementwise",
                16,
                64,
                64,
            ),
        ),
        values={"x": f, "m": f, "sq": f, "r": f},
        inputs=("x",),
        outputs=("r",),
        relax_mod="stand-in for the Relax module",
    )


def test_fuses_self_product_and_keeps_relax_module() -> None:
    g = _chain()
    out = run_pass(fuse_elementwise, g)
    (op,) = out.ops
    assert (op.name, op.kind, op.op_class, op.inputs, op.outputs) == (
        "m",
        "matmul",
        "matmul",
        ("x",),
        ("r",),
    )
    assert op.attr("fused") == ("multiply", "nn.relu")
    assert op.attr("members") == ("m", "sq", "r")
    assert op.flops == g.total_flops
    assert (op.bytes_read, op.bytes_written) == (64, 64)  # x in, r out; m and sq stay on chip
    assert set(out.values) == {"x", "r"}
    assert out.relax_mod is g.relax_mod


def test_is_idempotent_and_refuses_nothing_to_do() -> None:
    once = run_pass(fuse_elementwise, _chain())
    assert run_pass(fuse_elementwise, once) is once


def test_fusing_in_two_rounds_records_the_same_members() -> None:
    g = _chain()
    # Hide the head from the pass, fuse the tail (sq → r), then fuse again with the head back.
    hidden = g.with_ops([g.ops[0], replace(g.ops[1], op_class="other"), g.ops[2]])
    partial = run_pass(fuse_elementwise, hidden)
    assert partial.ops[1].attr("members") == ("sq", "r")
    restored = partial.with_ops([partial.ops[0], replace(partial.ops[1], op_class="elementwise")])
    final = run_pass(fuse_elementwise, restored)
    assert final.ops[0].attr("members") == ("m", "sq", "r")
    assert final.ops[0].attr("fused") == ("multiply", "nn.relu")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_random_graphs_stay_valid_and_conserve_work(g: Graph) -> None:
    out = run_pass(fuse_elementwise, g)
    assert out.total_flops == g.total_flops
    assert out.param_bytes == g.param_bytes
    assert out.outputs == g.outputs and out.inputs == g.inputs
    covered = [m for o in out.ops for m in o.attr_dict.get("members", (o.name,))]  # type: ignore[union-attr]
    assert sorted(covered) == sorted(g.op_names)
