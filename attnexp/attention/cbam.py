"""``cbam``: Convolutional Block Attention Module (Woo et al., 2018, "CBAM: Convolutional Block
Attention Module"): a channel gate, then a spatial gate, no residual inside the module."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from attnexp.attention.base import (
    AttentionModule,
    Kind,
    WeightKind,
    channels_first,
    grid_conv,
    make_divisible,
)
from attnexp.attention.causal import causal_conv1d, running_max, running_mean
from attnexp.attention.masking import (
    MaskedBatchNorm,
    flat_mask,
    masked_amax,
    masked_mean,
    zero_padding,
)
from attnexp.util.checks import check_positive, check_ratio


class CBAM(AttentionModule):
    """Channel gate ``sigmoid(MLP(mean_grid x) + MLP(max_grid x))`` with one shared bias-free MLP
    of width ``make_divisible(rd_ratio * dim, 8)``; then spatial gate
    ``sigmoid(BN(conv_k([mean_C x, max_C x])))``, a k x k conv on images (``grid_ndim=2``) and a
    length-k conv on sequences (``grid_ndim=1``): ``spatial_weight`` is ``(1, 2, *[k] * grid_ndim)``.

    Causal (``causal=True``, sequences only): position t's channel gate comes from the running
    mean and running max over positions ``<= t`` (one gate vector per position), and the spatial
    conv is causal (``k - 1`` zeros on the left). There is no norm on the spatial logits then but
    a conv bias (``spatial_bias``): BatchNorm in training mode mixes positions and samples through
    its batch statistics (the future leaks into the past), and a per-position norm of a one-channel
    map is identically zero; a learned scale and shift, all BatchNorm adds at inference, is what
    remains, and the scale is already the conv weight's.

    ``weights`` (with ``return_weights=True``): ``{"channel": (B, C), "spatial": (B, *grid)}``;
    causal: ``channel`` is the gate of the last position, which has seen the whole sequence.

    A padding mask leaves padded positions out of the channel statistics (and the spatial norm's
    batch statistics in training); the spatial conv reads zeros there, as at its border.
    """

    kind = Kind.GATE
    weight_kinds = {"channel": WeightKind.CHANNEL_GATE, "spatial": WeightKind.SPATIAL_GATE}

    def __init__(
        self,
        dim: int,
        grid_ndim: int = 1,
        causal: bool = False,
        rd_ratio: float = 1 / 16,
        kernel_size: int = 7,
    ) -> None:
        super().__init__(dim, grid_ndim, causal)
        check_ratio("rd_ratio", rd_ratio)
        check_positive("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        self.rd_dim = make_divisible(rd_ratio * dim)
        self.kernel_size = kernel_size
        self.mlp = nn.Sequential(
            nn.Linear(dim, self.rd_dim, bias=False),
            nn.ReLU(),
            nn.Linear(self.rd_dim, dim, bias=False),
        )
        kernel = (kernel_size,) * grid_ndim
        bound = 1 / math.sqrt(2 * math.prod(kernel))  # PyTorch's default conv init
        self.spatial_weight = nn.Parameter(torch.empty(1, 2, *kernel).uniform_(-bound, bound))
        if causal:
            self.spatial_bias = nn.Parameter(torch.zeros(1))
        else:
            # One channel: the same for 1-D and 2-D maps; batch statistics over real positions.
            self.spatial_norm = MaskedBatchNorm(1)

    def forward(self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False):
        self.check_input(x, mask)
        if self.causal:  # (B, L, C): one channel gate per position, from its prefix
            channel = (self.mlp(running_mean(x, mask)) + self.mlp(running_max(x, mask))).sigmoid()
            x = x * channel
        else:
            tokens, padding = x.flatten(1, -2), flat_mask(mask)
            channel = self.mlp(masked_mean(tokens, padding)) + self.mlp(masked_amax(tokens, padding))
            channel = channel.sigmoid()
            x = x * channel.view(x.shape[0], *([1] * (x.dim() - 2)), self.dim)
        pooled = torch.stack([x.mean(dim=-1), x.amax(dim=-1)], dim=-1)
        pooled = channels_first(zero_padding(pooled, mask))  # the conv reads zeros at padding
        if self.causal:
            logits = causal_conv1d(pooled, self.spatial_weight, self.spatial_bias)  # (B, 1, L)
        else:
            logits = grid_conv(pooled, self.spatial_weight)  # (B, 1, *grid)
            logits = self.spatial_norm(logits.flatten(2), flat_mask(mask)).view_as(logits)
        spatial = logits.squeeze(1).sigmoid()
        y = x * spatial.unsqueeze(-1)
        if not return_weights:
            return y
        return y, {"channel": channel[:, -1] if self.causal else channel, "spatial": spatial}

    def flops(self, grid: tuple[int, ...]) -> int:
        """With N = prod(grid), C = dim, r = rd_dim, a = k^grid_ndim kernel taps: channel pooling
        2*N*C + shared MLP on two vectors 2*2*2*C*r + channel gating N*C + channel-wise mean and
        max 2*N*C + conv 2*N*2*a + spatial gating N*C = 6*N*C + 8*C*r + 4*N*a; causal: the MLP
        at every position, N*8*C*r."""
        n, c = self.num_positions(grid), self.dim
        mlp = 8 * c * self.rd_dim * (n if self.causal else 1)
        return 6 * n * c + mlp + 4 * n * self.kernel_size**self.grid_ndim
