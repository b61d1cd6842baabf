"""``mha``: multi-head scaled dot-product self-attention (Vaswani et al., 2017), with every knob
of the attention design space (``attnexp.attention.design``) as a constructor argument.

On a 2-D grid every position attends to all H*W positions, as BoTNet's MHSA does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnexp.attention.base import (
    AttentionModule,
    Kind,
    WeightKind,
    flatten_grid,
    unflatten_grid,
)
from attnexp.attention.design import AttentionCore, AttentionDesign
from attnexp.util.checks import check_positive, check_probability


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


GATES = ("headwise", "elementwise")


def resolve_kv_heads(num_heads: int, num_kv_heads: int | None) -> int:
    """``num_kv_heads`` (``None``: ``num_heads``), refusing one that does not divide the heads."""
    if num_kv_heads is None:
        return num_heads
    check_positive("num_kv_heads", num_kv_heads)
    if num_heads % num_kv_heads:
        raise ValueError(
            f"num_kv_heads={num_kv_heads} must divide num_heads={num_heads}: each key/value head "
            "serves an equal group of query heads"
        )
    return num_kv_heads


class MultiHeadAttention(AttentionModule):
    """Fused qkv projection -> ``design.AttentionCore`` per head -> output projection.

    ``**design`` are the attention design knobs (``score`` ... ``additive_dim``), passed to
    ``AttentionDesign``, which holds their defaults, documents them with their formulas and
    validates them at construction, so a bad value fails before training. The defaults are plain
    scaled dot-product softmax attention over all positions, which runs through
    ``scaled_dot_product_attention``. ``attn_drop`` acts on the attention weights in training only.
    ``causal=True`` (sequences): position i attends to positions <= i under every knob (causal
    dot + softmax with no other mask runs the fused kernel with ``is_causal``).

    ``num_kv_heads`` (``None``: ``num_heads``): grouped-query attention (Ainslie et al., 2023);
    each key/value head serves ``num_heads / num_kv_heads`` consecutive query heads; 1 is
    multi-query attention (Shazeer, 2019). The k and v projections shrink; the attention step sees
    every query head with its group's key and value.

    ``gate`` (``None``: off): gated attention (Qiu et al., 2025): the attention output of head h
    is multiplied by ``sigmoid(x W_g)``, one value per head (``headwise``) or per feature
    (``elementwise``), before the output projection (so in ``muse`` before its branches mix).

    ``weights`` (with ``return_weights=True``): ``{"attn": (B, heads, N, M)}``, N = prod(grid) and
    M the number of keys (N unless ``kv_stride`` or a ``valid`` ``qk_conv`` drops positions).
    """

    kind = Kind.MIXER
    weight_kinds = {"attn": WeightKind.ATTENTION_MAP}

    def __init__(
        self,
        dim: int,
        grid_ndim: int = 1,
        causal: bool = False,
        num_heads: int = 4,
        head_dim: int | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        qkv_bias: bool = True,
        num_kv_heads: int | None = None,
        gate: str | None = None,
        **design: Any,
    ) -> None:
        super().__init__(dim, grid_ndim, causal)
        self.head_dim = resolve_head_dim(dim, num_heads, head_dim)
        check_probability("attn_drop", attn_drop)
        check_probability("proj_drop", proj_drop)
        self.num_kv_heads = resolve_kv_heads(num_heads, num_kv_heads)
        design = AttentionDesign.from_knobs(**design)
        self.num_heads = num_heads
        self.inner_dim = num_heads * self.head_dim
        self.kv_dim = self.num_kv_heads * self.head_dim
        self.qkv = nn.Linear(dim, self.inner_dim + 2 * self.kv_dim, bias=qkv_bias)
        if gate is not None and gate not in GATES:
            raise ValueError(f"gate must be null (off) or one of {', '.join(GATES)}, got {gate!r}")
        # gate: sigma(x W_g) scales each head's output (headwise) or each of its features
        # (elementwise) before the output projection (Qiu et al. 2025).
        self.gate = None if gate is None else nn.Linear(
            dim, num_heads if gate == "headwise" else self.inner_dim, bias=False
        )  # fmt: skip
        self.core = AttentionCore(
            design,
            num_heads=num_heads,
            head_dim=self.head_dim,
            dropout=float(attn_drop),
            grid_ndim=grid_ndim,
            causal=causal,
        )
        self.proj = nn.Linear(self.inner_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def attention_heads(self, x: Tensor, mask: Tensor | None, need_weights: bool):
        """Returns ``(attention output before projection (B, N, D), values (B, N, D), weights,
        grid)``; the values come back so ``muse`` can convolve the same value projection.
        ``mask`` ``(B, *grid)``: padded positions are no keys (``AttentionCore``)."""
        self.check_input(x, mask)
        tokens, grid = flatten_grid(x)
        q, k, v = self.qkv(tokens).split([self.inner_dim, self.kv_dim, self.kv_dim], dim=-1)
        q = split_heads(q, self.num_heads)
        # Grouped-query attention: query head h reads key/value head h // (heads / kv heads).
        k, v = (self.query_groups(split_heads(t, self.num_kv_heads)) for t in (k, v))
        padding = None if mask is None else mask.flatten(1)
        out, weights = self.core(q, k, v, grid, need_weights, padding)
        out = merge_heads(out)
        if self.gate is not None:  # (B, N, heads or D): one gate per head, or per feature
            gates = torch.sigmoid(self.gate(tokens))
            out = (out.unflatten(-1, (self.num_heads, -1)) * gates.unflatten(-1, (self.num_heads, -1))).flatten(2)  # fmt: skip
        return out, merge_heads(v), weights, grid

    def query_groups(self, kv: Tensor) -> Tensor:
        """``(B, kv heads, N, d)`` -> ``(B, heads, N, d)``: each key/value head repeated for its
        group of query heads (a no-op without grouping)."""
        group = self.num_heads // self.num_kv_heads
        return kv if group == 1 else kv.repeat_interleave(group, dim=1)

    def forward(self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False):
        out, _, weights, grid = self.attention_heads(x, mask, return_weights)
        y = unflatten_grid(self.proj_drop(self.proj(out)), grid)
        return (y, {"attn": weights}) if return_weights else y

    def flops(self, grid: tuple[int, ...]) -> int:
        """With N = prod(grid), C = dim, D = heads * head_dim, K = kv heads * head_dim: qkv
        2*N*C*(D + 2K) + output projection
        2*N*D*C + the attention step (``AttentionCore.flops``: qk conv, scores, normalisation,
        weighted values over its M keys). For the defaults that step is 2*N*N*D + 4*N*N*heads +
        2*N*N*D."""
        n, c, d = self.num_positions(grid), self.dim, self.inner_dim
        projections = 2 * n * c * (d + 2 * self.kv_dim) + 2 * n * d * c
        if self.gate is not None:  # its projection, and the product with the output
            projections += 2 * n * c * self.gate.out_features + n * d
        return projections + self.core.flops(grid)
