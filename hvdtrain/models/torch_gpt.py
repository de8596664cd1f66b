"""The GPT-style byte-level language model in PyTorch: a small decoder-only transformer, trained by
``torch_examples/gpt.py`` and timed by ``hvdtrain bench``. Its Keras twin is ``keras_gpt``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..datasets.text import VOCAB_SIZE


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a 4x MLP, each with a residual."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv, self.proj = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = (
            self.qkv(self.norm1(x))
            .view(batch, length, 3, self.heads, width // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        # each byte sees only its past
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Byte and position embeddings, ``layers`` blocks,
    a final norm and a linear head to 256 logits."""

    def __init__(self, block: int, d_model: int, layers: int, heads: int):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"--d-model ({d_model}) must be a multiple of --heads ({heads})")
        self.tokens, self.positions = (
            nn.Embedding(VOCAB_SIZE, d_model),
            nn.Embedding(block, d_model),
        )
        self.blocks = nn.Sequential(*(Block(d_model, heads) for _ in range(layers)))
        self.norm, self.head = nn.LayerNorm(d_model), nn.Linear(d_model, VOCAB_SIZE)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long()
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.head(self.norm(self.blocks(self.tokens(tokens) + self.positions(positions))))


def next_byte_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every position of every window: nats per byte (per token for BPE)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten().long())
