"""``mha``: multi-head scaled dot-product self-attention (Vaswani et al., 2017).

On a 2-D grid every position attends to all H*W positions, as BoTNet's MHSA does.
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

from attnexp.attention.base import (
    AttentionModule,
    Kind,
    check_grid_input,
    check_positive,
    check_probability,
    flatten_grid,
    unflatten_grid,
)


def attention_core(
    q: Tensor, k: Tensor, v: Tensor, *, dropout_p: float = 0.0, need_weights: bool = False
) -> tuple[Tensor, Tensor | None]:
    """softmax(q k^T / sqrt(d)) v for ``q`` ``(B, heads, N, d)`` and ``k, v`` ``(B, heads, M, d)``.

    Returns ``(out (B, heads, N, d), weights (B, heads, N, M) or None)``. The fused kernel runs
    unless weights are requested; the explicit path computes the same thing and returns the
    attention probabilities before dropout. This is the one place attention is computed: design
    knobs (score functions, normalisations, masks, key subsampling) belong here.
    """
    if not need_weights:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p), None
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    weights = scores.softmax(dim=-1)
    return F.dropout(weights, dropout_p) @ v, weights


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(B, N, heads * d)`` -> ``(B, heads, N, d)``."""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``(B, heads, N, d)`` -> ``(B, N, heads * d)``."""
    return x.transpose(1, 2).flatten(2)


def resolve_head_dim(dim: int, num_heads: int, head_dim: int | None) -> int:
    """``head_dim`` if given, else ``dim // num_heads``, refusing a remainder."""
    check_positive("num_heads", num_heads)
    if head_dim is None:
        if dim % num_heads:
            raise ValueError(
                f"dim={dim} is not divisible by num_heads={num_heads}; choose num_heads dividing "
                "dim or set head_dim explicitly"
            )
        return dim // num_heads
    check_positive("head_dim", head_dim)
    return head_dim


class MultiHeadAttention(AttentionModule):
    """Fused qkv projection -> ``attend`` per head -> output projection.

    ``weights`` (with ``return_weights=True``): ``{"attn": (B, heads, N, N)}``, N = prod(grid).
    """

    kind = Kind.MIXER

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        head_dim: int | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__(dim)
        self.head_dim = resolve_head_dim(dim, num_heads, head_dim)
        check_probability("attn_drop", attn_drop)
        check_probability("proj_drop", proj_drop)
        self.num_heads = num_heads
        self.inner_dim = num_heads * self.head_dim
        self.attn_drop = float(attn_drop)
        self.qkv = nn.Linear(dim, 3 * self.inner_dim, bias=qkv_bias)
        self.proj = nn.Linear(self.inner_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, need_weights: bool = False):
        """The attention core on ``(B, heads, N, d)`` tensors; see ``attention_core``."""
        dropout_p = self.attn_drop if self.training else 0.0
        return attention_core(q, k, v, dropout_p=dropout_p, need_weights=need_weights)

    def attention_heads(self, x: Tensor, need_weights: bool):
        """Returns ``(attention output before projection (B, N, D), values (B, N, D), weights,
        grid)``; the values come back so ``muse`` can convolve the same value projection."""
        check_grid_input(x, self.dim)
        tokens, grid = flatten_grid(x)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        heads = (split_heads(t, self.num_heads) for t in (q, k, v))
        out, weights = self.attend(*heads, need_weights)
        return merge_heads(out), v, weights, grid

    def forward(self, x: Tensor, return_weights: bool = False):
        out, _, weights, grid = self.attention_heads(x, return_weights)
        y = unflatten_grid(self.proj_drop(self.proj(out)), grid)
        return (y, {"attn": weights}) if return_weights else y

    def flops(self, grid: tuple[int, ...]) -> int:
        """With N = prod(grid), C = dim, D = heads * head_dim:
        qkv 2*N*C*3D + scores 2*N*N*D + weighted values 2*N*N*D + projection 2*N*D*C
        = 2*N*(4*C*D + 2*N*D)."""
        n, c, d = math.prod(grid), self.dim, self.inner_dim
        return 2 * n * (4 * c * d + 2 * n * d)
