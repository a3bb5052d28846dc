"""Small random-weight models for the voice-agent example (speech-to-text, text-to-speech)."""

from __future__ import annotations

import torch
from torch import nn


class SpeechToText(nn.Module):
    """Audio frames [1, 1600] → token logits [1, 16, 256] (byte-level vocabulary)."""

    def __init__(self) -> None:
        super().__init__()
        self.frame = nn.Linear(100, 64)
        self.head = nn.Linear(64, 256)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        frames = audio.reshape(audio.shape[0], 16, 100)  # a batch of clips is a batch of rows
        return self.head(torch.relu(self.frame(frames)))


class TextToSpeech(nn.Module):
    """Tokens [1, 16] → audio [1, 1600]."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, 64)
        self.out = nn.Linear(64, 100)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.out(self.embed(tokens))).reshape(1, 1600)


def speech_to_text() -> nn.Module:
    torch.manual_seed(0)
    return SpeechToText().eval()


def text_to_speech() -> nn.Module:
    torch.manual_seed(1)
    return TextToSpeech().eval()


class ChunkedTextToSpeech(nn.Module):
    """Tokens [1, 16] → audio [1, 1600] with a vocoder-sized hidden layer (the streamed TTS of voice_program.yaml)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, 256)
        self.hidden = nn.Linear(256, 2048)
        self.vocoder = nn.Linear(2048, 2048)
        self.out = nn.Linear(2048, 100)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hidden(self.embed(tokens)))
        h = torch.relu(self.vocoder(h))
        return torch.tanh(self.out(h)).reshape(tokens.shape[0], 1600)


def chunked_text_to_speech() -> nn.Module:
    torch.manual_seed(2)
    return ChunkedTextToSpeech().eval()
