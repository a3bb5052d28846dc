"""Held-out architectures for ``model_suite.py``: built from code and ``transformers`` configs
with seeded random weights (nothing is downloaded), none of them in ``terrazzo.zoo``.

Each entry gives a torch module, a function making its example inputs at a batch/sequence
size, the ONNX input/output names and the dynamic axes an exporter would declare (batch and
sequence, as optimum and ``torch.onnx.export(dynamic_axes=...)`` produce). ``export_onnx``
writes the ONNX file (TorchScript exporter, opset 17); the int8 models are made from the float
ONNX file by onnxruntime's own quantizer (QDQ and QOperator formats), the fp16 model by
``.half()`` before export, and the large one is written directly with an external-data
initializer over protobuf's 2 GB limit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPSET = 17


@dataclass
class SuiteModel:
    """One held-out architecture: how to build it and what its ONNX signature is."""

    name: str
    family: str
    build: Callable[[], Any]  # → torch module (eval mode, seeded)
    inputs: Callable[[int], dict[str, Any]]  # size (batch or seq) → named torch tensors
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    varies: str = "batch"  # which size 1/3/8 changes: "batch" or "seq"
    derive: str = ""  # "qdq" / "qoperator": quantized from the float model of ``base``
    base: str = ""
    torch_export: bool = True
    slow: bool = False
    notes: list[str] = field(default_factory=list)


def _se_cnn() -> Any:
    import torch
    from torch import nn

    class SE(nn.Module):
        def __init__(self, c: int, r: int = 4) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

        def forward(self, x: Any) -> Any:
            s = x.mean((2, 3), keepdim=True)
            return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))

    class MBConv(nn.Module):
        """Inverted residual: 1×1 expand, 3×3 depthwise, squeeze-excite, 1×1 project."""

        def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
            super().__init__()
            mid = cin * expand
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.Hardswish(),
                nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
                nn.Hardswish(), SE(mid), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
            )  # fmt: skip
            self.res = stride == 1 and cin == cout

        def forward(self, x: Any) -> Any:
            y = self.body(x)
            return x + y if self.res else y

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
        MBConv(16, 16, 1), MBConv(16, 24, 2), MBConv(24, 24, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10),
    )  # fmt: skip
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _image(n: int, c: int = 3, hw: int = 32) -> dict[str, Any]:
    import torch

    return {"pixel_values": torch.randn(n, c, hw, hw)}


class _HF:
    """Wrap a transformers model: named tensor inputs → a tuple of named outputs."""

    @staticmethod
    def wrap(inner: Any, outputs: tuple[str, ...], ones_mask: bool = False, **fixed: Any) -> Any:
        """``ones_mask``: pass an all-ones attention mask (without one, transformers runs
        ``aten::diff`` for packed-sequence detection, which the ONNX exporter lacks)."""
        from torch import nn

        class Wrapped(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x0: Any, x1: Any = None) -> Any:
                args = (x0,) if x1 is None else (x0, x1)
                names = self.input_names
                extra = dict(fixed)
                if ones_mask:
                    import torch

                    extra["attention_mask"] = torch.ones_like(x0)
                out = self.inner(**dict(zip(names, args, strict=True)), **extra)
                got = tuple(getattr(out, o) for o in outputs)
                return got[0] if len(got) == 1 else got

        w = Wrapped()
        w.__class__.__name__ = type(inner).__name__
        return w


def _vit() -> Any:
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=128, attn_implementation="eager")  # fmt: skip
    m = _HF.wrap(ViTModel(cfg, add_pooling_layer=False), ("last_hidden_state",))
    m.input_names = ["pixel_values"]
    return m


def _ids(seq: int, batch: int = 2, vocab: int = 256) -> Any:
    import torch

    return torch.randint(0, vocab, (batch, seq), dtype=torch.int64)


def _encoder(kind: str) -> Callable[[], Any]:
    def build() -> Any:
        import transformers as tf

        common = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=128, max_position_embeddings=64,
                      attn_implementation="eager")  # fmt: skip
        if kind == "bert":
            inner = tf.BertModel(tf.BertConfig(**common), add_pooling_layer=False)
        else:
            inner = tf.RobertaModel(
                tf.RobertaConfig(**{**common, "max_position_embeddings": 70}),
                add_pooling_layer=False,
            )
        m = _HF.wrap(inner, ("last_hidden_state",))
        m.input_names = ["input_ids", "attention_mask"]
        return m

    return build


def _enc_inputs(seq: int) -> dict[str, Any]:
    import torch

    ids = _ids(seq)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                     attn_implementation="eager")  # fmt: skip
    m = _HF.wrap(GPT2LMHeadModel(cfg), ("logits",), ones_mask=True, use_cache=False)
    m.input_names = ["input_ids"]
    return m


def _t5() -> Any:
    from transformers import T5Config, T5Model

    cfg = T5Config(vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                   num_decoder_layers=2, num_heads=4, attn_implementation="eager")  # fmt: skip
    m = _HF.wrap(T5Model(cfg), ("last_hidden_state",), use_cache=False)
    m.input_names = ["input_ids", "decoder_input_ids"]
    return m


def _whisper_enc() -> Any:
    from transformers import WhisperConfig, WhisperModel

    cfg = WhisperConfig(vocab_size=256, num_mel_bins=16, d_model=64, encoder_layers=2,
                        encoder_attention_heads=4, decoder_layers=1, decoder_attention_heads=4,
                        encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=32,
                        max_target_positions=32, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, decoder_start_token_id=1,
                        attn_implementation="eager")  # fmt: skip
    m = _HF.wrap(WhisperModel(cfg).get_encoder(), ("last_hidden_state",))
    m.input_names = ["input_features"]
    return m


def _rnn(kind: str) -> Callable[[], Any]:
    def build() -> Any:
        from torch import nn

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                cls = nn.LSTM if kind == "lstm" else nn.GRU
                self.rnn = cls(16, 32, num_layers=2, batch_first=True,
                               bidirectional=kind == "gru")  # fmt: skip
                self.head = nn.Linear(32 * (2 if kind == "gru" else 1), 8)

            def forward(self, x: Any) -> Any:
                y, _ = self.rnn(x)
                return self.head(y)

        return Net()

    return build


def _multi_io() -> Any:
    import torch
    from torch import nn

    class Net(nn.Module):
        """An image and a feature vector in; class logits and an embedding out."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())  # fmt: skip
            self.vec = nn.Linear(12, 8)
            self.cls, self.emb = nn.Linear(16, 5), nn.Linear(16, 6)

        def forward(self, image: Any, features: Any) -> Any:
            h = torch.cat([self.conv(image), torch.tanh(self.vec(features))], dim=1)
            e = self.emb(h)
            return self.cls(h), e / (e.norm(dim=1, keepdim=True) + 1e-6)

    return Net()


def _fp16_cnn() -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1, groups=4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).half()  # fmt: skip


def _batch_axes(*names: str) -> dict[str, dict[int, str]]:
    return {n: {0: "batch"} for n in names}


def _seq_axes(*names: str) -> dict[str, dict[int, str]]:
    return {n: {0: "batch", 1: "seq"} for n in names}


def models() -> list[SuiteModel]:
    """The suite, in table order."""
    import torch

    return [
        SuiteModel("se_cnn", "CNN (depthwise + squeeze-excite, hardswish)", _se_cnn,
                   lambda n: {"pixel_values": torch.randn(n, 3, 32, 32)}, ("logits",),
                   _batch_axes("pixel_values", "logits")),
        SuiteModel("vit", "vision transformer (ViT)", _vit, lambda n: _image(n),
                   ("last_hidden_state",), _batch_axes("pixel_values", "last_hidden_state")),
        SuiteModel("bert", "encoder-only (BERT)", _encoder("bert"), _enc_inputs,
                   ("last_hidden_state",),
                   _seq_axes("input_ids", "attention_mask", "last_hidden_state"), "seq"),
        SuiteModel("roberta", "encoder-only (RoBERTa)", _encoder("roberta"), _enc_inputs,
                   ("last_hidden_state",),
                   _seq_axes("input_ids", "attention_mask", "last_hidden_state"), "seq"),
        SuiteModel("gpt2", "decoder-only (GPT-2)", _gpt2, lambda n: {"input_ids": _ids(n)},
                   ("logits",), _seq_axes("input_ids", "logits"), "seq"),
        SuiteModel("t5", "encoder-decoder (T5)", _t5,
                   lambda n: {"input_ids": _ids(n), "decoder_input_ids": _ids(n)},
                   ("last_hidden_state",),
                   _seq_axes("input_ids", "decoder_input_ids", "last_hidden_state"), "seq"),
        SuiteModel("whisper_enc", "audio encoder (Whisper encoder)", _whisper_enc,
                   lambda n: {"input_features": torch.randn(n, 16, 64)}, ("last_hidden_state",),
                   _batch_axes("input_features", "last_hidden_state")),
        SuiteModel("lstm", "RNN (2-layer LSTM)", _rnn("lstm"),
                   lambda n: {"x": torch.randn(n, 5, 16)}, ("y",), _seq_axes("x", "y")),
        SuiteModel("gru", "RNN (2-layer bidirectional GRU)", _rnn("gru"),
                   lambda n: {"x": torch.randn(n, 5, 16)}, ("y",), _seq_axes("x", "y")),
        SuiteModel("multi_io", "multi-input / multi-output", _multi_io,
                   lambda n: {"image": torch.randn(n, 3, 16, 16), "features": torch.randn(n, 12)},
                   ("logits", "embedding"),
                   _batch_axes("image", "features", "logits", "embedding")),
        SuiteModel("fp16_cnn", "fp16 CNN", _fp16_cnn,
                   lambda n: {"x": torch.randn(n, 3, 16, 16).half()}, ("y",),
                   _batch_axes("x", "y")),
        SuiteModel("int8_qdq", "int8 QDQ (onnxruntime quantize_static)", _se_cnn,
                   lambda n: {"pixel_values": torch.randn(n, 3, 32, 32)}, ("logits",),
                   _batch_axes("pixel_values", "logits"), derive="qdq", base="se_cnn",
                   torch_export=False),
        SuiteModel("int8_qoperator", "int8 QOperator (QLinearConv/QLinearMatMul)", _se_cnn,
                   lambda n: {"pixel_values": torch.randn(n, 3, 32, 32)}, ("logits",),
                   _batch_axes("pixel_values", "logits"), derive="qoperator", base="se_cnn",
                   torch_export=False),
        SuiteModel("big_external", "> 2 GB, external data (embedding 2.1 GB)", lambda: None,
                   lambda n: {"ids": _ids(4, batch=n, vocab=1000)}, ("y",),
                   _batch_axes("ids", "y"), torch_export=False, slow=True),
    ]  # fmt: skip


def export_onnx(m: SuiteModel, folder: Path, seed: int = 0) -> Path:
    """Write ``m``'s ONNX file into ``folder`` (cached) and return its path."""
    import onnx
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{m.name}.onnx"
    if path.is_file():
        return path
    if m.name == "big_external":
        return _big_external(path)
    if m.derive:
        base = next(b for b in models() if b.name == m.base)
        return _quantize(export_onnx(base, folder, seed), base, path, m.derive, seed)
    torch.manual_seed(seed)
    module = m.build().eval()
    example = m.inputs(3)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.onnx")
    with torch.no_grad():
        torch.onnx.export(module, tuple(example.values()), str(tmp),
                          input_names=list(example), output_names=list(m.outputs),
                          dynamic_axes=m.dynamic_axes, opset_version=OPSET, dynamo=False)  # fmt: skip
    proto = onnx.load(str(tmp))
    proto.ir_version = 9
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path


def _quantize(src: Path, base: SuiteModel, path: Path, fmt: str, seed: int) -> Path:
    """int8 by onnxruntime's static quantizer (per-tensor, calibrated on 8 seeded batches)."""
    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    torch.manual_seed(seed + 1)
    batches = [{k: v.numpy() for k, v in base.inputs(1).items()} for _ in range(8)]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> Any:
            return next(self.it, None)

    quantize_static(
        str(src), str(path), Reader(),
        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    return path


def _big_external(path: Path) -> Path:
    """ids [batch, 4] → Gather from a [540M/1024, 1024] float32 table (2.16 GB, external
    data) → ReduceSum over the ids: the file is small, its data file is over 2 GB."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    rows, cols = 527_344, 1024  # 2.16e9 bytes
    data = path.with_suffix(".data")
    table = np.lib.format.open_memmap(str(data) + ".npy", mode="w+", dtype=np.float32,
                                      shape=(rows, cols))  # fmt: skip
    rng = np.random.default_rng(0)
    for r in range(0, rows, 65536):
        table[r : r + 65536] = rng.standard_normal((min(65536, rows - r), cols), np.float32)
    table.flush()
    offset = table.offset
    del table
    os.replace(str(data) + ".npy", data)
    init = TensorProto()
    init.name, init.data_type = "table", TensorProto.FLOAT
    init.dims.extend([rows, cols])
    init.data_location = TensorProto.EXTERNAL
    for k, v in (("location", data.name), ("offset", str(offset)),
                 ("length", str(rows * cols * 4))):  # fmt: skip
        e = init.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rowsv"]),
         helper.make_node("ReduceSum", ["rowsv", "axes"], ["y"], keepdims=0)],
        "big", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", cols])],
        [init, helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return path
