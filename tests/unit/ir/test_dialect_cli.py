"""``terrazzo ir``: ONNX / tz MLIR in, tz MLIR or JSON out, byte-identical round trip, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from terrazzo.cli import main
from terrazzo.ir.dialect import parse_graph, print_graph
from terrazzo.ir.graph import Graph


def _mlp_onnx(path: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.standard_normal((32,)).astype(np.float32), "B1"),
        numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "W2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("Add", ["h", "B1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def onnx_mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mlp_onnx(tmp_path_factory.mktemp("onnx") / "mlp.onnx")


@pytest.fixture(scope="module")
def onnx_graph(onnx_mlp: Path) -> Graph:
    from terrazzo.frontend import from_onnx

    return from_onnx(onnx_mlp, shapes={"x": (2, 16)})


def test_onnx_graph_round_trips(onnx_graph: Graph) -> None:
    text = print_graph(onnx_graph)
    back = parse_graph(text)
    assert back == onnx_graph
    assert print_graph(back) == text
    assert '"tz.matmul"(%x)' in text and '"tz.relu"' in text


def test_ir_onnx_then_its_own_output_is_byte_identical(
    onnx_mlp: Path, onnx_graph: Graph, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.mlir"
    assert main(["ir", str(onnx_mlp), "--shape", "x=2x16", "-o", str(out)]) == 0
    first = out.read_text(encoding="utf-8")
    assert first == print_graph(onnx_graph)
    assert main(["ir", str(out)]) == 0
    assert capsys.readouterr().out == first


def test_ir_fuse_and_json(
    onnx_mlp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ir", str(onnx_mlp), "--shape", "x=2x16", "--fuse", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    fused = Graph.from_json(data).verify()
    assert [o.kind for o in fused.ops] == ["matmul", "matmul"]
    assert fused.ops[0].attr("fused") == ("add", "nn.relu")


def test_ir_mlir_input_with_fuse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    golden = Path(__file__).parents[2] / "data" / "golden" / "fuse_elementwise_chain.mlir"
    before, after = golden.read_text(encoding="utf-8").split("// -----\n")
    src = tmp_path / "chain.mlir"
    src.write_text(before, encoding="utf-8")
    assert main(["ir", str(src), "--fuse"]) == 0
    assert capsys.readouterr().out == after


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize(
    ("name", "content", "args", "message"),
    [
        ("missing.mlir", None, [], "does not exist"),
        ("model.txt", "hello", [], "unknown model format '.txt'"),
        (
            "bad.mlir",
            '"tz.graph"() ({\n^bb0:\n  "tz.output"() : () -> ()\n}) {sym_name = "g", inputs = []} : () -> ()\n',
            [],
            "line 3, col 3: op expects exactly 1 operands",
        ),
        ("garbage.mlir", "this is not mlir", [], "invalid tz MLIR at line 1, col 1"),
        (
            "g.mlir",
            '"tz.graph"() ({\n^bb0:\n}) {sym_name = "g", inputs = []} : () -> ()\n',
            ["--shape", "x=2x"],
            "cannot parse --shape",
        ),
        (
            "g.mlir",
            '"tz.graph"() ({\n^bb0:\n}) {sym_name = "g", inputs = []} : () -> ()\n',
            ["--shape", "x=2x3"],
            "--shape applies to .onnx models only",
        ),
        ("latin1.mlir", b"\xff\xfe", [], "not UTF-8"),
    ],
)
def test_ir_user_errors_are_one_line_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: str | bytes | None,
    args: list[str],
    message: str,
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    assert main(["ir", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("terrazzo ir: error: ") and err.count("\n") == 1


def test_ir_empty_graph_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = '"tz.graph"() ({\n^bb0:\n}) {sym_name = "g", inputs = []} : () -> ()\n'
    assert main(["ir", str(_write(tmp_path, "g.mlir", text))]) == 0
    assert capsys.readouterr().out == text


def test_ir_bad_input_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    bad = _write(
        tmp_path,
        "bad.mlir",
        '"tz.graph"() ({\n^bb0:\n  %y = "tz.relu"() : () -> tensor<f32>\n}) {sym_name = "g", inputs = []} : () -> ()\n',
    )
    run = subprocess.run(
        [sys.executable, "-m", "terrazzo.cli", "ir", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert run.stderr.startswith("terrazzo ir: error: invalid tz MLIR at line 3, col 8:")
    assert run.stderr.count("\n") == 1


@pytest.mark.slow
def test_ir_round_trips_on_every_zoo_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from terrazzo import zoo

    cache = Path.home() / ".cache" / "terrazzo" / "zoo-onnx"
    for name in zoo.names():
        onnx_path = zoo.export_onnx(name, cache)
        out = tmp_path / f"{name}.mlir"
        assert main(["ir", str(onnx_path), "-o", str(out)]) == 0, name
        first = out.read_text(encoding="utf-8")
        assert main(["ir", str(out)]) == 0
        assert capsys.readouterr().out == first, name
        assert main(["ir", str(out), "--fuse", "-o", str(tmp_path / "fused.mlir")]) == 0
        fused = parse_graph((tmp_path / "fused.mlir").read_text(encoding="utf-8"))
        assert len(fused.ops) <= len(parse_graph(first).ops)


def test_ir_agent_yaml_prints_fig7_ops_and_round_trips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = Path(__file__).parents[3] / "examples" / "agents" / "voice_agent.yaml"
    out = tmp_path / "agent.mlir"
    assert main(["ir", str(spec), "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    for op in (
        '"agent.graph"',
        '"input.query"',
        '"tool.invoke"',
        '"memory.load"',
        '"agent.output"',
    ):
        assert op in text, op
    assert "tensor<?xi32>" in text
    assert main(["ir", str(out)]) == 0
    assert capsys.readouterr().out == text


def test_ir_bad_agent_yaml_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ir", str(_write(tmp_path, "agent.yaml", "nodes: [\n"))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("terrazzo ir: error: ") and err.count("\n") == 1


def test_ir_decompose_splits_llm_call_into_phases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = Path(__file__).parents[3] / "examples" / "agents" / "voice_agent.yaml"
    out = tmp_path / "decomposed.mlir"
    assert main(["ir", str(spec), "--decompose", "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert 'kind = "llm.prefill"' in text or '"llm.prefill"' in text
    assert '"llm.kv_transfer"' in text and '"llm.decode"' in text
    assert 'kind = "llm.call"' not in text and '"llm.call"(' not in text
    assert main(["ir", str(out)]) == 0
    assert capsys.readouterr().out == text


def test_ir_decompose_rejects_model_graphs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from terrazzo.ir import Graph, Op, TensorType
    from terrazzo.ir.dialect import print_graph

    t = TensorType((2, 2), "float32")
    g = Graph(
        "m",
        (Op("r", "relu", ("x",), ("r",), op_class="elementwise"),),
        {"x": t, "r": t},
        ("x",),
        ("r",),
    )
    mlir = _write(tmp_path, "m.mlir", print_graph(g))
    assert main(["ir", str(mlir), "--decompose"]) == 2
    assert "agent graphs" in capsys.readouterr().err
