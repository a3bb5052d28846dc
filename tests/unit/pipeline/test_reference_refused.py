"""A model that onnxruntime cannot run at the planning shapes: one line and exit 2, no bundle.

Symbolic sizes are planned, and the reference is taken, at their range's upper bound (seq
1..512 by default). A model whose table is shorter (a GPT-2 with 64 positions exported with a
dynamic sequence) made ``compile`` die with onnxruntime's raw traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from terrazzo.cli import main


def _position_table_model(path: Path, rows: int = 8) -> None:
    """out[b, s, :] = table[s, :] for s in range(seq): fails for seq > rows, like wpe."""
    seq_shape = helper.make_node("Shape", ["x"], ["shape"], start=1, end=2)
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    one = numpy_helper.from_array(np.array(1, np.int64), "one")
    table = numpy_helper.from_array(np.arange(rows * 4, dtype=np.float32).reshape(rows, 4), "t")
    nodes = [
        seq_shape,
        helper.make_node("Squeeze", ["shape"], ["seq"]),
        helper.make_node("Range", ["zero", "seq", "one"], ["pos"]),
        helper.make_node("Gather", ["t", "pos"], ["rows"]),
        helper.make_node("Unsqueeze", ["rows", "axes0"], ["rows3"]),
        helper.make_node("Add", ["x", "rows3"], ["y"]),
    ]
    axes0 = numpy_helper.from_array(np.array([0], np.int64), "axes0")
    graph = helper.make_graph(
        nodes,
        "pos",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])],
        [zero, one, table, axes0],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def test_reference_refused_at_the_planning_shape_is_one_line(tmp_path, capsys) -> None:
    src = tmp_path / "pos.onnx"
    _position_table_model(src)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("devices:\n  cpu: {count: 1}\n")
    out = tmp_path / "pos.tzb"
    rc = main(["compile", str(src), "--fleet", str(fleet), "--sla", "1s", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert not out.exists()
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1, err
    assert "onnxruntime could not run the reference inputs at x 64x512x4: " in lines[0]
    assert "out of" in lines[0] or "indices" in lines[0]  # the bounds error, not another
    assert "--shape" in lines[0] and "Traceback" not in err
    # with the range the model accepts, the same file compiles
    rc = main(
        ["compile", str(src), "--fleet", str(fleet), "--sla", "1s", "-o", str(out),
         "--shape", "x=1..2x1..8x4", "--no-sign"]
    )  # fmt: skip
    assert rc == 0 and out.exists()
