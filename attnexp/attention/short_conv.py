"""The short depthwise convolution that the recurrent and convolutional mixers put before their
scan (Mamba-2, DeltaNet, Hyena, Based): each channel mixes the ``k`` positions nearest each
position.

Causal, it is left-padded by ``k - 1`` zeros, so position t reads t - k + 1 .. t; while decoding it
keeps the last ``k - 1`` inputs instead (``tail``), so a new position costs ``k`` products per
channel whatever the context. Not causal (a classifier), it is centred: ``(k - 1) // 2`` positions
before and the rest after, along each axis of the grid (a ``k x k`` window on an image, so an
image's neighbours are its pixels', not the raster order's). Padded positions (``mask`` False)
are read as zeros, as the border is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnexp.util.checks import check_positive


class ShortConv(nn.Module):
    """Depthwise convolution of width ``kernel_size`` along each axis of a ``grid_ndim`` grid, on
    ``(B, N, C)`` tokens, with a bias and an optional SiLU after it (``activation``)."""

    def __init__(
        self, channels: int, kernel_size: int = 4, causal: bool = True, activation: bool = True,
        grid_ndim: int = 1,
    ) -> None:  # fmt: skip
        super().__init__()
        check_positive("conv_size", kernel_size)
        self.kernel_size, self.causal, self.activation = kernel_size, causal, activation
        self.grid_ndim = grid_ndim
        conv = nn.Conv1d if grid_ndim == 1 else nn.Conv2d
        self.conv = conv(channels, channels, kernel_size, groups=channels)

    def forward(
        self, x: Tensor, grid: tuple[int, ...], mask: Tensor | None = None,
        tail: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """``x`` ``(B, N, C)`` on ``grid``, ``mask`` ``(B, N)`` True at real positions, ``tail``
        the last ``k - 1`` inputs before ``x`` (causal decoding; ``None``: zeros) -> ``(y (B, N,
        C), the last k - 1 inputs to continue from)``."""
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        k = self.kernel_size
        if self.causal:
            before = x.new_zeros(x.shape[0], k - 1, x.shape[-1]) if tail is None else tail
            padded = torch.cat([before, x], dim=1)
            y = self.conv(padded.transpose(1, 2)).transpose(1, 2)
            tail = padded[:, padded.shape[1] - (k - 1) :]
        else:
            left = (k - 1) // 2
            image = x.transpose(1, 2).unflatten(-1, grid)  # (B, C, *grid)
            y = self.conv(F.pad(image, (left, k - 1 - left) * self.grid_ndim)).flatten(2).transpose(1, 2)
            tail = x[:, :0]
        return (F.silu(y) if self.activation else y), tail

    def flops(self, n: int) -> int:
        """``2 k^D`` per channel and position (``D`` the grid's rank), and the activation."""
        taps = math.prod(self.conv.kernel_size)
        return n * self.conv.in_channels * (2 * taps + (4 if self.activation else 0))
