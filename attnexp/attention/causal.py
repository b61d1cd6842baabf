"""What the causal forms of the variants share: running statistics over the prefix ``<= t`` and a
left-padded convolution, so no future position reaches position t. (The 1-D-only rule is the
contract's: ``AttentionModule`` refuses ``causal=True`` on an image.) A padding ``mask`` ``(B, N)``
leaves padded positions out of the running statistics; a prefix with no real position gets 0."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from attnexp.attention.masking import zero_padding


def running_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """``(B, N, C)`` -> ``(B, N, C)``: at position t the mean over (real) positions ``<= t``."""
    if mask is not None:
        counts = mask.to(x.dtype).cumsum(dim=1).clamp(min=1).unsqueeze(-1)
        return zero_padding(x, mask).cumsum(dim=1) / counts
    counts = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)
    return x.cumsum(dim=1) / counts.unsqueeze(-1)


def running_max(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """``(B, N, C)`` -> ``(B, N, C)``: at position t the max over (real) positions ``<= t``."""
    if mask is None:
        return x.cummax(dim=1).values
    peak = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).cummax(dim=1).values
    seen = mask.int().cummax(dim=1).values.bool().unsqueeze(-1)  # a real position so far
    return torch.where(seen, peak, 0.0)


def causal_conv1d(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, groups: int = 1
) -> Tensor:
    """Convolution of channels-first ``x`` ``(B, C, L)`` with ``k - 1`` zeros on the left only,
    so output t sees inputs ``t - k + 1 .. t``; same length out. ``groups`` as ``F.conv1d``'s
    (``groups=C``: depthwise)."""
    return F.conv1d(F.pad(x, (weight.shape[-1] - 1, 0)), weight, bias, groups=groups)
