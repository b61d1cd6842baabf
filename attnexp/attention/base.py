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
        """
        raise NotImplementedError(f"{type(self).__name__} does not count its FLOPs")


def check_positive(name: str, value: int) -> None:
    """Refuse a size that is not a positive integer, naming the key."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


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
