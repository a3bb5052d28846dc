"""The four held-out shapes of issue 14, built from code with seeded weights (no downloads).

Shared by the schedule benchmarks (``tuning_defaults.py``): ``export(name, folder)`` writes
``<folder>/<name>.onnx`` (IR 9, opset 17, static shapes, via ``terrazzo.zoo.export_module``)
and returns its path with the example inputs as NumPy arrays.

- ``convnet``: 1×3×32×32, conv 3→16 + ReLU, conv 16→32 stride 2 + ReLU, depthwise 3×3,
  global average pool, linear 32→10.
- ``attention``: 1×16×64, one pre-norm transformer block (4 heads, GELU FFN 64→256→64).
- ``bert256``: BertModel d=256, 4 layers, 4 heads, FFN 1024, seq 128.
- ``rescnn``: 1×3×112×112, stem conv 3→32 stride 2, two residual blocks at 32 channels,
  a strided block to 64 channels with a 1×1 shortcut, pool, linear 64→10.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

NAMES = ("convnet", "attention", "bert256", "rescnn")


def _convnet() -> tuple[Any, tuple[Any, ...], tuple[str, ...]]:
    import torch
    from torch import nn

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, 1, 1, groups=32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    return model, (torch.randn(1, 3, 32, 32),), ("x",)


def _attention() -> tuple[Any, tuple[Any, ...], tuple[str, ...]]:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, d: int = 64, heads: int = 4) -> None:
            super().__init__()
            self.heads = heads
            self.ln1 = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.ln2 = nn.LayerNorm(d)
            self.ff1 = nn.Linear(d, 4 * d)
            self.ff2 = nn.Linear(4 * d, d)

        def forward(self, x: Any) -> Any:
            b, s, d = x.shape
            h = self.heads
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
            q = q.reshape(b, s, h, d // h).transpose(1, 2)
            k = k.reshape(b, s, h, d // h).transpose(1, 2)
            v = v.reshape(b, s, h, d // h).transpose(1, 2)
            att = torch.softmax(q @ k.transpose(-1, -2) / (d // h) ** 0.5, dim=-1)
            y = (att @ v).transpose(1, 2).reshape(b, s, d)
            x = x + self.proj(y)
            return x + self.ff2(nn.functional.gelu(self.ff1(self.ln2(x))))

    return Block(), (torch.randn(1, 16, 64),), ("x",)


def _bert256() -> tuple[Any, tuple[Any, ...], tuple[str, ...]]:
    import torch
    from transformers import BertConfig, BertModel

    from terrazzo.zoo import _hf

    cfg = BertConfig(  # type: ignore[call-arg]
        vocab_size=1024,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=128,
        attn_implementation="eager",
    )
    model = _hf(BertModel(cfg, add_pooling_layer=False), "last_hidden_state")
    model.explicit_mask = True
    return model, (torch.randint(0, 1024, (1, 128), dtype=torch.int64),), ("input_ids",)


def _rescnn() -> tuple[Any, tuple[Any, ...], tuple[str, ...]]:
    import torch
    from torch import nn

    class Res(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.short = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x: Any) -> Any:
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(y)) + self.short(x))

    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        Res(32, 32, 1),
        Res(32, 32, 1),
        Res(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    for m in model.modules():  # non-trivial batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model, (torch.randn(1, 3, 112, 112),), ("x",)


_BUILDERS = {"convnet": _convnet, "attention": _attention, "bert256": _bert256, "rescnn": _rescnn}


def export(name: str, folder: str | os.PathLike[str], seed: int = 0) -> tuple[Path, dict[str, Any]]:
    """ONNX file of a held-out model (cached in ``folder``) and its example inputs (NumPy)."""
    import torch

    from terrazzo.zoo import export_module

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(seed)
    model, inputs, names = _BUILDERS[name]()
    model.eval()
    path = Path(folder) / f"{name}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        export_module(model, inputs, names, path)
    return path, {n: t.numpy() for n, t in zip(names, inputs, strict=True)}
