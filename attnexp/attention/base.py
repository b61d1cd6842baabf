"""The contract every attention module obeys.

Input is tokens-last, ``(B, *grid, C)``: ``grid`` is ``(L,)`` for sequences and ``(H, W)`` for
images. Mixers and gates return the same shape; pooling returns ``(B, C)``. Every module is built
with the keyword ``dim`` (= C) plus its own hyper-parameters, and says what ``kind`` it is so a
backbone knows which slot it fills.

``forward(x, return_weights=False)`` returns the output; with ``return_weights=True`` it returns
``(output, weights)`` where ``weights`` is a dict of named tensors for visualisation. Weights are an
explicit opt-in because producing them forces the slow explicit path.
"""

from __future__ import annotations

import enum
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class Kind(str, enum.Enum):
    """Where a module belongs in a backbone."""

    IDENTITY = "identity"  # does nothing: the backbone drops the slot (the baseline)
    MIXER = "mixer"  # mixes information across positions: (B, *grid, C) -> same
    GATE = "gate"  # rescales channels and/or positions: (B, *grid, C) -> same
    POOL = "pool"  # collapses the grid: (B, *grid, C) -> (B, C)


class AttentionModule(nn.Module):
    """Base class: subclasses set ``kind`` and implement ``forward``."""

    kind: ClassVar[Kind]

    def __init__(self, dim: int) -> None:
        super().__init__()
        check_positive("dim", dim)
        self.dim = dim

    def forward(self, x: Tensor, return_weights: bool = False):  # pragma: no cover - abstract
        raise NotImplementedError

    def flops(self, grid: tuple[int, ...]) -> int:
        """Analytic forward FLOPs for one sample on ``grid`` (a multiply-add counts 2).

        Counted by hand because FLOP counters see zero inside ``scaled_dot_product_attention``.
        Convention shared by every module: matmuls and convolutions count 2 per multiply-add;
        reductions (mean, max) and gating products over a full tensor count 1 per element;
        biases, nonlinearities (softmax, sigmoid, ReLU) and normalisation are not counted.
        """
        raise NotImplementedError(f"{type(self).__name__} does not count its FLOPs")


def check_positive(name: str, value: int) -> None:
    """Refuse a size that is not a positive integer, naming the key."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_probability(name: str, value: float) -> None:
    """Refuse a dropout rate outside [0, 1), naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")


def check_ratio(name: str, value: float) -> None:
    """Refuse a width ratio outside (0, 1], naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a ratio in (0, 1], got {value!r}")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below ``min_value``
    (default ``divisor``) and never more than 10% below ``value`` (as timm's helper)."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def check_grid_input(x: Tensor, dim: int) -> None:
    """Refuse an input that is not ``(B, *grid, C)`` with a 1-D or 2-D grid and C == dim."""
    if x.dim() not in (3, 4):
        raise ValueError(f"expected input of shape (B, L, C) or (B, H, W, C), got {tuple(x.shape)}")
    if x.shape[-1] != dim:
        raise ValueError(
            f"input has {x.shape[-1]} channels but the module was built with dim={dim}"
        )


def flatten_grid(x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """``(B, *grid, C)`` -> ``(B, N, C)`` plus the grid, so it can be restored."""
    grid = tuple(x.shape[1:-1])
    return x.reshape(x.shape[0], -1, x.shape[-1]), grid


def unflatten_grid(x: Tensor, grid: tuple[int, ...]) -> Tensor:
    """``(B, N, C)`` -> ``(B, *grid, C)``."""
    return x.reshape(x.shape[0], *grid, x.shape[-1])


def channels_first(x: Tensor) -> Tensor:
    """``(B, *grid, C)`` -> ``(B, C, *grid)`` for convolutions."""
    return torch.movedim(x, -1, 1)


def channels_last(x: Tensor) -> Tensor:
    """``(B, C, *grid)`` -> ``(B, *grid, C)``."""
    return torch.movedim(x, 1, -1)


def grid_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None, groups: int = 1) -> Tensor:
    """Same-padded convolution of channels-first ``x`` ``(B, C, *grid)`` over its 1-D or 2-D grid.

    ``weight`` is always a square 2-D kernel ``(out, in // groups, k, k)`` with odd ``k``: a
    sequence is a 1 x L image, so on a 1-D grid only the kernel's centre row touches data and only
    that row is used. One parameter set thus serves both grid ranks and the state dict never
    depends on the input seen. Runs as conv2d in channels-last memory format, which is how
    tokens-last activations already lie and is PyTorch's fast CPU path for depthwise convs
    (several times faster than conv1d or channels-first there).
    """
    if x.dim() == 3:
        k = weight.shape[-1]
        return grid_conv(x.unsqueeze(2), weight[:, :, k // 2 : k // 2 + 1], bias, groups).squeeze(2)
    x = x.contiguous(memory_format=torch.channels_last)
    padding = (weight.shape[-2] // 2, weight.shape[-1] // 2)
    return F.conv2d(x, weight, bias, padding=padding, groups=groups)


def kernel_area(k: int, grid: tuple[int, ...]) -> int:
    """Taps of a ``grid_conv`` kernel of size ``k`` that touch data on ``grid``: k or k*k."""
    return k ** len(grid)
