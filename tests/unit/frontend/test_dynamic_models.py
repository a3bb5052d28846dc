"""Models exported with a dynamic sequence (ONNX: GPT-2, T5; torch.export: BERT) and an fp16 CNN
through torch.export: one symbolic build each, matched against onnxruntime / torch at several
sizes. Random weights from small ``transformers`` configs; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from terrazzo.frontend import build_cpu, from_onnx, from_torch  # noqa: E402

_AXES = {0: "batch", 1: "seq"}


def _export(module: Any, example: dict[str, Any], outputs: list[str], path: Path) -> Path:
    with torch.no_grad():
        torch.onnx.export(module.eval(), tuple(example.values()), str(path),
                          input_names=list(example), output_names=outputs,
                          dynamic_axes={n: _AXES for n in [*example, *outputs]},
                          opset_version=17, dynamo=False)  # fmt: skip
    return path


def _match_ort(path: Path, make: Any, seqs: tuple[int, ...] = (1, 3, 8)) -> None:
    graph = from_onnx(path)  # no shapes: batch and seq stay symbolic
    assert "seq" in dict(graph.attrs)["dynamic_dims"]
    fn = build_cpu(graph)  # one build for every size
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seq in seqs:
        feed = make(seq)
        want = sess.run(None, feed)
        got = list(fn(feed).values())
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_range_over_a_symbolic_size_keeps_the_symbol(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    # y = x + Range(0, seq, 1) and z = Range(1, seq, 2) (the position-id pattern exporters write)
    def const(name: str, v: int) -> Any:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name, TensorProto.INT64, [], [v]))  # fmt: skip

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        const("one_idx", 1), const("zero", 0), const("one", 1), const("two", 2),
        helper.make_node("Gather", ["shape", "one_idx"], ["n"], axis=0),
        helper.make_node("Range", ["zero", "n", "one"], ["pos"]),
        helper.make_node("Cast", ["pos"], ["posf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "posf"], ["y"]),
        helper.make_node("Range", ["one", "n", "two"], ["z"]),
    ]  # fmt: skip
    g = helper.make_graph(
        nodes, "rng", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"]),
         helper.make_tensor_value_info("z", TensorProto.INT64, [None])],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    path = tmp_path / "rng.onnx"
    onnx.save(m, str(path))
    graph = from_onnx(path)
    text = graph.relax_mod.script()
    assert "range_len" not in text  # no fresh run-time symbol: the length is `seq`
    rng = np.random.default_rng(0)
    _match_ort(path, lambda s: {"x": rng.standard_normal((2, s)).astype(np.float32)}, (1, 2, 7))


def test_gpt2_dynamic_sequence_matches_onnxruntime(tmp_path: Path) -> None:
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2,
                                  attn_implementation="eager")  # fmt: skip
    torch.manual_seed(0)
    inner = transformers.GPT2LMHeadModel(cfg)

    class W(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = inner

        def forward(self, input_ids: Any) -> Any:
            mask = torch.ones_like(input_ids)
            return self.m(input_ids=input_ids, attention_mask=mask, use_cache=False).logits

    ids = torch.randint(0, 64, (2, 5))
    path = _export(W(), {"input_ids": ids}, ["logits"], tmp_path / "gpt2.onnx")
    rng = np.random.default_rng(1)
    _match_ort(path, lambda s: {"input_ids": rng.integers(0, 64, (2, s)).astype(np.int64)})


def test_t5_dynamic_sequence_matches_onnxruntime(tmp_path: Path) -> None:
    cfg = transformers.T5Config(vocab_size=64, d_model=32, d_kv=16, d_ff=64, num_layers=1,
                                num_decoder_layers=1, num_heads=2,
                                attn_implementation="eager")  # fmt: skip
    torch.manual_seed(0)
    inner = transformers.T5Model(cfg)

    class W(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = inner

        def forward(self, input_ids: Any, decoder_input_ids: Any) -> Any:
            out = self.m(input_ids=input_ids, decoder_input_ids=decoder_input_ids, use_cache=False)
            return out.last_hidden_state

    ids = torch.randint(0, 64, (2, 5))
    path = _export(W(), {"input_ids": ids, "decoder_input_ids": ids}, ["hidden"],
                   tmp_path / "t5.onnx")  # fmt: skip
    rng = np.random.default_rng(2)

    def make(s: int) -> dict[str, Any]:
        ids = rng.integers(0, 64, (2, s)).astype(np.int64)
        return {"input_ids": ids, "decoder_input_ids": ids[:, ::-1].copy()}

    _match_ort(path, make)


def test_torch_bert_dynamic_sequence_matches_torch() -> None:
    # BERT slices its position-id buffer to the sequence (`ids[:, :seq]`): torch proves the
    # slice is in bounds, TVM's translator alone gave it length min(seq, 64) and the build failed
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64, attn_implementation="eager")  # fmt: skip
    torch.manual_seed(0)
    inner = transformers.BertModel(cfg, add_pooling_layer=False).eval()

    class W(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    m = W().eval()
    ids = torch.randint(0, 64, (2, 4))
    graph = from_torch(m, (ids, torch.ones_like(ids)),
                       shapes={"input_ids": (2, (1, 8)), "attention_mask": (2, (1, 8))})  # fmt: skip
    fn = build_cpu(graph)
    for seq in (1, 3, 8):
        ids = torch.randint(0, 64, (2, seq))
        mask = torch.ones_like(ids)
        mask[1, -1] = 0
        with torch.no_grad():
            want = m(ids, mask).numpy()
        (got,) = fn({"input_ids": ids.numpy(), "attention_mask": mask.numpy()}).values()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_torch_fp16_cnn_matches_torch() -> None:
    # TVM's translator accumulates conv/linear in fp32, then added the fp16 bias to the fp32
    # result and refused the model ("Binary operators must have the same datatype")
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, 1, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, 2, 1, groups=4),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5),
    ).half().eval()  # fmt: skip
    x = torch.randn(2, 3, 8, 8).half()
    graph = from_torch(m, (x,))
    fn = build_cpu(graph)
    (got,) = fn({graph.inputs[0]: x.numpy()}).values()
    assert got.dtype == np.float16
    with torch.no_grad():
        want = m(x).numpy()
    # fp32 accumulation on both sides, one rounding to fp16 at each layer: a few fp16 ulps
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-2,
                               atol=1e-2)  # fmt: skip
