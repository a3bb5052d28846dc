"""Models for the GPU check that nobody in the project wrote: transformers architectures with
random weights (ViT, T5 encoder, Whisper encoder), exported to ONNX the way the zoo is.

Used by ``benchmarks/gpu_prepare.py``; each builder returns ``(module, example_inputs,
input_names)``. Nothing is downloaded: configs are built here, weights are seeded random.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _last_hidden(inner: Any, arg: str, mask: bool = False) -> Any:
    """``inner(arg=x).last_hidden_state`` as a one-input, one-output module (with an all-ones
    ``attention_mask`` when ``mask``: the TorchScript exporter cannot trace the mask-less path
    of some encoders)."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            extra = {"attention_mask": torch.ones_like(x)} if mask else {}
            return self.inner(**{arg: x}, **extra).last_hidden_state

    wrapper = LastHidden()
    wrapper.__class__.__name__ = type(inner).__name__
    return wrapper


def _vit() -> tuple[Any, tuple[Any, ...], tuple[str, ...]]:
    import torch
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        attn_implementation="eager",
    )
    model = _last_hidden(ViTModel(cfg, add_pooling_layer=False), "pixel_values")
    return model, (torch.randn(1, 3, 32, 32),), ("pixel_values",)


def _t5_encoder() -> tuple[Any, tuple[Any, ...], tuple[str, ...]]:
    import torch
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=256,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        attn_implementation="eager",
    )
    model = _last_hidden(T5EncoderModel(cfg), "input_ids", mask=True)
    return model, (torch.randint(0, 256, (1, 16)),), ("input_ids",)


def _whisper_encoder() -> tuple[Any, tuple[Any, ...], tuple[str, ...]]:
    import torch
    from transformers import WhisperConfig, WhisperModel

    cfg = WhisperConfig(
        vocab_size=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        num_mel_bins=16,
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        decoder_layers=1,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=32,
        max_target_positions=32,
        attn_implementation="eager",
    )
    model = _last_hidden(WhisperModel(cfg).get_encoder(), "input_features")
    return model, (torch.randn(1, 16, 64),), ("input_features",)


HELD_OUT: dict[str, Callable[[], tuple[Any, tuple[Any, ...], tuple[str, ...]]]] = {
    "vit": _vit,
    "t5-encoder": _t5_encoder,
    "whisper-encoder": _whisper_encoder,
}


def export(
    name: str, directory: str | os.PathLike[str], seed: int = 0
) -> tuple[Path, dict[str, Any]]:
    """Export a held-out model to ``<directory>/<name>.onnx``; returns (path, numpy inputs)."""
    import torch

    from terrazzo.zoo import export_module

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(seed)
    model, inputs, names = HELD_OUT[name]()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    path = export_module(model.eval(), inputs, names, out / f"{name}.onnx")
    return path, {n: t.numpy() for n, t in zip(names, inputs, strict=True)}
