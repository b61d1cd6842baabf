"""The CIFAR ResNet of He et al. (2016, section 4.2) with an attention slot in every residual block.

Layout (``depth = 6n + 2``: ResNet-20/32/56/110 for n = 3/5/9/18): a 3x3 conv stem of ``dim``
channels, three stages of n basic blocks of widths ``dim``, ``2 dim``, ``4 dim`` (16/32/64 in the
paper), the first block of stages 2 and 3 halving the grid (stride 2), then global average pooling
and a linear classifier. Shortcuts are the paper's option A: the identity, and where a block
halves the grid and doubles the width, the input subsampled by 2 with the new channels zero (no
parameters), which gives ResNet-20 its 0.27M parameters (option B's 1x1 convs would add ~0.01M).
Convolutions are initialised as the paper does (He et al. 2015, ``kaiming_normal_``).

The slot sits where SE-ResNet (Hu et al.) and CBAM (Woo et al.) put their gates: on the residual
branch after the last BatchNorm, before the add; a MIXER there is BoTNet's placement of
self-attention. Each slot is built for its stage's grid and width (32x32x16, 16x16x32, 8x8x64 on
CIFAR). ``attention_stages`` lists the stages (0-based) that get slots, e.g. ``[2]``: the last one
only, as BoTNet. POOL replaces the global average pool; IDENTITY leaves plain blocks.

Images only, classification only: the CNN backbone (``attnexp.models.cnn``) covers sequences,
tokens and language models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from attnexp.attention.base import channels_first, channels_last
from attnexp.data.shape import DataShape
from attnexp.models.common import (
    AttentionFactory,
    AttentionSlot,
    Backbone,
    Readout,
    block_slot,
    readout_slot,
)
from attnexp.util.checks import check_positive

STAGES = 3


def check_image_classifier(shape: DataShape, backbone: str) -> None:
    """Refuse data the image backbones were not made for, naming the key."""
    if shape.input_type != "image" or shape.is_lm:
        raise ValueError(
            f"backbone={backbone} classifies images: it needs dataset.shape.input_type=image and "
            f"task=classification, got input_type={shape.input_type}, task={shape.task} (the cnn "
            "and transformer backbones take sequences, tokens and language models)"
        )


def refuse_mask(mask: Tensor | None, backbone: str) -> None:
    """Images have no padding: every pixel is real, so a padding mask is a caller's mistake."""
    if mask is not None:
        raise ValueError(
            f"backbone={backbone} reads images, whose every position is real: mask must be None"
        )


def blocks_per_stage(depth: int) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"backbone.depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110: n blocks in each "
            f"of 3 stages), got {depth!r}"
        )
    return (depth - 2) // 6


def check_stages(attention_stages: Sequence[int]) -> tuple[int, ...]:
    stages = tuple(attention_stages) if isinstance(attention_stages, Sequence) else None
    if (
        not stages
        or isinstance(attention_stages, str)
        or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < STAGES for s in stages)
        or len(set(stages)) != len(stages)
    ):
        raise ValueError(
            f"backbone.attention_stages must be a non-empty list of distinct stage indices in "
            f"0..{STAGES - 1} (e.g. [0, 1, 2]: every stage; [2]: the last only), got "
            f"{attention_stages!r}"
        )
    return stages


def conv3x3(in_dim: int, out_dim: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_dim, out_dim, 3, stride=stride, padding=1, bias=False)


class ShortcutA(nn.Module):
    """Option A: the input subsampled by ``stride`` and its channels zero-padded to ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = out_dim - in_dim, stride

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, then the slot, then the shortcut add and ReLU (channels-first)."""

    def __init__(self, in_dim: int, out_dim: int, stride: int, slot: AttentionSlot | None):
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(in_dim, out_dim, stride),
            nn.BatchNorm2d(out_dim),
            nn.ReLU(inplace=True),
            conv3x3(out_dim, out_dim),
            nn.BatchNorm2d(out_dim),
        )
        self.slot = slot
        self.shortcut = ShortcutA(in_dim, out_dim, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        if self.slot is not None:
            out = self.slot(out)
        return self.act(self.shortcut(x) + out)


class ResNet(Backbone):
    def __init__(
        self,
        attention: AttentionFactory,
        shape: DataShape,
        dim: int = 16,
        depth: int = 20,
        attention_stages: Sequence[int] = (0, 1, 2),
    ) -> None:
        super().__init__(shape)
        check_image_classifier(shape, "resnet")
        check_positive("backbone.dim", dim)
        n = blocks_per_stage(depth)
        stages = check_stages(attention_stages)
        self.stem = nn.Sequential(
            nn.Conv2d(shape.in_channels, dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )
        blocks, width, grid = [], dim, shape.grid
        self.stage_grids: list[tuple[int, ...]] = []
        for stage in range(STAGES):
            out = dim * 2**stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                grid = tuple(-(-g // stride) for g in grid)  # a 3x3 conv, padding 1: ceil(g / s)
                index = len(blocks)  # the block's 0-based index in the network
                slot = block_slot(attention, out, grid, True, layer=index) if stage in stages else None
                blocks.append(BasicBlock(width, out, stride, slot))
                width = out
            self.stage_grids.append(grid)
        self.blocks = nn.Sequential(*blocks)
        # The backbone's own convs (the slots' modules keep their init), as torchvision's ResNet.
        for conv in (self.stem[0], *(b.body[i] for b in blocks for i in (0, 3))):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        self.readout = Readout(width, shape.num_classes, readout_slot(attention, width, grid))

    def features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The last block's output, tokens-last ``(B, H/4, W/4, 4 dim)``, from ``(B, H, W, C)``."""
        refuse_mask(mask, "resnet")
        return channels_last(self.blocks(self.stem(channels_first(x))))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.readout(self.features(x, mask))
