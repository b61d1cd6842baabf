"""``linear``: linear attention (Katharopoulos et al., 2020, "Transformers are RNNs").

Softmax attention's similarity ``exp(q . k)`` is replaced by a kernel ``phi(q) . phi(k)`` with the
positive feature map ``phi(x) = elu(x) + 1``. Then, per head,

    out_i = phi(q_i)^T S / (phi(q_i)^T z + eps),   S = sum_j phi(k_j) v_j^T,   z = sum_j phi(k_j),

so the (d x d) summary ``S`` is built once and every query reads it: O(N d^2) time and O(N d + d^2)
memory instead of O(N^2). Non-causal: every position sees every other, on a sequence or a
flattened image. Weights are never needed by the output; with ``return_weights=True`` the implied
(B, heads, N, N) matrix ``phi(q_i).phi(k_j) / (phi(q_i).z + eps)`` is built for visualisation only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attnexp.attention.base import (
    AttentionModule,
    Kind,
    WeightKind,
    check_positive,
    flatten_grid,
    unflatten_grid,
)


def feature_map(x: Tensor) -> Tensor:
    """``elu(x) + 1``: positive, so the normaliser never vanishes, and smooth."""
    return F.elu(x) + 1


class LinearAttention(AttentionModule):
    """Fused qkv projection -> per-head linear attention -> output projection."""

    kind = Kind.MIXER
    weight_kinds = {"attn": WeightKind.ATTENTION_MAP}

    def __init__(
        self,
        dim: int,
        grid_ndim: int = 1,
        num_heads: int = 4,
        qkv_bias: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(dim, grid_ndim)
        check_positive("num_heads", num_heads)
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim, self.eps = num_heads, dim // num_heads, eps
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, return_weights: bool = False):
        self.check_input(x)
        tokens, grid = flatten_grid(x)
        # (B, N, heads, d) each; einsum keeps the head axis where it is.
        q, k, v = self.qkv(tokens).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(2)
        q, k = feature_map(q), feature_map(k)
        summary = torch.einsum("bnhd,bnhe->bhde", k, v)
        normaliser = torch.einsum("bnhd,bhd->bnh", q, k.sum(1)) + self.eps
        out = torch.einsum("bnhd,bhde->bnhe", q, summary) / normaliser.unsqueeze(-1)
        y = unflatten_grid(self.proj(out.flatten(2)), grid)
        if not return_weights:
            return y
        similarity = torch.einsum("bnhd,bmhd->bhnm", q, k)
        return y, {"attn": similarity / normaliser.transpose(1, 2).unsqueeze(-1)}

    def flops(self, grid: tuple[int, ...]) -> int:
        n, c, d, h = self.num_positions(grid), self.dim, self.head_dim, self.num_heads
        projections = 2 * n * c * 3 * c + 2 * n * c * c
        features = 2 * 2 * n * c  # elu + 1 on q and k
        summary = 2 * n * d * d * h + n * c  # S and z
        read = 2 * n * d * d * h + 2 * n * c + n * c  # phi(q) S, phi(q) z, divide
        return projections + features + summary + read
