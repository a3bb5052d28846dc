"""ir.Graph invariants: verify() catches malformed graphs; JSON round trip is lossless."""

from __future__ import annotations

import pytest

from terrazzo.errors import VerifyError
from terrazzo.ir import Graph, Op, TensorType


def _chain() -> Graph:
    t = TensorType((2, 4), "float32")
    return Graph(
        name="chain",
        inputs=("x",),
        outputs=("b",),
        values={"x": t, "a": t, "b": t},
        ops=(
            Op(
                "a",
                "relu",
                ("x",),
                ("a",),
                op_class="elementwise",
                flops=8,
                bytes_read=32,
                bytes_written=32,
            ),
            Op(
                "b",
                "exp",
                ("a",),
                ("b",),
                op_class="elementwise",
                flops=8,
                bytes_read=32,
                bytes_written=32,
            ),
        ),
    )


def test_verify_accepts_chain_and_json_round_trips() -> None:
    g = _chain().verify()
    assert Graph.from_json(g.to_json()) == g
    assert g.total_flops == 16
    nxg = g.to_networkx()
    assert list(nxg.edges) == [("a", "b")]
    assert nxg.edges["a", "b"]["bytes"] == 32


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda g: g.with_ops(reversed(g.ops)), "before it is defined"),
        (lambda g: g.with_ops([g.ops[0], g.ops[0]]), "not unique"),
        (lambda g: g.with_ops([g.ops[0]]), "output 'b' is never defined"),
    ],
)
def test_verify_rejects(mutate, message) -> None:
    with pytest.raises(VerifyError, match=message):
        mutate(_chain()).verify()


def test_dynamic_dims_rejected_in_model_graphs_only() -> None:
    g = _chain()
    dyn = Graph(
        g.name, g.ops, {**g.values, "x": TensorType((-1, 4), "float32")}, g.inputs, g.outputs
    )
    with pytest.raises(VerifyError, match="dynamic dimensions"):
        dyn.verify()
    Graph(g.name, g.ops, dict(dyn.values), g.inputs, g.outputs, level="agent").verify()


def test_placement_sets_device_and_stage() -> None:
    g = _chain().with_placement({"a": ("cpu", 0), "b": ("t4", 1)}).verify()
    assert [(o.device, o.stage) for o in g.ops] == [("cpu", 0), ("t4", 1)]
    with pytest.raises(VerifyError, match="misses ops: b"):
        _chain().with_placement({"a": ("cpu", 0)})
