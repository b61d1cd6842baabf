"""What the causal forms of the variants share: running statistics over the prefix ``<= t`` and a
left-padded convolution, so no future position reaches position t. (The 1-D-only rule is the
contract's: ``AttentionModule`` refuses ``causal=True`` on an image.)"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def running_mean(x: Tensor) -> Tensor:
    """``(B, N, C)`` -> ``(B, N, C)``: at position t the mean over positions ``<= t``."""
    counts = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)
    return x.cumsum(dim=1) / counts.unsqueeze(-1)


def running_max(x: Tensor) -> Tensor:
    """``(B, N, C)`` -> ``(B, N, C)``: at position t the max over positions ``<= t``."""
    return x.cummax(dim=1).values


def causal_conv1d(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, groups: int = 1
) -> Tensor:
    """Convolution of channels-first ``x`` ``(B, C, L)`` with ``k - 1`` zeros on the left only,
    so output t sees inputs ``t - k + 1 .. t``; same length out. ``groups`` as ``F.conv1d``'s
    (``groups=C``: depthwise)."""
    return F.conv1d(F.pad(x, (weight.shape[-1] - 1, 0)), weight, bias, groups=groups)
