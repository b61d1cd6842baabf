"""``mha``: multi-head scaled dot-product self-attention (Vaswani et al., 2017), with every knob
of the attention design space (``attnexp.attention.design``) as a constructor argument.

On a 2-D grid every position attends to all H*W positions, as BoTNet's MHSA does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attnexp.attention.base import (
    AttentionModule,
    Kind,
    WeightKind,
    flatten_grid,
    unflatten_grid,
)
from attnexp.attention.design import QK_NORM_EPS, AttentionCore, AttentionDesign, KVCache
from attnexp.util.checks import check_int, check_positive, check_probability


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
DIFF_NORM_EPS = 1e-5  # differential's per-head RMSNorm (the paper's code)


def differential_lambda_init(layer: int) -> float:
    """Differential attention's ``lambda_init = 0.8 - 0.6 exp(-0.3 l)`` for the block at 0-based
    index ``l`` (Ye et al. 2024: ``l - 1`` for their 1-based layers)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer)


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

    ``forget_gate`` (a design knob; causal): the Forgetting Transformer (Lin et al., 2025): per
    head ``f_l = sigmoid(w_h . x_l + b_h)`` (bias from 0), and score ``s_ij + sum_{j < l <= i} log
    f_l``.

    ``differential`` (Ye et al., 2024): each head's q and k halves (``head_dim / 2`` features each)
    give two softmax-style maps, ``A1 - lambda A2`` weighs the head's values (``head_dim``), then
    a per-head RMSNorm (one gain shared by the heads) and a factor ``1 - lambda_init``. ``lambda =
    exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init``, the four vectors of ``head_dim / 2`` drawn
    from N(0, 0.1) and shared by the heads; ``lambda_init = 0.8 - 0.6 exp(-0.3 layer)`` for the
    block at 0-based index ``layer`` (the backbone passes it). Same projections as ``mha``, so
    equal parameters but for the four vectors and the norm's gain. Every design knob acts on each
    of the two maps.

    ``kv_latent_dim`` (``None``: off): multi-head latent attention's key/value compression
    (DeepSeek-V2): ``c = RMSNorm(x W_dkv)`` of this width, then ``k, v = c W_uk, c W_uv``. Keys get
    ``rope`` (if on) after the up-projection; DeepSeek-V2's decoupled rope keys, which let
    inference fold ``W_uk`` into the queries, are not built.

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
        differential: bool = False,
        kv_latent_dim: int | None = None,
        layer: int = 0,
        **design: Any,
    ) -> None:
        super().__init__(dim, grid_ndim, causal)
        self.head_dim = resolve_head_dim(dim, num_heads, head_dim)
        check_probability("attn_drop", attn_drop)
        check_probability("proj_drop", proj_drop)
        check_int("layer", layer, 0)
        self.num_kv_heads = resolve_kv_heads(num_heads, num_kv_heads)
        design = AttentionDesign.from_knobs(**design)
        self.num_heads = num_heads
        self.inner_dim = num_heads * self.head_dim
        self.kv_dim = self.num_kv_heads * self.head_dim
        if kv_latent_dim is None:
            self.qkv = nn.Linear(dim, self.inner_dim + 2 * self.kv_dim, bias=qkv_bias)
            self.kv_norm = self.kv_up = None
        else:  # q and the latent from x, then k and v up from the normed latent
            check_int("kv_latent_dim", kv_latent_dim, 1)
            self.qkv = nn.Linear(dim, self.inner_dim + kv_latent_dim, bias=qkv_bias)
            self.kv_norm = nn.RMSNorm(kv_latent_dim, eps=QK_NORM_EPS)
            self.kv_up = nn.Linear(kv_latent_dim, 2 * self.kv_dim, bias=False)
        self.kv_latent_dim = kv_latent_dim
        # forget_gate: log f per head and position from x (bias from 0, as the paper's code)
        self.forget = nn.Linear(dim, num_heads) if design.forget_gate else None
        if self.forget is not None:
            nn.init.zeros_(self.forget.bias)
        if not isinstance(differential, bool):
            raise ValueError(f"differential must be true or false, got {differential!r}")
        self.maps = 2 if differential else 1  # softmax maps per head
        if differential:
            split = 4 if design.rope else 2
            if self.head_dim % split:
                raise ValueError(
                    f"differential splits each head's q and k into two halves{' that rope rotates in pairs' if design.rope else ''}: "
                    f"it needs head_dim divisible by {split}, got head_dim={self.head_dim}"
                )  # fmt: skip
            half = self.head_dim // 2
            self.lambda_init = differential_lambda_init(layer)
            self.lambdas = nn.ParameterDict(
                {name: nn.Parameter(torch.randn(half) * 0.1) for name in ("q1", "k1", "q2", "k2")}
            )
            self.head_norm = nn.RMSNorm(self.head_dim, eps=DIFF_NORM_EPS)
        if gate is not None and gate not in GATES:
            raise ValueError(f"gate must be null (off) or one of {', '.join(GATES)}, got {gate!r}")
        # gate: sigma(x W_g) scales each head's output (headwise) or each of its features
        # (elementwise) before the output projection (Qiu et al. 2025).
        self.gate = None if gate is None else nn.Linear(
            dim, num_heads if gate == "headwise" else self.inner_dim, bias=False
        )  # fmt: skip
        self.core = AttentionCore(
            design,
            num_heads=num_heads * self.maps,
            head_dim=self.head_dim // self.maps,
            dropout=float(attn_drop),
            grid_ndim=grid_ndim,
            causal=causal,
            maps_per_head=self.maps,
            value_dim=self.head_dim,
        )
        self.proj = nn.Linear(self.inner_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # While set (``attnexp.training.generate``'s cached decoding), each forward reads the
        # positions after those the cache holds, attends to them all and adds its own.
        self.cache: KVCache | None = None

    @property
    def decodable(self) -> bool:
        """Whether it can generate with a ``KVCache`` (``AttentionCore.decodable``)."""
        return self.core.decodable

    def empty_cache(self) -> KVCache:
        return KVCache()
    def attention_heads(self, x: Tensor, mask: Tensor | None, need_weights: bool):
        """Returns ``(attention output before projection (B, N, D), values (B, N, D), weights,
        grid)``; the values come back so ``muse`` can convolve the same value projection.
        ``mask`` ``(B, *grid)``: padded positions are no keys (``AttentionCore``)."""
        self.check_input(x, mask)
        tokens, grid = flatten_grid(x)
        if self.kv_up is None:
            q, k, v = self.qkv(tokens).split([self.inner_dim, self.kv_dim, self.kv_dim], dim=-1)
        else:
            q, latent = self.qkv(tokens).split([self.inner_dim, self.kv_latent_dim], dim=-1)
            k, v = self.kv_up(self.kv_norm(latent)).chunk(2, dim=-1)
        # Each head's q and k as ``maps`` heads of head_dim / maps features (differential: two).
        q = split_heads(q, self.num_heads * self.maps)
        # Grouped-query attention: query head h reads key/value head h // (heads / kv heads).
        k = self.query_groups(split_heads(k, self.num_kv_heads * self.maps))
        v = self.query_groups(split_heads(v, self.num_kv_heads))
        padding = None if mask is None else mask.flatten(1)
        log_forget = None
        if self.forget is not None:  # (B, heads, N), in float32 at least (under autocast too)
            logits = self.forget(tokens)
            log_forget = F.logsigmoid(logits.to(torch.promote_types(logits.dtype, torch.float32)))
            log_forget = log_forget.transpose(1, 2)
        values = v.repeat_interleave(self.maps, dim=1) if self.maps > 1 else v
        if self.cache is not None:
            if padding is not None or need_weights:
                raise ValueError("decoding with a cache takes real tokens only and gives no weights")
            out, weights = self.core.decode(q, k, values, self.cache, log_forget), None
        else:
            out, weights = self.core(q, k, values, grid, need_weights, padding, log_forget)
        if self.maps > 1:
            out, weights = self.difference(out, weights)
        out = merge_heads(out)
        if self.gate is not None:  # (B, N, heads or D): one gate per head, or per feature
            gates = torch.sigmoid(self.gate(tokens))
            out = (out.unflatten(-1, (self.num_heads, -1)) * gates.unflatten(-1, (self.num_heads, -1))).flatten(2)  # fmt: skip
        return out, merge_heads(v), weights, grid

    def query_groups(self, kv: Tensor) -> Tensor:
        """``(B, kv heads * m, N, d)`` -> ``(B, heads * m, N, d)`` (m maps per head): each
        key/value head repeated for its group of query heads (a no-op without grouping)."""
        group = self.num_heads // self.num_kv_heads
        if group == 1:
            return kv
        return kv.unflatten(1, (self.num_kv_heads, -1)).repeat_interleave(group, dim=1).flatten(1, 2)

    def differential_lambda(self) -> Tensor:
        """``lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init`` (a scalar)."""
        p = self.lambdas
        return torch.exp((p["q1"] * p["k1"]).sum()) - torch.exp((p["q2"] * p["k2"]).sum()) + self.lambda_init

    def difference(self, out: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Differential attention's ``(A1 - lambda A2) V`` per head ``(B, heads, N, head_dim)``,
        normed and scaled by ``1 - lambda_init``, from the maps' outputs ``(B, 2 heads, N,
        head_dim)``; the map ``A1 - lambda A2`` from the maps' weights."""
        lam = self.differential_lambda()
        first, second = out.unflatten(1, (self.num_heads, 2)).unbind(2)
        out = self.head_norm(first - lam * second) * (1 - self.lambda_init)
        if weights is not None:
            first, second = weights.unflatten(1, (self.num_heads, 2)).unbind(2)
            weights = first - lam * second
        return out, weights

    def forward(self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False):
        out, _, weights, grid = self.attention_heads(x, mask, return_weights)
        y = unflatten_grid(self.proj_drop(self.proj(out)), grid)
        return (y, {"attn": weights}) if return_weights else y

    def state_floats(self, grid: tuple[int, ...]) -> int:
        """The KV cache at N = prod(grid) positions: ``2 N`` key/value heads x head width (a
        cache holds each key/value head once under GQA), or ``N x kv_latent_dim`` (MLA caches
        the latent), plus the forget gates' running sums."""
        n = self.num_positions(grid)
        floats = n * self.kv_latent_dim if self.kv_up is not None else 2 * n * self.kv_dim
        return floats + (n * self.num_heads if self.forget is not None else 0)

    def flops(self, grid: tuple[int, ...]) -> int:
        """With N = prod(grid), C = dim, D = heads * head_dim, K = kv heads * head_dim: qkv
        2*N*C*(D + 2K) + output projection
        2*N*D*C + the attention step (``AttentionCore.flops``: qk conv, scores, normalisation,
        weighted values over its M keys). For the defaults that step is 2*N*N*D + 4*N*N*heads +
        2*N*N*D."""
        n, c, d = self.num_positions(grid), self.dim, self.inner_dim
        if self.kv_up is None:
            projections = 2 * n * c * (d + 2 * self.kv_dim) + 2 * n * d * c
        else:  # q and the latent, then k and v up from it
            r = self.kv_latent_dim
            projections = 2 * n * c * (d + r) + 2 * n * r * 2 * self.kv_dim + 2 * n * d * c
        if self.forget is not None:
            projections += 2 * n * c * self.num_heads
        if self.maps > 1:  # A1 V - lambda A2 V
            projections += 2 * n * d
        if self.gate is not None:  # its projection, and the product with the output
            projections += 2 * n * c * self.gate.out_features + n * d
        return projections + self.core.flops(grid)
