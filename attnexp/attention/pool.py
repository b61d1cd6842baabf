"""``pool``: self-attention pooling (learned-query attention readout, as in the pooling by
multi-head attention of Lee et al., 2019, "Set Transformer"), O(N) in positions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnexp.attention.base import AttentionModule, Kind, WeightKind, flatten_grid
from attnexp.attention.design import attend
from attnexp.attention.masking import flat_mask, masked_mean
from attnexp.attention.mha import merge_heads, resolve_head_dim, split_heads
from attnexp.util.checks import check_positive


class AttentionPool(AttentionModule):
    """Learned queries attend over all positions: per head, ``softmax(q k^T / sqrt(d)) v`` with
    keys and values linear maps of x; the ``num_queries`` results are averaged and projected to
    C. With ``residual`` the mean over positions is added. Returns ``(B, C)``. A padding mask
    gives padded positions zero weight and leaves them out of the mean.

    ``weights`` (with ``return_weights=True``): ``{"pool": (B, heads, N)}``, averaged over queries;
    each row sums to 1 over positions.
    """

    kind = Kind.POOL
    weight_kinds = {"pool": WeightKind.POSITION_WEIGHTS}

    def __init__(
        self,
        dim: int,
        grid_ndim: int = 1,
        num_heads: int = 4,
        num_queries: int = 1,
        residual: bool = False,
        causal: bool = False,
    ) -> None:
        super().__init__(dim, grid_ndim, causal)
        if causal:
            raise ValueError(
                "pool cannot be causal: it collapses the sequence into one vector, and a language "
                "model reads out every position"
            )
        self.head_dim = resolve_head_dim(dim, num_heads, None)
        check_positive("num_queries", num_queries)
        self.num_heads = num_heads
        self.num_queries = num_queries
        self.residual = bool(residual)
        # Cut at +-2 std: trunc_normal_'s default bounds are absolute (+-2), no cut at this std.
        std = dim**-0.5
        query = torch.empty(num_queries, dim)
        self.query = nn.Parameter(nn.init.trunc_normal_(query, std=std, a=-2 * std, b=2 * std))
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False):
        self.check_input(x, mask)
        tokens, _ = flatten_grid(x)
        padding = flat_mask(mask)
        k, v = (split_heads(t, self.num_heads) for t in self.kv(tokens).chunk(2, dim=-1))
        q = split_heads(self.query.expand(x.shape[0], -1, -1), self.num_heads)
        # (B, h, Q, d); padded positions get zero weight
        out, weights = attend(q, k, v, need_weights=return_weights, key_padding=padding)
        y = self.proj(merge_heads(out).mean(dim=1))
        if self.residual:
            y = y + masked_mean(tokens, padding)
        return (y, {"pool": weights.mean(dim=2)}) if return_weights else y

    def flops(self, grid: tuple[int, ...]) -> int:
        """With N = prod(grid), C = dim, Q = num_queries, h = num_heads: keys and values
        2*N*C*2C + scores 2*Q*N*C + softmax 4*Q*N*h + weighted values 2*Q*N*C + projection 2*C*C
        (+ mean N*C with ``residual``)."""
        n, c, q, h = self.num_positions(grid), self.dim, self.num_queries, self.num_heads
        attention = 4 * q * n * c + 4 * q * n * h
        return 4 * n * c * c + attention + 2 * c * c + (n * c if self.residual else 0)
