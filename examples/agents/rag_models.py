"""The RAG example's embedder: hashed byte bigrams (a lexical embedding that needs no training).

Tokens ``[1, 96]`` (UTF-8 bytes, 0-padded) → embedding ``[1, 128]``: each adjacent byte pair of
the text adds 1 to bucket ``(31·a + b) mod 128``. Texts that share words share bigrams, so
cosine similarity over these vectors retrieves the passage that shares the query's words.
"""

from __future__ import annotations

import torch
from torch import nn

DIM = 128


class BigramEmbedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("eye", torch.eye(DIM))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.to(torch.int64)
        # lower-case ASCII letters so "Who" and "who" share bigrams
        t = torch.where((t >= 65) & (t <= 90), t + 32, t)
        a, b = t[:, :-1], t[:, 1:]
        idx = torch.remainder(a * 31 + b, DIM)
        keep = ((a > 0) & (b > 0)).to(torch.float32).unsqueeze(-1)
        return (self.eye[idx] * keep).sum(dim=1)


def embedder() -> nn.Module:
    return BigramEmbedder().eval()
