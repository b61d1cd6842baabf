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

Causal (``causal=True``, sequences only): position t pools only its prefix, with a running softmax

    p^t_j = softmax_{j<=t}(s)_j,   c_t = W_v sum_{j<=t} p^t_j x_j,   y_t = x_t + T(c_t),

so every position has its own context (T and W_v then cost O(N) each). Padding (a ``mask``):
padded positions get zero weight, ``p = softmax`` over the real positions (of the prefix). The prefix sums are an
inclusive scan over (running max m, sum exp(s_j - m) x_j, sum exp(s_j - m)) pairs, combined by
rescaling to the larger max as online softmax does: every exponent is <= 0 (stable whatever the
scores), no position combines anything after it (causal exactly, not up to rounding), and it takes
log2(N) vectorised steps, O(N C log N), no N x N matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnexp.attention.base import (
    AttentionModule,
    Kind,
    WeightKind,
    flatten_grid,
    unflatten_grid,
)
from attnexp.attention.masking import nonempty
from attnexp.util.checks import check_positive


class NodeAttention(AttentionModule):
    """``weights`` (with ``return_weights=True``): ``{"node": (B, 1, N)}``, the pooling weights;
    causal: ``{"node": (B, 1, N, N)}``, row t the pooling weights of position t's prefix (an
    attention map with one head, zero above the diagonal)."""

    kind = Kind.MIXER
    # One "head" of weights over positions; a causal module overrides it per instance (__init__):
    # each position pools its own prefix, an (N x N) attention map.
    weight_kinds = {"node": WeightKind.POSITION_WEIGHTS}

    def __init__(
        self,
        dim: int,
        grid_ndim: int = 1,
        causal: bool = False,
        reduction: int = 4,
        value_proj: bool = False,
    ) -> None:
        super().__init__(dim, grid_ndim, causal)
        if causal:  # one set of pooling weights per position: a query x key map
            self.weight_kinds = {"node": WeightKind.ATTENTION_MAP}
        check_positive("reduction", reduction)
        hidden = max(1, dim // reduction)
        self.score = nn.Linear(dim, 1)
        self.value = nn.Linear(dim, dim) if value_proj else nn.Identity()
        self.transform = nn.Sequential(
            nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False):
        self.check_input(x, mask)
        if self.causal:
            return self.causal_forward(x, mask, return_weights)
        tokens, grid = flatten_grid(x)
        scores = self.score(tokens).squeeze(-1)  # (B, N)
        if mask is not None:  # padded positions get zero weight
            scores = scores.masked_fill(~nonempty(mask.flatten(1)), float("-inf"))
        weights = scores.softmax(dim=-1)
        context = self.value(torch.einsum("bn,bnc->bc", weights, tokens))
        y = unflatten_grid(tokens + self.transform(context).unsqueeze(1), grid)
        return (y, {"node": weights.unsqueeze(1)}) if return_weights else y

    def causal_forward(self, x: Tensor, mask: Tensor | None, return_weights: bool):
        scores = self.score(x).squeeze(-1)  # (B, N)
        context = self.value(running_softmax_pool(scores, x, mask))  # (B, N, C)
        y = x + self.transform(context)
        if not return_weights:
            return y
        hidden = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).triu(1)
        if mask is not None:
            hidden = hidden | ~mask[:, None, :]
        weights = scores.unsqueeze(1).masked_fill(hidden, float("-inf")).softmax(dim=-1)
        weights = weights.nan_to_num(0.0)  # a prefix of padding only: no weights
        return y, {"node": weights.unsqueeze(1)}

    def flops(self, grid: tuple[int, ...]) -> int:
        n, c = self.num_positions(grid), self.dim
        r = self.transform[0].out_features
        scores = 2 * n * c + 4 * n  # linear scorer + softmax
        pool = 2 * n * c
        value = 2 * c * c if isinstance(self.value, nn.Linear) else 0
        transform = 2 * c * r + 5 * r + r + 2 * r * c  # Linear, LayerNorm, ReLU, Linear
        if self.causal:  # one context per position; each scan step rescales two sums and adds
            pool = sum(3 * (n - o) * (c + 1) for o in scan_offsets(n)) + n * c  # + divide
            value, transform = n * value, n * transform
        return scores + pool + value + transform + n * c  # + broadcast add


def scan_offsets(n: int) -> list[int]:
    """The offsets of ``running_softmax_pool``'s steps on ``n`` positions: 1, 2, 4, ... < n."""
    return [1 << i for i in range(max(n - 1, 0).bit_length())]


def running_softmax_pool(scores: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """``sum_{j<=t} softmax_{j<=t}(scores)_j x_j`` for every t: ``scores`` ``(B, N)``, ``x``
    ``(B, N, C)`` -> ``(B, N, C)``; with a padding ``mask`` ``(B, N)`` over the real ``j <= t``
    only (a prefix of padding only pools to 0).

    A Hillis-Steele inclusive scan: after the step with offset o, position t holds its window
    ``[t - 2o + 1, t]`` as its max m and ``sum exp(s - m) [x, 1]``, made from its own window and
    the one ending at t - o, each rescaled to their common max.
    """
    peak = scores.detach()  # only a stabiliser: the result does not depend on it
    mass = torch.exp(scores - peak).unsqueeze(-1)  # 1, but carries the scores' gradient
    if mask is not None:  # padding has no mass, and a stabiliser below every real score
        low = peak.masked_fill(~mask, float("inf")).amin(-1, keepdim=True)
        peak = torch.where(mask, peak, torch.where(low.isfinite(), low, 0.0))
        mass = mass * mask.unsqueeze(-1)
    sums = mass * torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)  # weighted x, the weights
    for offset in scan_offsets(scores.shape[1]):
        earlier, own = peak[:, :-offset], peak[:, offset:]
        new_peak = torch.maximum(earlier, own)
        earlier_scale = (earlier - new_peak).exp().unsqueeze(-1)
        own_scale = (own - new_peak).exp().unsqueeze(-1)
        combined = earlier_scale * sums[:, :-offset] + own_scale * sums[:, offset:]
        # Positions before the offset already hold their whole prefix.
        sums = torch.cat([sums[:, :offset], combined], dim=1)
        peak = torch.cat([peak[:, :offset], new_peak], dim=1)
    return sums[..., :-1] / sums[..., -1:].clamp(min=torch.finfo(sums.dtype).tiny)
