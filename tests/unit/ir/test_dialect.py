"""The tz dialects: IRDL loading, printer/parser round trip, and the stock MLIR verifier."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from terrazzo.errors import VerifyError
from terrazzo.ir.dialect import mlir_context, parse_graph, print_graph
from terrazzo.ir.graph import OP_CLASSES, Graph, Op, TensorType, make_attrs


def f32(*shape: int) -> TensorType:
    return TensorType(shape, "float32")


def mlp_graph() -> Graph:
    return Graph(
        name="mlp",
        ops=(
            Op(
                "lv",
                "matmul",
                ("x",),
                ("lv",),
                make_attrs({"out_dtype": ""}),
                "matmul",
                2 * 8 * 256 * 512,
                8192,
                16384,
                524288,
            ),
            Op("lv1", "add", ("lv",), ("lv1",), (), "elementwise", 4096, 16384, 16384, 2048),
            Op("lv2", "nn.relu", ("lv1",), ("lv2",), (), "elementwise", 4096, 16384, 16384),
            Op(
                "lv3",
                "matmul",
                ("lv2",),
                ("lv3",),
                (),
                "matmul",
                2 * 8 * 512 * 10,
                16384,
                320,
                20480,
            ),
        ),
        values={
            "x": f32(8, 256),
            "lv": f32(8, 512),
            "lv1": f32(8, 512),
            "lv2": f32(8, 512),
            "lv3": f32(8, 10),
        },
        inputs=("x",),
        outputs=("lv3",),
    )


def agent_graph() -> Graph:
    toks = TensorType((-1,), "int32")
    kv = TensorType((2, 2, 4, 128, 64), "float16")
    return Graph(
        name="rag",
        level="agent",
        ops=(
            Op("q", "input.query", (), ("q",), (), "io"),
            Op(
                "mem",
                "memory.load",
                ("q",),
                ("mem",),
                make_attrs({"store": "kv"}),
                "memory",
                bytes_read=4096,
            ),
            Op(
                "search",
                "tool.invoke",
                ("q",),
                ("search",),
                make_attrs({"tool": "web", "latency_s": 0.25}),
                "tool",
            ),
            Op(
                "a.prefill",
                "llm.prefill",
                ("q", "mem", "search"),
                ("a.kv",),
                make_attrs({"model": "llama3-8b"}),
                "llm_prefill",
                10**12,
                16 * 10**9,
                10**6,
                16 * 10**9,
                "h100",
                0,
            ),
            Op(
                "a.kv_transfer",
                "llm.kv_transfer",
                ("a.kv",),
                ("a.kv_remote",),
                (),
                "kv_transfer",
                0,
                10**6,
                10**6,
                0,
                "h100",
                0,
            ),
            Op(
                "a",
                "llm.decode",
                ("a.kv_remote",),
                ("a",),
                make_attrs({"model": "llama3-8b"}),
                "llm_decode",
                10**11,
                10**10,
                512,
                16 * 10**9,
                "l4",
                1,
            ),
            Op("save", "memory.store", ("a",), (), (), "memory", bytes_written=512),
        ),
        values={"q": toks, "mem": toks, "search": toks, "a.kv": kv, "a.kv_remote": kv, "a": toks},
        inputs=(),
        outputs=("a",),
        attrs=make_attrs({"sla_s": 2.0}),
    )


def parses_with_stock_mlir(text: str) -> None:
    """The stock MLIR parser + verifier (no Terrazzo code) accepts ``text``."""
    from torch_mlir import ir

    with mlir_context():
        module = ir.Module.parse(text)
        assert module.operation.verify()


@pytest.mark.parametrize("make", [mlp_graph, agent_graph])
def test_round_trip_is_exact(make: object) -> None:
    g = make()  # type: ignore[operator]
    text = print_graph(g)
    parses_with_stock_mlir(text)
    back = parse_graph(text)
    assert back == g
    assert print_graph(back) == text


def test_model_text_uses_named_ops_and_builtin_tensors() -> None:
    text = print_graph(mlp_graph())
    assert '%lv = "tz.matmul"(%x) {name = "lv", op_class = "matmul", flops = 2097152' in text
    assert '"tz.relu"(%lv1)' in text and "tensor<8x512xf32>" in text
    assert text.startswith('"tz.graph"() ({\n^bb0(%x: tensor<8x256xf32>):\n')
    assert '"tz.output"(%lv3) : (tensor<8x10xf32>) -> ()' in text


def test_agent_text_follows_fig7() -> None:
    text = print_graph(agent_graph())
    for op in (
        "agent.graph",
        "input.query",
        "memory.load",
        "tool.invoke",
        "llm.prefill",
        "llm.kv_transfer",
        "llm.decode",
        "memory.store",
        "agent.output",
    ):
        assert f'"{op}"' in text, op
    assert "tensor<?xi32>" in text
    assert 'device = "h100", stage = 0' in text


def test_unknown_kinds_and_mixed_types_fall_back_to_generic_ops() -> None:
    g = Graph(
        name="g",
        ops=(
            Op("sel", "where", ("c", "x", "b"), ("sel",), (), "elementwise"),
            Op("sp", "split", ("sel",), ("s0", "s1"), make_attrs({"axis": 0}), "data_movement"),
            Op("cat", "concat", ("s0", "b"), ("cat",), (), "data_movement"),
        ),
        values={
            "c": TensorType((4, 4), "bool"),
            "x": f32(4, 4),
            "b": f32(4),
            "sel": f32(4, 4),
            "s0": f32(2, 4),
            "s1": f32(2, 4),
            "cat": f32(12),
        },
        inputs=("c", "x", "b"),
        outputs=("cat", "s1"),
    )
    text = print_graph(g)
    assert '"tz.op_mixed"(%c, %x, %b) {name = "sel", kind = "where"' in text
    assert '%s0, %s1 = "tz.op"(%sel) {name = "sp", kind = "split"' in text
    assert '"tz.concat"(%s0, %b)' in text  # first + rest fits the named op
    parses_with_stock_mlir(text)
    assert parse_graph(text) == g


def test_awkward_names_strings_and_floats_round_trip() -> None:
    weird = 'a "quoted" \\ name\n\tü/é:0'
    g = Graph(
        name=weird,
        ops=(
            Op(
                weird,
                "nn.gelu",
                ("0in",),
                (weird,),
                make_attrs(
                    {
                        "eps": 1e-5,
                        "big": 1e300,
                        "neg": -0.0,
                        "inf": float("inf"),
                        "s": weird,
                        "nested": ((1, 2), (), ("x", False)),
                        "with space": 3,
                        "i": -(2**63),
                    }
                ),
                "elementwise",
            ),
        ),
        values={"0in": f32(), weird: f32()},
        inputs=("0in",),
        outputs=(weird,),
    )
    text = print_graph(g)
    parses_with_stock_mlir(text)
    assert parse_graph(text) == g
    assert print_graph(parse_graph(text)) == text


def test_printer_rejects_values_without_text_form() -> None:
    g = mlp_graph()
    bad = g.with_ops([Op("lv", "matmul", ("x",), ("lv",), (("n", 2**64),), "matmul"), *g.ops[1:]])
    with pytest.raises(VerifyError, match="does not fit in int64"):
        print_graph(bad)
    bad = g.with_ops(
        [Op("lv", "matmul", ("x",), ("lv",), (("d", {"a": 1}),), "matmul"), *g.ops[1:]]
    )  # type: ignore[arg-type]
    with pytest.raises(VerifyError, match="has no text form"):
        print_graph(bad)


def test_printer_verifies_the_graph_first() -> None:
    g = mlp_graph()
    with pytest.raises(VerifyError, match="before it is defined"):
        print_graph(g.with_ops(reversed(g.ops)))


_OK = '%y = "tz.matmul"(%x) {name = "y", op_class = "matmul", flops = 1, bytes_read = 2, bytes_written = 3, param_bytes = 4} : (tensor<2x2xf32>) -> tensor<2x2xf32>'


def _wrap(body: str, level: str = "tz") -> str:
    return f'"{level}.graph"() ({{\n^bb0(%x: tensor<2x2xf32>):\n  {body}\n}}) {{sym_name = "g", inputs = ["x"]}} : () -> ()\n'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_OK.replace("flops = 1, ", ""), 'attribute "flops" is expected but not provided'),
        (_OK.replace('name = "y", ', ""), 'attribute "name" is expected'),
        (
            _OK.replace('"matmul", flops', '"bogus", flops'),
            "bogus.*does not satisfy the constraint",
        ),
        (_OK.replace("flops = 1", 'flops = "1"'), "expected base attribute 'builtin.integer'"),
        (
            _OK.replace("(%x) {", "() {").replace("(tensor<2x2xf32>) ->", "() ->"),
            "expects at least 1 operands",
        ),
        (
            _OK.replace("-> tensor<2x2xf32>", "-> (tensor<2x2xf32>, tensor<2x2xf32>)").replace(
                "%y =", "%y, %z ="
            ),
            "expects exactly 1 results",
        ),
        (_OK.replace('"tz.matmul"', '"tz.op"'), 'attribute "kind" is expected'),
        (
            '%y = "llm.kv_transfer"(%x, %x) {name = "y", op_class = "kv_transfer", flops = 0, bytes_read = 0, bytes_written = 0, param_bytes = 0} : (tensor<2x2xf32>, tensor<2x2xf32>) -> tensor<2x2xf32>',
            "expects exactly 1 operands",
        ),
        (
            '%y = "llm.kv_transfer"() {name = "y", op_class = "kv_transfer", flops = 0, bytes_read = 0, bytes_written = 0, param_bytes = 0} : () -> tensor<2x2xf32>',
            "expects exactly 1 operands, but got 0",
        ),
        ('"tz.output"() : () -> ()', "expects exactly 1 operands"),
        ('"tz.unknown"(%x) : (tensor<2x2xf32>) -> ()', "unregistered operation 'tz.unknown'"),
    ],
)
def test_stock_verifier_rejects_malformed_ops(body: str, message: str) -> None:
    from torch_mlir import ir

    text = _wrap(body)
    with mlir_context(), pytest.raises(ir.MLIRError, match=message):
        ir.Module.parse(text)
    with pytest.raises(VerifyError) as e:
        parse_graph(text)
    assert "invalid tz MLIR at line 3, col " in str(e.value) and "\n" not in str(e.value)


def test_well_formed_snippet_is_accepted() -> None:
    g = parse_graph(_wrap(_OK + '\n  "tz.output"(%y) : (tensor<2x2xf32>) -> ()'))
    assert g.op("y").flops == 1 and g.outputs == ("y",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "exactly one tz.graph or agent.graph"),
        ('"tz.graph"( {', "invalid tz MLIR at line 1"),
        (
            _wrap(_OK.replace("param_bytes = 4", 'param_bytes = 4, kind = "matmul"')),
            "named op takes no 'kind'",
        ),
        (
            _wrap(_OK.replace("param_bytes = 4", "param_bytes = 4, colour = 1")),
            "unexpected attributes colour",
        ),
        (_wrap(_OK.replace("param_bytes = 4", "param_bytes = -4")), "negative param_bytes"),
        (
            _wrap(_OK.replace("param_bytes = 4", 'param_bytes = 4, results = ["a", "b"]')),
            "'results' names 2 values",
        ),
        (
            _wrap(_OK + '\n  "agent.output"(%y) : (tensor<2x2xf32>) -> ()'),
            "unexpected op agent.output",
        ),
        (_wrap(_OK.replace("tensor<2x2xf32>)", "tensor<2x2xf64>)")), "invalid tz MLIR"),
        (
            _wrap(_OK.replace("2x2xf32>) -> tensor<2x2xf32>", "2x2xf32>) -> tensor<?x2xf32>")),
            "dynamic dimensions",
        ),
        (
            _wrap(
                _OK.replace("2x2xf32>) -> tensor<2x2xf32>", "2x2xf32>) -> tensor<2x2xcomplex<f32>>")
            ),
            "element type",
        ),
    ],
)
def test_parser_rejects_invalid_graphs(text: str, message: str) -> None:
    with pytest.raises(VerifyError, match=message) as e:
        parse_graph(text)
    assert "\n" not in str(e.value)


# -- property test: random graphs round-trip ------------------------------------------------

_NAMES = st.text(alphabet=string.ascii_letters + string.digits + "._-/: ", min_size=1, max_size=8)
_DTYPES = st.sampled_from(["float32", "float16", "int64", "int8", "bool", "bfloat16", "uint8"])
_SCALAR = (
    st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.text(max_size=6)
)
_ATTR = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=6)
_KINDS = st.sampled_from(
    [
        "matmul",
        "add",
        "nn.relu",
        "reshape",
        "llm.call",
        "tool.invoke",
        "where",
        "custom.op",
        "llm.kv_transfer",
        "memory.store",
    ]
)


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    level = draw(st.sampled_from(["model", "agent"]))
    dims = st.integers(-1 if level == "agent" else 0, 5)
    types = st.builds(TensorType, st.lists(dims, max_size=3).map(tuple), _DTYPES)
    names = iter(draw(st.lists(_NAMES, min_size=30, max_size=30, unique=True)))
    values: dict[str, TensorType] = {}
    inputs = tuple(next(names) for _ in range(draw(st.integers(0, 3))))
    for v in inputs:
        values[v] = draw(types)
    ops = []
    for _ in range(draw(st.integers(0, 6))):
        defined = list(values)
        reads = draw(st.lists(st.sampled_from(defined), max_size=4)) if defined else []
        name = next(names)
        n_out = draw(st.integers(0, 3))
        outs = (
            (name,)
            if n_out == 1 and draw(st.booleans())
            else tuple(next(names) for _ in range(n_out))
        )
        for v in outs:
            values[v] = draw(types)
        placed = draw(st.booleans())
        ops.append(
            Op(
                name=name,
                kind=draw(_KINDS),
                inputs=tuple(reads),
                outputs=outs,
                attrs=make_attrs(draw(st.dictionaries(_NAMES, _ATTR, max_size=3))),
                op_class=draw(st.sampled_from(sorted(OP_CLASSES))),
                flops=draw(st.integers(0, 2**63 - 1)),
                bytes_read=draw(st.integers(0, 10**12)),
                bytes_written=draw(st.integers(0, 10**12)),
                param_bytes=draw(st.integers(0, 10**12)),
                device=draw(_NAMES) if placed else None,
                stage=draw(st.integers(0, 9)) if placed else None,
            )
        )
    outputs = tuple(draw(st.lists(st.sampled_from(list(values)), max_size=3))) if values else ()
    attrs = make_attrs(draw(st.dictionaries(_NAMES, _ATTR, max_size=2)))
    return Graph(next(names), tuple(ops), values, inputs, outputs, level, attrs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_random_graphs_round_trip(g: Graph) -> None:
    g.verify()
    text = print_graph(g)
    back = parse_graph(text)
    assert back == g
    assert print_graph(back) == text
