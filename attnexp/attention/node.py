"""``node``: N x 1 attention, one global context vector added back to every position.

A linear scorer gives each position one score, a softmax over positions turns the scores into
weights ``p``, and the weighted sum of the (optionally projected) tokens is a context vector ``c``
that a bottleneck MLP transforms and adds to every position:

    p = softmax_j(w . x_j + b),   c = W_v sum_j p_j x_j,   y_i = x_i + T(c),
    T = Linear(C -> r) -> LayerNorm(r) -> ReLU -> Linear(r -> C),   r = max(1, C // reduction).

This is the global context block of GCNet (Cao et al., 2019, "GCNet: Non-local Networks Meet
Squeeze-Excitation Networks and Beyond"): they observed that non-local attention maps are nearly
the same for every query, so one query-independent map (N x 1 instead of N x N) suffices, costing
O(N C). As in GCNet the last Linear of ``T`` starts at zero, so the block starts as the identity,
and the value map ``W_v`` (``value_proj``, off by default as in GCNet) is applied after pooling:
a linear map commutes with the weighted sum, so this is the same function for O(C^2) instead of
O(N C^2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnexp.attention.base import (
    AttentionModule,
    Kind,
    WeightKind,
    check_positive,
    flatten_grid,
    unflatten_grid,
)


class NodeAttention(AttentionModule):
    """``weights`` (with ``return_weights=True``): ``{"node": (B, 1, N)}``, the pooling weights."""

    kind = Kind.MIXER
    weight_kinds = {"node": WeightKind.POSITION_WEIGHTS}  # one "head"

    def __init__(
        self, dim: int, grid_ndim: int = 1, reduction: int = 4, value_proj: bool = False
    ) -> None:
        super().__init__(dim, grid_ndim)
        check_positive("reduction", reduction)
        hidden = max(1, dim // reduction)
        self.score = nn.Linear(dim, 1)
        self.value = nn.Linear(dim, dim) if value_proj else nn.Identity()
        self.transform = nn.Sequential(
            nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: Tensor, return_weights: bool = False):
        self.check_input(x)
        tokens, grid = flatten_grid(x)
        weights = self.score(tokens).squeeze(-1).softmax(dim=-1)  # (B, N)
        context = self.value(torch.einsum("bn,bnc->bc", weights, tokens))
        y = unflatten_grid(tokens + self.transform(context).unsqueeze(1), grid)
        return (y, {"node": weights.unsqueeze(1)}) if return_weights else y

    def flops(self, grid: tuple[int, ...]) -> int:
        n, c = self.num_positions(grid), self.dim
        r = self.transform[0].out_features
        scores = 2 * n * c + 4 * n  # linear scorer + softmax
        pool = 2 * n * c
        value = 2 * c * c if isinstance(self.value, nn.Linear) else 0
        transform = 2 * c * r + 5 * r + r + 2 * r * c  # Linear, LayerNorm, ReLU, Linear
        return scores + pool + value + transform + n * c  # + broadcast add
