"""Padding masks in numbers: the masked statistics the modules and the backbones share.

A mask is ``(B, *grid)`` bool, True at real positions (the contract in ``base``). Everything here
leaves padded positions out of the result. A row with no real position at all (a fully padded
sample, or a query whose allowed keys are all padding) is treated as all real instead, so it
yields finite numbers rather than the NaN of an empty softmax or a 0 / 0 mean: its outputs are
padding, which nobody reads, but a NaN there would poison the real positions through ``0 * NaN``
in the next layer.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm


def nonempty(mask: Tensor) -> Tensor:
    """``mask`` with every row (the last axis) that has no True made all True."""
    return mask | ~mask.any(-1, keepdim=True)


def zero_padding(x: Tensor, mask: Tensor | None) -> Tensor:
    """``x`` ``(..., C)`` with zeros at the padded positions of ``mask`` (``x``'s shape without
    its last axis, or broadcastable to it); ``mask=None``: ``x`` unchanged. What a convolution
    reads, so appended padding looks exactly like its own zero border."""
    return x if mask is None else x.masked_fill(~mask.unsqueeze(-1), 0)


def flat_mask(mask: Tensor | None) -> Tensor | None:
    """``(B, *grid)`` -> ``(B, N)``, as ``base.flatten_grid`` flattens the input."""
    return None if mask is None else mask.flatten(1)


def masked_mean(tokens: Tensor, mask: Tensor | None) -> Tensor:
    """``(B, N, C)`` -> ``(B, C)``: the mean over the real positions of ``mask`` ``(B, N)``."""
    if mask is None:
        return tokens.mean(dim=1)
    mask = nonempty(mask)
    count = mask.sum(dim=1, keepdim=True).to(tokens.dtype)
    return zero_padding(tokens, mask).sum(dim=1) / count


def masked_amax(tokens: Tensor, mask: Tensor | None) -> Tensor:
    """``(B, N, C)`` -> ``(B, C)``: the max over the real positions of ``mask`` ``(B, N)``."""
    if mask is None:
        return tokens.amax(dim=1)
    return tokens.masked_fill(~nonempty(mask).unsqueeze(-1), float("-inf")).amax(dim=1)


class MaskedBatchNorm(_BatchNorm):
    """BatchNorm over ``(B, C, *grid)`` (1-D or 2-D grid) whose batch statistics, in training,
    are taken over the real positions of ``mask`` ``(B, *grid)`` only, so padding neither shifts
    the normalisation of real positions nor leaks into the running statistics.

    Without a mask, and whenever the running statistics are used (eval), it is ``nn.BatchNorm``;
    with an all-True mask it computes the same numbers. Same parameters, buffers and state-dict
    keys as ``nn.BatchNorm1d``/``2d``, so checkpoints and parameter counts do not change.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() not in (3, 4):
            raise ValueError(
                f"expected a (B, C, *grid) input with a 1-D or 2-D grid, got {tuple(x.shape)}"
            )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None or not (self.training or self.running_mean is None):
            return super().forward(x)
        self._check_input_dim(x)
        # Statistics in float32 at least, as BatchNorm runs under autocast.
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        keep, axes = mask.unsqueeze(1), [0, *range(2, x.dim())]
        shape = (1, -1, *[1] * (x.dim() - 2))  # per channel
        count = keep.sum(axes).to(x.dtype).clamp(min=1)  # a fully padded batch: finite, unread
        mean = x.masked_fill(~keep, 0).sum(axes) / count
        centred = x - mean.view(shape)
        var = centred.masked_fill(~keep, 0).pow(2).sum(axes) / count
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
            with torch.no_grad():  # the running variance unbiased, as BatchNorm's
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y
