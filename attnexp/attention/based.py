"""``based`` (Arora et al. 2024, "Simple linear attention language models balance the
recall-throughput tradeoff"): layers of three kinds, chosen by the block's index from ``pattern``
(cycled), as Zoology's ``Hybrid`` mixer builds them:

- ``conv``: Zoology's BaseConv with a short conv (``long_conv.BaseConv``, width ``conv_size``);
- ``taylor``: linear attention with the 2nd-order Taylor feature map on low-dimensional q and k
  (``feature_dim`` per head): ``phi(x) = [1, x / d^(1/4), vec(x x^T) / (sqrt(2) sqrt(d))]``, so
  ``phi(q).phi(k) = 1 + q.k / sqrt(d) + (q.k)^2 / (2 d)``, the Taylor expansion of ``exp(q.k /
  sqrt(d))`` (always > 0); ``y_i = sum_{j <= i} phi(q_i).phi(k_j) v_j / (sum_{j <= i}
  phi(q_i).phi(k_j) + eps)``, a scan with no decay (``recurrence.gla_chunkwise``), whose state is
  ``H x (1 + d + d^2) x (dv + 1)`` floats whatever the length (Zoology's ``based.py``, ``TaylorExp``);
- ``window``: exact softmax attention over a sliding window of ``window`` positions (``mha`` with
  its ``window`` knob), the paper's local attention.

Zoology's figure 2 runs ``[conv, taylor]`` over two layers, with ``feature_dim`` 8 and one head;
the paper's language models mix all three. A classifier runs each kind non-causally (a centred
conv, a forward plus a reversed scan, a symmetric window).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from attnexp.attention.base import (
    AttentionModule,
    Kind,
    WeightKind,
    check_heads,
    flatten_grid,
    unflatten_grid,
)
from attnexp.attention.long_conv import BaseConv
from attnexp.attention.mha import MultiHeadAttention
from attnexp.attention.recurrence import gla_chunkwise, gla_scores
from attnexp.attention.scan_mixer import ScanMixer, implied_map
from attnexp.util.checks import check_positive

LAYER_KINDS = ("conv", "taylor", "window")


def taylor_features(x: Tensor) -> Tensor:
    """``phi(x)`` ``(..., 1 + d + d^2)`` for ``x`` ``(..., d)``: ``phi(q).phi(k) = 1 + q.k /
    sqrt(d) + (q.k)^2 / (2 d)``."""
    d = x.shape[-1]
    second = (x[..., :, None] * x[..., None, :]).flatten(-2) / (2**0.5 * d**0.5)
    return torch.cat([torch.ones_like(x[..., :1]), x / d**0.25, second], dim=-1)


class TaylorLinearAttention(ScanMixer):
    """Based's linear attention: the Taylor feature map on q and k of ``feature_dim`` per head."""

    def __init__(
        self, dim: int, grid_ndim: int = 1, causal: bool = False, num_heads: int = 1,
        feature_dim: int = 16, chunk_size: int = 64, eps: float = 1e-12,
    ) -> None:  # fmt: skip
        super().__init__(dim, grid_ndim, causal)
        check_heads(dim, num_heads)
        check_positive("feature_dim", feature_dim)
        self.num_heads, self.feature_dim, self.chunk_size, self.eps = num_heads, feature_dim, chunk_size, eps
        self.qk = nn.Linear(dim, 2 * num_heads * feature_dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def state_floats(self, grid: tuple[int, ...]) -> int:
        """``H x (1 + d + d^2) x (dv + 1)``: the numerator's and the normaliser's sums."""
        self.check_grid(grid)
        features = 1 + self.feature_dim + self.feature_dim**2
        return self.num_heads * features * (self.dim // self.num_heads + 1)

    def forward(self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False):
        self.check_input(x, mask)
        tokens, grid = flatten_grid(x)
        h = self.num_heads
        q, k = (t.unflatten(-1, (h, -1)).transpose(1, 2) for t in self.qk(tokens).chunk(2, -1))
        v = self.v(tokens).unflatten(-1, (h, -1)).transpose(1, 2)
        fq, fk = taylor_features(q), taylor_features(k)
        v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # the normaliser as one more value
        if mask is not None:  # a padded key adds nothing to either sum
            real = mask.flatten(1)[:, None, :, None].to(fk.dtype)
            fk, v1 = fk * real, v1 * real
        g = fq.new_zeros(*fq.shape[:-1], 1)  # no decay
        both = self.scan(lambda *t, state: gla_chunkwise(*t, self.chunk_size, state), fq, fk, v1, g)
        out = both[..., :-1] / (both[..., -1:] + self.eps)
        y = unflatten_grid(self.proj(out.transpose(1, 2).flatten(2)), grid)
        if not return_weights:
            return y
        similarity = implied_map(gla_scores, self.causal, fq, fk, g)
        return y, {"attn": similarity / (similarity.sum(-1, keepdim=True) + self.eps)}

    def flops(self, grid: tuple[int, ...]) -> int:
        """Projections ``2 N C (2 H d + 2 C)``, the feature map ``N H F`` (``F = 1 + d + d^2``),
        and the scan per direction (``2 N C_k F H`` and ``2 N C_k (C + H)`` within chunks of
        ``C_k``, ``4 N F (C + H)`` through the state), the division ``N C``."""
        n, c, h = self.num_positions(grid), self.dim, self.num_heads
        f, chunk = 1 + self.feature_dim + self.feature_dim**2, min(self.chunk_size, n)
        scan = 2 * n * chunk * f * h + 2 * n * chunk * (c + h) + 4 * n * f * (c + h)
        projections = 2 * n * c * (2 * h * self.feature_dim + 2 * c)
        return projections + 2 * n * h * f + scan * (1 if self.causal else 2) + n * c


class Based(AttentionModule):
    """Based (``based``): the block at index ``layer`` is ``pattern[layer % len(pattern)]``."""

    kind = Kind.MIXER
    weight_kinds = {"attn": WeightKind.ATTENTION_MAP}  # a block's own: its mixer's (none for conv)

    def __init__(
        self, dim: int, grid_ndim: int = 1, causal: bool = False, pattern: Sequence[str] = ("conv", "taylor"),
        feature_dim: int = 16, num_heads: int = 1, conv_size: int = 3, window: int = 64,
        chunk_size: int = 64, layer: int = 0,
    ) -> None:  # fmt: skip
        super().__init__(dim, grid_ndim, causal)
        kinds = list(pattern)
        if not kinds or any(kind not in LAYER_KINDS for kind in kinds):
            raise ValueError(f"pattern must be a non-empty list of {', '.join(LAYER_KINDS)}; got {pattern!r}")
        check_positive("window", window)
        self.layer_kind = kinds[layer % len(kinds)]
        if self.layer_kind == "conv":
            self.mixer: AttentionModule = BaseConv(dim, grid_ndim, causal, kernel_by_layer=[conv_size])
        elif self.layer_kind == "taylor":
            self.mixer = TaylorLinearAttention(dim, grid_ndim, causal, num_heads, feature_dim, chunk_size)
        else:
            self.mixer = MultiHeadAttention(dim, grid_ndim, causal, num_heads=num_heads, window=window)
        self.weight_kinds = self.mixer.weight_kinds  # a conv block has no map

    @property
    def decodable(self) -> bool:
        """Every kind generates from what it keeps: the conv's last inputs, the linear attention's
        sums, the window's keys and values."""
        return bool(getattr(self.mixer, "decodable", False))

    @property
    def bounded_state(self) -> bool:
        """Whether what the block keeps is bounded (conv and taylor; not a window's keys)."""
        return bool(getattr(self.mixer, "bounded_state", False))

    def empty_cache(self):
        return self.mixer.empty_cache()

    @property
    def cache(self):
        """The layer's decoding state (its mixer's), set while ``Transformer.decoding()`` is open."""
        return self.mixer.cache

    @cache.setter
    def cache(self, value) -> None:
        self.mixer.cache = value

    def state_floats(self, grid: tuple[int, ...]) -> int | None:
        return self.mixer.state_floats(grid)

    def forward(self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False):
        return self.mixer(x, mask=mask, return_weights=return_weights)

    def flops(self, grid: tuple[int, ...]) -> int:
        return self.mixer.flops(grid)
