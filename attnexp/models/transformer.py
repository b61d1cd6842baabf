"""A pre-norm transformer classifier whose token-mixing slot holds the attention under test.

Placement by kind:
- MIXER and GATE fill the token-mixing slot of every block: ``x = x + slot(norm(x))``.
- IDENTITY leaves MLP-only blocks (the no-attention baseline).
- POOL replaces the mean readout with attention pooling; the blocks stay MLP-only, so the pooling
  is the model's only attention (one variable changes per ablation cell).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnexp.data.shape import DataShape
from attnexp.models.common import (
    AttentionFactory,
    AttentionSlot,
    Backbone,
    InputEmbedding,
    Readout,
    block_slot,
    readout_slot,
)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )


class Block(nn.Module):
    """Pre-norm residual block: optional token-mixing slot, then MLP."""

    def __init__(self, dim: int, mlp_hidden: int, dropout: float, slot: AttentionSlot | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim) if slot is not None else None
        self.slot = slot
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.slot is not None:
            x = x + self.drop(self.slot(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class Transformer(Backbone):
    def __init__(
        self,
        attention: AttentionFactory,
        shape: DataShape,
        dim: int = 64,
        depth: int = 2,
        mlp_ratio: float = 2.0,
        patch_size: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(shape)
        self.embed = InputEmbedding(shape, dim, patch_size)
        tokens = self.embed.grid
        self.pos = nn.Parameter(torch.zeros(1, *tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        hidden = int(dim * mlp_ratio)
        self.blocks = nn.Sequential(
            *(Block(dim, hidden, dropout, block_slot(attention, dim, tokens)) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim)
        self.readout = Readout(dim, shape.num_classes, readout_slot(attention, dim, tokens))

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x) + self.pos
        return self.readout(self.norm(self.blocks(x)))
