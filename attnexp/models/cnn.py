"""A ResNet-style classifier (1-D convs for sequences, 2-D for images) with an attention slot.

The slot sits inside each residual block after its convolutions and before the residual add, where
SE-ResNet and CBAM put their gates; a MIXER there acts as in BoTNet. The grid keeps its size through
the network (these inputs are small), so every slot sees the input grid. IDENTITY drops the slot;
POOL replaces the global-average readout with attention pooling (blocks without slots).
``dim`` is the channels of every convolution: both backbones call their width ``dim``.

As a language model (``shape.is_lm``) it is a causal 1-D ResNet: each conv sees only the current
and earlier positions (k - 1 zeros on the left), a LayerNorm over the channels at each position
replaces BatchNorm (whose batch mean in training would carry later positions back), the slots are
built ``causal=True``, and a per-position head predicts the next token. POOL is refused.

Padding (a mask, ``Backbone.padding_mask``): every convolution reads zeros at padded positions,
exactly what its own zero border gives, and BatchNorm's batch statistics are taken over real
positions only (``MaskedBatchNorm``, the same parameters and state-dict keys as BatchNorm), so
appended padding leaves the real positions unchanged in training as in eval.
"""

from __future__ import annotations

from torch import Tensor, nn

from attnexp.attention.base import channels_first, channels_last
from attnexp.attention.causal import causal_conv1d
from attnexp.attention.masking import MaskedBatchNorm
from attnexp.data.shape import DataShape
from attnexp.models.common import (
    AttentionFactory,
    AttentionSlot,
    Backbone,
    InputEmbedding,
    LMHead,
    Readout,
    block_slot,
    check_context,
    check_init,
    check_lm_keys,
    init_gpt,
    readout_slot,
)


class CausalConv1d(nn.Conv1d):
    """A 1-D conv whose output at position t sees inputs at t - k + 1 .. t: zeros on the left."""

    def forward(self, x: Tensor) -> Tensor:
        return causal_conv1d(x, self.weight, self.bias, self.groups)


class PositionNorm(nn.LayerNorm):
    """LayerNorm over the channels of each position of a channels-first ``(B, C, L)`` tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return channels_first(super().forward(channels_last(x)))


def conv_layer(dim: int, ndim: int, kernel_size: int, causal: bool) -> nn.Module:
    """A same-size conv over the grid; ``causal``: over the past only (1-D)."""
    if causal:
        return CausalConv1d(dim, dim, kernel_size, bias=False)
    conv = nn.Conv1d if ndim == 1 else nn.Conv2d
    return conv(dim, dim, kernel_size, padding=kernel_size // 2, bias=False)


def norm_layer(dim: int, causal: bool) -> nn.Module:
    """BatchNorm (over real positions); ``causal``: a per-position norm, which mixes no
    positions or samples."""
    return PositionNorm(dim) if causal else MaskedBatchNorm(dim)


def masked_layers(layers: nn.Sequential, x: Tensor, mask: Tensor | None) -> Tensor:
    """``layers`` on channels-first ``x`` with a padding ``mask`` ``(B, *grid)``: zeros at padding
    into every conv, the mask into every ``MaskedBatchNorm``."""
    for layer in layers:
        if isinstance(layer, MaskedBatchNorm):
            x = layer(x, mask)
            continue
        if mask is not None and isinstance(layer, nn.modules.conv._ConvNd):
            x = x.masked_fill(~mask.unsqueeze(1), 0)
        x = layer(x)
    return x


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, then the slot, then the residual add and ReLU (channels-first)."""

    def __init__(
        self,
        dim: int,
        ndim: int,
        kernel_size: int,
        slot: AttentionSlot | None,
        causal: bool = False,
    ):
        super().__init__()
        self.body = nn.Sequential(
            conv_layer(dim, ndim, kernel_size, causal),
            norm_layer(dim, causal),
            nn.ReLU(inplace=True),
            conv_layer(dim, ndim, kernel_size, causal),
            norm_layer(dim, causal),
        )
        self.slot = slot
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        out = masked_layers(self.body, x, mask)
        if self.slot is not None:
            out = self.slot(out, mask)
        return self.act(x + out)


class CNN(Backbone):
    def __init__(
        self,
        attention: AttentionFactory,
        shape: DataShape,
        dim: int = 64,
        depth: int = 3,
        kernel_size: int = 3,
        tie_weights: bool = False,
        init: str = "default",
    ) -> None:
        super().__init__(shape)
        check_init(init)
        if kernel_size % 2 == 0:
            raise ValueError(f"backbone.kernel_size must be odd (same padding), got {kernel_size}")
        check_lm_keys(shape, tie_weights)
        causal = shape.is_lm
        self.embed = InputEmbedding(shape, dim)
        grid = self.embed.grid
        ndim = len(grid)
        self.stem = nn.Sequential(
            conv_layer(dim, ndim, kernel_size, causal),
            norm_layer(dim, causal),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(
            *(
                ResidualBlock(
                    dim, ndim, kernel_size, block_slot(attention, dim, grid, True, causal, i), causal
                )
                for i in range(depth)
            )
        )
        if causal:
            tied = self.embed.embed if tie_weights else None
            self.readout = LMHead(dim, shape.vocab_size, tied)
        else:
            self.readout = Readout(dim, shape.num_classes, readout_slot(attention, dim, grid))
        if init == "gpt":  # the convs keep PyTorch's init: no residual projection is a Linear
            init_gpt(self, (), depth)

    def features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The last block's output, tokens-last ``(B, *grid, dim)``; ``forward`` reads out
        classes ``(B, num_classes)`` from them or, as a language model, logits ``(B, T, vocab)``.
        ``mask``: the padding mask (``Backbone.padding_mask``)."""
        if self.shape.is_lm:
            check_context(x, self.shape, learned_positions=False)
        mask = self.padding_mask(x, mask)
        x = masked_layers(self.stem, channels_first(self.embed(x)), mask)
        for block in self.blocks:
            x = block(x, mask)
        return channels_last(x)
