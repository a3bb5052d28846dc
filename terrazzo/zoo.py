"""A small model zoo (no downloads) that feeds the frontends in tests, demos and benchmarks.

Every model is built from code or a ``transformers`` config with seeded random weights and
takes one static-shaped input. ``export_onnx`` writes an ONNX file (IR version 9, opset 17,
static shapes) once per folder and reuses it afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terrazzo.errors import FrontendError

ONNX_IR_VERSION = 9
ONNX_OPSET = 17
SEQ_LEN = 16
VOCAB = 256


@dataclass(frozen=True, slots=True)
class ZooSpec:
    """One zoo entry: a builder returning ``(module, example_inputs)`` and its input name."""

    name: str
    description: str
    build: Callable[[], tuple[Any, tuple[Any, ...]]]
    input_names: tuple[str, ...]
    large: bool = False


def _mlp() -> tuple[Any, tuple[Any, ...]]:
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    return model, (torch.randn(8, 256),)


def _cnn() -> tuple[Any, tuple[Any, ...]]:
    import torch

    return _resnet18(num_classes=10), (torch.randn(1, 3, 64, 64),)


def _resnet18(num_classes: int) -> Any:
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.down = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x: Any) -> Any:
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(y + self.down(x))

    class ResNet18(nn.Module):
        """ResNet-18 (He et al. 2016): stem, four stages of two basic blocks, pool, fc."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
            widths = (64, 128, 256, 512)
            blocks: list[nn.Module] = []
            cin = 64
            for i, w in enumerate(widths):
                blocks += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
                cin = w
            self.blocks = nn.Sequential(*blocks)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x: Any) -> Any:
            y = self.pool(self.blocks(self.stem(x)))
            return self.fc(y.flatten(1))

    model = ResNet18()
    # Non-trivial batch-norm statistics so the folded inference form is actually exercised.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)  # type: ignore[union-attr]
            m.running_var.uniform_(0.5, 1.5)  # type: ignore[union-attr]
    return model


def _hf(model: Any, output: str) -> Any:
    import torch
    from torch import nn

    class HFModel(nn.Module):
        """input_ids → one tensor (``last_hidden_state`` or ``logits``), no KV cache.

        With ``explicit_mask`` the model gets an all-ones attention mask: the TorchScript ONNX
        exporter cannot export the ``aten::diff`` that transformers' packed-sequence
        detection runs when no mask is given. The outputs are the same either way.
        """

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner
            self.explicit_mask = False

        def forward(self, input_ids: Any) -> Any:
            if self.explicit_mask:
                mask = torch.ones_like(input_ids)
                out = self.inner(input_ids=input_ids, attention_mask=mask, use_cache=False)
            else:
                out = self.inner(input_ids=input_ids, use_cache=False)
            return getattr(out, output)

    wrapper = HFModel(model)
    wrapper.__class__.__name__ = type(model).__name__
    return wrapper


def _ids(seq: int = SEQ_LEN, vocab: int = VOCAB) -> tuple[Any, ...]:
    import torch

    return (torch.randint(0, vocab, (1, seq), dtype=torch.int64),)


def _bert(large: bool = False) -> tuple[Any, tuple[Any, ...]]:
    from transformers import BertConfig, BertModel

    if large:
        cfg = BertConfig(attn_implementation="eager")  # type: ignore[call-arg]  # bert-base: 12 layers, d=768, 12 heads
        return _hf(BertModel(cfg, add_pooling_layer=False), "last_hidden_state"), _ids(
            128, cfg.vocab_size
        )
    cfg = BertConfig(  # type: ignore[call-arg]
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return _hf(BertModel(cfg, add_pooling_layer=False), "last_hidden_state"), _ids()


def _gpt2() -> tuple[Any, tuple[Any, ...]]:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(  # type: ignore[call-arg]
        vocab_size=VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    return _hf(GPT2LMHeadModel(cfg), "logits"), _ids()


def _llama() -> tuple[Any, tuple[Any, ...]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(  # type: ignore[call-arg]
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        attn_implementation="eager",
    )
    return _hf(LlamaForCausalLM(cfg), "logits"), _ids()


_SPECS: dict[str, ZooSpec] = {
    s.name: s
    for s in (
        ZooSpec("mlp", "MLP x[8,256] → 512 → 10", _mlp, ("x",)),
        ZooSpec("cnn", "ResNet-18 architecture, input 1×3×64×64, 10 classes", _cnn, ("x",)),
        ZooSpec("bert", "BertModel, 2 layers, d=64, seq 16", _bert, ("input_ids",)),
        ZooSpec("gpt2", "GPT2LMHeadModel, 2 layers, d=64, seq 16", _gpt2, ("input_ids",)),
        ZooSpec(
            "llama", "LlamaForCausalLM, 2 layers, d=64, GQA 4/2, seq 16", _llama, ("input_ids",)
        ),
        ZooSpec(
            "bert-base",
            "BertModel bert-base size (12 layers, d=768), seq 128; compile-time benchmarks only",
            lambda: _bert(large=True),
            ("input_ids",),
            large=True,
        ),
    )
}


def names(include_large: bool = False) -> list[str]:
    """Names of the zoo models (``bert-base`` only with ``include_large``)."""
    return [n for n, s in _SPECS.items() if include_large or not s.large]


def spec(name: str) -> ZooSpec:
    """The zoo entry called ``name``; FrontendError listing the choices otherwise."""
    if name not in _SPECS:
        raise FrontendError(f"unknown zoo model {name!r}; expected one of {', '.join(_SPECS)}")
    return _SPECS[name]


def build_torch(name: str, seed: int = 0) -> tuple[Any, tuple[Any, ...]]:
    """Build a zoo model with seeded random weights.

    Args:
        name: one of ``names(include_large=True)``.
        seed: torch RNG seed for weights and example inputs.

    Returns:
        ``(module in eval mode, example_inputs)``.
    """
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    s = spec(name)
    torch.manual_seed(seed)
    model, inputs = s.build()
    return model.eval(), inputs


def export_onnx(name: str, directory: str | os.PathLike[str], seed: int = 0) -> Path:
    """Export a zoo model to ``<directory>/<name>.onnx`` (IR 9, opset 17, static shapes), cached.

    Args:
        name: zoo model name.
        directory: output folder (created if needed); an existing export is reused.
        seed: weight seed (the same seed gives the same file).

    Returns:
        Path of the ONNX file.
    """
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.onnx"
    if path.is_file():
        return path
    s = spec(name)
    model, inputs = build_torch(name, seed)
    if hasattr(model, "explicit_mask"):
        model.explicit_mask = True
    export_module(model, inputs, s.input_names, path)
    return path


def export_module(
    model: Any, inputs: tuple[Any, ...], input_names: Sequence[str], path: str | os.PathLike[str]
) -> Path:
    """Export a torch module to ONNX as the zoo does (IR 9, opset 17, static shapes, one output
    called ``output``), written atomically to ``path``."""
    import onnx
    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.onnx")
    with torch.no_grad():
        torch.onnx.export(
            model,
            inputs,
            str(tmp),
            input_names=list(input_names),
            output_names=["output"],
            opset_version=ONNX_OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    proto = onnx.load(str(tmp))
    proto.ir_version = ONNX_IR_VERSION
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path


def example_inputs_numpy(name: str, seed: int = 0) -> dict[str, Any]:
    """The example inputs of a zoo model as NumPy arrays, keyed by input name."""
    _, inputs = build_torch(name, seed)
    return {n: t.numpy() for n, t in zip(spec(name).input_names, inputs, strict=True)}


__all__ = [
    "ZooSpec",
    "build_torch",
    "example_inputs_numpy",
    "export_module",
    "export_onnx",
    "names",
    "spec",
]
