"""A ResNet-style classifier (1-D convs for sequences, 2-D for images) with an attention slot.

The slot sits inside each residual block after its convolutions and before the residual add, where
SE-ResNet and CBAM put their gates; a MIXER there acts as in BoTNet. The grid keeps its size through
the network (these inputs are small), so every slot sees the input grid. IDENTITY drops the slot;
POOL replaces the global-average readout with attention pooling (blocks without slots).
``dim`` is the channels of every convolution: both backbones call their width ``dim``.
"""

from __future__ import annotations

from torch import Tensor, nn

from attnexp.attention.base import channels_first, channels_last
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


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, then the slot, then the residual add and ReLU (channels-first)."""

    def __init__(self, dim: int, ndim: int, kernel_size: int, slot: AttentionSlot | None):
        super().__init__()
        conv = nn.Conv1d if ndim == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if ndim == 1 else nn.BatchNorm2d
        pad = kernel_size // 2
        self.body = nn.Sequential(
            conv(dim, dim, kernel_size, padding=pad, bias=False),
            norm(dim),
            nn.ReLU(inplace=True),
            conv(dim, dim, kernel_size, padding=pad, bias=False),
            norm(dim),
        )
        self.slot = slot
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        if self.slot is not None:
            out = self.slot(out)
        return self.act(x + out)


class CNN(Backbone):
    def __init__(
        self,
        attention: AttentionFactory,
        shape: DataShape,
        dim: int = 64,
        depth: int = 3,
        kernel_size: int = 3,
    ) -> None:
        super().__init__(shape)
        if kernel_size % 2 == 0:
            raise ValueError(f"backbone.kernel_size must be odd (same padding), got {kernel_size}")
        self.embed = InputEmbedding(shape, dim)
        grid = self.embed.grid
        ndim = len(grid)
        conv = nn.Conv1d if ndim == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if ndim == 1 else nn.BatchNorm2d
        self.stem = nn.Sequential(
            conv(dim, dim, kernel_size, padding=kernel_size // 2, bias=False),
            norm(dim),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(
            *(
                ResidualBlock(dim, ndim, kernel_size, block_slot(attention, dim, grid, True))
                for _ in range(depth)
            )
        )
        self.readout = Readout(dim, shape.num_classes, readout_slot(attention, dim, grid))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(channels_first(self.embed(x)))
        return self.readout(channels_last(self.blocks(x)))
