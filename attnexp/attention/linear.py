"""``linear``: linear attention (Katharopoulos et al., 2020, "Transformers are RNNs").

Softmax attention's similarity ``exp(q . k)`` is replaced by a kernel ``phi(q) . phi(k)`` with the
positive feature map ``phi(x) = elu(x) + 1``. Then, per head,

    out_i = phi(q_i)^T S / (phi(q_i)^T z + eps),   S = sum_j phi(k_j) v_j^T,   z = sum_j phi(k_j),

so the (d x d) summary ``S`` is built once and every query reads it: O(N d^2) time and O(N d + d^2)
memory instead of O(N^2). A padding mask zeroes ``phi(k_j)`` at padded positions, so they add
nothing to ``S`` and ``z`` (a fully padded sample reads ``0 / eps = 0``). Non-causal: every position sees every other, on a sequence or a
flattened image. Weights are never needed by the output; with ``return_weights=True`` the implied
(B, heads, N, N) matrix ``phi(q_i).phi(k_j) / (phi(q_i).z + eps)`` is built for visualisation only.

Causal (``causal=True``, sequences only): the sums run over the prefix, ``S_i = sum_{j<=i}
phi(k_j) v_j^T`` and ``z_i = sum_{j<=i} phi(k_j)`` (the RNN form of the paper). A cumulative sum
of the N outer products would hold N (d x d) matrices per head for backward; instead the sequence
is cut into chunks of ``chunk_size`` positions: a chunk's own prefix is read by the small masked
(chunk x chunk) product, everything before it by the carried state ``(S, z)``. Time O(N (chunk d
+ d^2)), memory per head O(N chunk + (N / chunk) d^2) -- linear in N; no N x N matrix is formed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attnexp.attention.base import (
    AttentionModule,
    Kind,
    WeightKind,
    check_heads,
    flatten_grid,
    unflatten_grid,
)
from attnexp.attention.masking import zero_padding
from attnexp.util.checks import check_positive


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
        causal: bool = False,
        num_heads: int = 4,
        qkv_bias: bool = True,
        eps: float = 1e-6,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(dim, grid_ndim, causal)
        check_heads(dim, num_heads)
        check_positive("chunk_size", chunk_size)
        self.num_heads, self.head_dim, self.eps = num_heads, dim // num_heads, eps
        self.chunk_size = chunk_size
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False):
        self.check_input(x, mask)
        tokens, grid = flatten_grid(x)
        # (B, N, heads, d) each; einsum keeps the head axis where it is.
        q, k, v = self.qkv(tokens).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(2)
        q, k = feature_map(q), feature_map(k)
        if mask is not None:  # phi(k) = 0 at padding: those keys add nothing to S, z or weights
            k = zero_padding(k, mask.flatten(1)[..., None])
        if self.causal:
            out = causal_linear_attention(q, k, v, self.eps, self.chunk_size)
        else:
            summary = torch.einsum("bnhd,bnhe->bhde", k, v)
            normaliser = torch.einsum("bnhd,bhd->bnh", q, k.sum(1)) + self.eps
            out = torch.einsum("bnhd,bhde->bnhe", q, summary) / normaliser.unsqueeze(-1)
        y = unflatten_grid(self.proj(out.flatten(2)), grid)
        if not return_weights:
            return y
        similarity = torch.einsum("bnhd,bmhd->bhnm", q, k)
        if self.causal:
            similarity = similarity.tril()
        return y, {"attn": similarity / (similarity.sum(-1, keepdim=True) + self.eps)}

    def state_floats(self, grid: tuple[int, ...]) -> int:
        """The summary ``S`` and normaliser ``z`` per head: ``H (d^2 + d)``, whatever the length."""
        self.check_grid(grid)
        return self.num_heads * (self.head_dim**2 + self.head_dim)

    def flops(self, grid: tuple[int, ...]) -> int:
        n, c, d, h = self.num_positions(grid), self.dim, self.head_dim, self.num_heads
        projections = 2 * n * c * 3 * c + 2 * n * c * c
        features = 2 * 2 * n * c  # elu + 1 on q and k
        summary = 2 * n * d * d * h + n * c  # S and z
        read = 2 * n * d * d * h + 2 * n * c + n * c  # phi(q) S, phi(q) z, divide
        if self.causal:  # the chunks' own masked products, and adding them to the state's part
            full, last = divmod(n, self.chunk_size)
            chunk_squares = full * self.chunk_size**2 + last**2
            read += h * (2 * chunk_squares * d * 2 + chunk_squares) + n * c + n * h
        return projections + features + summary + read


def causal_linear_attention(q: Tensor, k: Tensor, v: Tensor, eps: float, chunk_size: int) -> Tensor:
    """``out_i = phi(q_i)^T S_i / (phi(q_i)^T z_i + eps)`` over the prefix ``j <= i``, chunk by
    chunk; ``q``, ``k`` are features ``(B, N, heads, d)``, ``v`` is ``(B, N, heads, e)``."""
    state = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])  # S: (B, heads, d, e)
    normaliser = q.new_zeros(q.shape[0], q.shape[2], q.shape[3])  # z: (B, heads, d)
    outs = []
    for start in range(0, q.shape[1], chunk_size):
        qc, kc, vc = (t[:, start : start + chunk_size] for t in (q, k, v))
        within = torch.einsum("bnhd,bmhd->bhnm", qc, kc).tril()  # keys j <= i inside the chunk
        numerator = torch.einsum("bhnm,bmhe->bnhe", within, vc)
        numerator = numerator + torch.einsum("bnhd,bhde->bnhe", qc, state)
        denominator = within.sum(-1).transpose(1, 2) + torch.einsum("bnhd,bhd->bnh", qc, normaliser)
        outs.append(numerator / (denominator + eps).unsqueeze(-1))
        state = state + torch.einsum("bmhd,bmhe->bhde", kc, vc)
        normaliser = normaliser + kc.sum(1)
    return torch.cat(outs, dim=1)
