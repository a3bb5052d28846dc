"""Recurrent layers against their references: ONNX LSTM/GRU/RNN vs onnxruntime, nn.LSTM/GRU/RNN vs torch.

Every case runs the compiled model twice and requires identical outputs (the old torch bug,
an out-of-bounds ``take`` for ``y[:, -1]``, changed from run to run) and NaN where the
reference has NaN. Models are tiny (hidden 8, sequence 4) so each TVM build is quick.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from terrazzo.errors import FrontendError  # noqa: E402
from terrazzo.frontend import from_onnx, from_torch  # noqa: E402
from terrazzo.frontend.run import build_cpu  # noqa: E402

TOL = 1e-4
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _compare(got: dict, want: list, names: list[str]) -> None:
    for name, w in zip(names, want, strict=True):
        g = got[name]
        assert g.shape == w.shape, (name, g.shape, w.shape)
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=name)
        np.testing.assert_allclose(g, w, rtol=TOL, atol=TOL, err_msg=name)


def _onnx_rnn(
    op: str,
    *,
    direction: str = "forward",
    layout: int = 0,
    bias: bool = True,
    init: bool = False,
    peep: bool = False,
    extra: dict | None = None,
    lens: list[int] | None = None,
    seed: int = 0,
    seq: int = 4,
    batch: int = 2,
    inp: int = 5,
    hidden: int = 8,
):
    """One ONNX recurrent node (all outputs), weights as initializers; returns (model, feeds)."""
    rng = np.random.default_rng(seed)
    nd = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    inits = [
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, (nd, g * hidden, inp)).astype("f4"), "W"),
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, (nd, g * hidden, hidden)).astype("f4"), "R"),
    ]
    names = ["X", "W", "R"]
    if bias or init or peep:
        names.append("B" if bias else "")
        if bias:
            b = rng.uniform(-0.5, 0.5, (nd, 2 * g * hidden)).astype("f4")
            inits.append(numpy_helper.from_array(b, "B"))
    xshape = (seq, batch, inp) if layout == 0 else (batch, seq, inp)
    hshape = (nd, batch, hidden) if layout == 0 else (batch, nd, hidden)
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, xshape)]
    feeds = {"X": rng.standard_normal(xshape).astype("f4")}
    if init or peep or lens:
        names.append("L" if lens else "")  # sequence_lens
        if lens:
            graph_inputs.append(helper.make_tensor_value_info("L", TensorProto.INT32, (batch,)))
            feeds["L"] = np.asarray(lens, dtype=np.int32)
        names.append("H0" if init else "")
        if init:
            graph_inputs.append(helper.make_tensor_value_info("H0", TensorProto.FLOAT, hshape))
            feeds["H0"] = rng.standard_normal(hshape).astype("f4")
        if op == "LSTM":
            names.append("C0" if init else "")
            if init:
                graph_inputs.append(helper.make_tensor_value_info("C0", TensorProto.FLOAT, hshape))
                feeds["C0"] = rng.standard_normal(hshape).astype("f4")
            if peep:
                names.append("P")
                p = rng.uniform(-0.5, 0.5, (nd, 3 * hidden)).astype("f4")
                inits.append(numpy_helper.from_array(p, "P"))
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    yshape = (seq, nd, batch, hidden) if layout == 0 else (batch, seq, nd, hidden)
    out_info = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, yshape)] + [
        helper.make_tensor_value_info(o, TensorProto.FLOAT, hshape) for o in outs[1:]
    ]
    attrs = {"hidden_size": hidden, "direction": direction, **(extra or {})}
    if layout:
        attrs["layout"] = layout
    node = helper.make_node(op, names, outs, **attrs)
    graph = helper.make_graph([node], "rnn", graph_inputs, out_info, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, feeds


def _check_onnx(tmp_path, model, feeds, nan_at: tuple | None = None, ref: str = "ort") -> None:
    """Compare with onnxruntime, or with onnx's reference evaluator where ORT has no kernel
    (ORT's CPU LSTM/GRU/RNN refuse ``layout=1``)."""
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    if nan_at is not None:
        feeds["X"][nan_at] = np.nan
    names = [o.name for o in model.graph.output]
    if ref == "ort":
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        want = sess.run(None, feeds)
    else:
        from onnx.reference import ReferenceEvaluator

        want = ReferenceEvaluator(model).run(None, feeds)
    graph = from_onnx(path)
    run = build_cpu(graph)
    first = run(feeds)
    second = run(feeds)
    for k in first:
        np.testing.assert_array_equal(first[k], second[k], err_msg=f"{k} changed between runs")
    got = {n: first[o] for n, o in zip(names, graph.outputs, strict=True)}
    _compare(got, want, names)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_onnx_directions(tmp_path, op, direction):
    model, feeds = _onnx_rnn(op, direction=direction, init=True, seed=hash((op, direction)) % 97)
    _check_onnx(tmp_path, model, feeds)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_onnx_no_bias_nan(tmp_path, op):
    model, feeds = _onnx_rnn(op, direction="bidirectional", bias=False, init=True)
    _check_onnx(tmp_path, model, feeds, nan_at=(2, 1, 0))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_onnx_layout1(tmp_path, op):
    model, feeds = _onnx_rnn(op, direction="bidirectional", layout=1, init=True, seed=7)
    _check_onnx(tmp_path, model, feeds, ref="onnx-reference")


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_onnx_ragged_sequence_lens(tmp_path, op):
    model, feeds = _onnx_rnn(op, direction="bidirectional", init=True, lens=[4, 2], seed=11)
    _check_onnx(tmp_path, model, feeds)


def test_onnx_gru_linear_before_reset(tmp_path):
    model, feeds = _onnx_rnn("GRU", direction="bidirectional", extra={"linear_before_reset": 1})
    _check_onnx(tmp_path, model, feeds)


def test_onnx_lstm_peepholes_and_clip(tmp_path):
    model, feeds = _onnx_rnn("LSTM", peep=True, init=True, extra={"clip": 0.7})
    _check_onnx(tmp_path, model, feeds)


def test_onnx_unsupported_attribute_is_one_line(tmp_path):
    model, _ = _onnx_rnn("LSTM", extra={"input_forget": 1})
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(FrontendError, match="input_forget") as e:
        from_onnx(path)
    assert "\n" not in str(e.value)


class _TorchRNN(torch.nn.Module):
    def __init__(self, kind, *, bidirectional, batch_first, layers=2, last=False):
        super().__init__()
        cls = getattr(torch.nn, kind)
        self.rnn = cls(
            5, 8, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first
        )
        self.batch_first, self.last = batch_first, last

    def forward(self, x, *state):
        if state:
            out = self.rnn(x, state if len(state) > 1 else state[0])
        else:
            out = self.rnn(x)
        if self.last:  # the pattern that read out of bounds: a negative select
            y = out[0]
            return y[:, -1] if self.batch_first else y[-1]
        return out


def _check_torch(module, args) -> None:
    module = module.eval()
    with torch.no_grad():
        want = [t.numpy() for t in torch.utils._pytree.tree_leaves(module(*args))]
    graph = from_torch(module, args)
    run = build_cpu(graph)
    feeds = dict(zip(graph.inputs, [a.numpy() for a in args], strict=True))
    first, second = run(feeds), run(feeds)
    for k in first:
        np.testing.assert_array_equal(first[k], second[k], err_msg=f"{k} changed between runs")
    _compare(first, want, list(graph.outputs))


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_torch_two_layers(kind, bidirectional, batch_first):
    torch.manual_seed(3)
    m = _TorchRNN(kind, bidirectional=bidirectional, batch_first=batch_first)
    x = torch.randn((2, 4, 5) if batch_first else (4, 2, 5))
    _check_torch(m, (x,))


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_torch_explicit_state_and_nan(kind):
    torch.manual_seed(4)
    m = _TorchRNN(kind, bidirectional=True, batch_first=True)
    x = torch.randn(2, 4, 5)
    x[1, 2, 3] = float("nan")
    state = tuple(torch.randn(4, 2, 8) for _ in range(2 if kind == "LSTM" else 1))
    _check_torch(m, (x, *state))


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_torch_last_step_select(kind, batch_first):
    torch.manual_seed(5)
    m = _TorchRNN(kind, bidirectional=False, batch_first=batch_first, last=True)
    x = torch.randn((2, 4, 5) if batch_first else (4, 2, 5))
    _check_torch(m, (x,))


def test_torch_negative_select_without_rnn():
    class Last(torch.nn.Module):
        def forward(self, x):
            return x[:, -1] * 2.0, x[-2]

    _check_torch(Last(), (torch.randn(3, 4, 5),))


class _Seq(torch.nn.Module):
    """Two stacked layers, bidirectional, batch-first, then a head on the last step."""

    def __init__(self, kind):
        super().__init__()
        self.rnn = getattr(torch.nn, kind)(5, 8, num_layers=2, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        y, state = self.rnn(x)
        return self.head(y[:, -1]), y, state


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_bundle_from_onnx_via_cli(tmp_path, kind, capsys):
    """torch.onnx.export → `terrazzo compile` → `terrazzo run` on the bundle, vs onnxruntime."""
    from terrazzo.cli import main

    torch.manual_seed(6)
    m = _Seq(kind).eval()
    x = torch.randn(2, 4, 5)
    path = tmp_path / "m.onnx"
    torch.onnx.export(m, (x,), str(path), input_names=["x"], dynamo=False, opset_version=14)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert kind in ops, ops
    (tmp_path / "fleet.yaml").write_text("devices:\n  cpu: {count: 1}\n")
    np.save(tmp_path / "x.npy", x.numpy())
    bundle = tmp_path / "m.tzb"
    for argv in (
        ["compile", str(path), "--fleet", str(tmp_path / "fleet.yaml"), "--sla", "1s"]
        + ["-o", str(bundle)],
        ["run", str(bundle), "--input", f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "o.npz")],
        ["run", str(bundle), "--input", f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "p.npz")],
    ):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
        assert rc in (0, None), capsys.readouterr()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x.numpy()})
    got, again = np.load(tmp_path / "o.npz"), np.load(tmp_path / "p.npz")
    names = [o.name for o in sess.get_outputs()]
    assert sorted(got.files) == sorted(again.files)
    for k in got.files:
        np.testing.assert_array_equal(got[k], again[k])
    assert len(got.files) == len(want)
    keys = [k if k in got.files else None for k in names]
    if None in keys:  # names not kept (issue 13 item 4): fall back to bundle output order
        keys = list(got.files)
    _compare({n: got[k] for n, k in zip(names, keys, strict=True)}, want, names)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_bundle_from_torch_compile(tmp_path, kind):
    """terrazzo.compile(nn.Module) → bundle → run twice, vs torch (the 1e33 bug's path)."""
    from terrazzo.bundle import open_bundle
    from terrazzo.pipeline import compile as tz_compile

    torch.manual_seed(7)
    m = _Seq(kind).eval()
    x = torch.randn(2, 4, 5)
    path = tz_compile(
        m, {"devices": {"cpu": {"count": 1}}}, "1s", 1.0, tmp_path / "m.tzb", example_inputs=(x,)
    )
    with torch.no_grad():
        want = [t.numpy() for t in torch.utils._pytree.tree_leaves(m(x))]
    with open_bundle(path) as b:
        feeds = {b.inputs[0].name: x.numpy()}
        first, second = b.run(feeds), b.run(feeds)
        names = [o.name for o in b.outputs]
    for k in first:
        np.testing.assert_array_equal(first[k], second[k], err_msg=f"{k} changed between runs")
    _compare(first, want, names)


def test_torch_negative_index_list():
    class Pick(torch.nn.Module):
        def forward(self, x):
            return x[:, [-1, 0, -3]] * 1.0

    _check_torch(Pick(), (torch.randn(2, 4, 5),))


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"input_forget": 1}, "input_forget"),
        ({"activations": ["HardSigmoid", "Tanh", "Tanh"]}, "HardSigmoid"),
    ],
)
def test_onnx_refusal_via_cli_exit_2(tmp_path, capsys, extra, named):
    from terrazzo.cli import main

    model, _ = _onnx_rnn("LSTM", extra=extra)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    (tmp_path / "fleet.yaml").write_text("devices:\n  cpu: {count: 1}\n")
    argv = ["compile", str(path), "--fleet", str(tmp_path / "fleet.yaml"), "--sla", "1s"]
    try:
        rc = main([*argv, "-o", str(tmp_path / "m.tzb")])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert named in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "m.tzb").exists()
