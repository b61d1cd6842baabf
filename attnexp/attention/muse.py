"""``muse``: parallel multi-scale attention (Zhao et al., 2019, "MUSE: Parallel Multi-Scale
Attention for Sequence to Sequence Learning").

Self-attention as in ``mha`` plus, in parallel, a convolution branch on the same value projection
V: for each kernel size k a depthwise conv (none for k = 1) then a pointwise conv to C channels,
the branches mixed by ``softmax(branch_logits)`` and added to the attention output. On a 2-D grid
the depthwise convs are k x k over the grid, not 1-D over raster order. ``causal=True`` (sequences):
causal attention as ``mha``'s and causal depthwise convs (k - 1 zeros on the left only).

The widely copied reference re-wraps its mixing weights in a fresh ``nn.Parameter`` inside
``forward``, so they never train; here ``branch_logits`` is created once and softmax is applied
functionally.

The pointwise step runs fused: one matmul over the concatenated attention output and branch
outputs (V itself stands in for the k = 1 branch) applies the attention's output projection and
every branch's pointwise weights, with the softmax mixing weights folded in, instead of a
projection, one pointwise conv per branch, a weighted sum and an add. The depthwise convs run one per branch in
channels-last memory format (how tokens-last activations already lie): on CPU, PyTorch's depthwise
kernel with a channel multiplier (one grouped conv for all branches, kernels zero-padded to the
largest size) measured 2-10x slower than separate channels-last depthwise convs, and padding
[3, 15] to 15 x 15 would also double the taps. Per-branch parameters stay separate and readable;
the fused pointwise weights are rebuilt in every forward, which is cheap because they are tiny.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attnexp.attention.base import (
    WeightKind,
    channels_first,
    channels_last,
    grid_conv,
    unflatten_grid,
)
from attnexp.attention.causal import causal_conv1d
from attnexp.attention.masking import zero_padding
from attnexp.attention.mha import MultiHeadAttention


def check_kernel_sizes(kernel_sizes: Sequence[int]) -> tuple[int, ...]:
    """Refuse anything but a non-empty list of distinct odd positive ints."""
    sizes = tuple(kernel_sizes) if not isinstance(kernel_sizes, (str, int)) else ()
    ok = all(not isinstance(k, bool) and isinstance(k, int) and k > 0 and k % 2 for k in sizes)
    if not sizes or not ok or len(set(sizes)) != len(sizes):
        raise ValueError(
            "kernel_sizes must be a non-empty list of distinct odd positive ints (1 = pointwise "
            f"only), got {kernel_sizes!r}"
        )
    return sizes


class MUSE(MultiHeadAttention):
    """``mha`` plus a multi-scale depthwise-separable convolution branch on its values.

    Takes every argument of ``mha`` (``attention``: heads, dropouts and the design knobs) plus
    ``kernel_sizes``. Per-branch parameters (for the ``kernel_sizes`` entry k, key ``"k{k}"``):
    ``depthwise[k]`` ``(D, 1, *[k] * grid_ndim)`` (length k on sequences, k x k on images) and
    ``depthwise_bias[k]`` ``(D,)`` for k > 1; ``pointwise[k]`` ``(C, D)`` and ``pointwise_bias[k]``
    ``(C,)``; and ``branch_logits`` ``(len(kernel_sizes),)``.

    ``weights`` (with ``return_weights=True``): ``{"attn": (B, heads, N, N),
    "branches": (len(kernel_sizes),)}``, the latter the softmax mixing weights.
    """

    weight_kinds = {"attn": WeightKind.ATTENTION_MAP, "branches": WeightKind.BRANCH_MIX}

    def __init__(
        self,
        dim: int,
        grid_ndim: int = 1,
        causal: bool = False,
        kernel_sizes: Sequence[int] = (1, 3, 5),
        layer: int = 0,
        **attention: Any,
    ) -> None:
        super().__init__(dim, grid_ndim, causal, layer=layer, **attention)
        self.kernel_sizes = check_kernel_sizes(kernel_sizes)
        d = self.inner_dim
        self.depthwise = nn.ParameterDict(
            {
                f"k{k}": nn.Parameter(torch.empty(d, 1, *[k] * grid_ndim))
                for k in self.depthwise_sizes
            }
        )
        self.depthwise_bias = nn.ParameterDict(
            {f"k{k}": nn.Parameter(torch.empty(d)) for k in self.depthwise_sizes}
        )
        self.pointwise = nn.ParameterDict(
            {f"k{k}": nn.Parameter(torch.empty(dim, d)) for k in self.kernel_sizes}
        )
        self.pointwise_bias = nn.ParameterDict(
            {f"k{k}": nn.Parameter(torch.empty(dim)) for k in self.kernel_sizes}
        )
        self.branch_logits = nn.Parameter(torch.zeros(len(self.kernel_sizes)))
        self.reset_conv_parameters()

    @property
    def depthwise_sizes(self) -> tuple[int, ...]:
        return tuple(k for k in self.kernel_sizes if k > 1)

    def reset_conv_parameters(self) -> None:
        """PyTorch's default conv init: uniform within 1/sqrt(fan_in)."""
        for k in self.depthwise_sizes:
            bound = k ** (-self.grid_ndim / 2)  # 1 / sqrt(fan_in), fan_in = k^grid_ndim
            nn.init.uniform_(self.depthwise[f"k{k}"], -bound, bound)
            nn.init.uniform_(self.depthwise_bias[f"k{k}"], -bound, bound)
        bound = 1 / math.sqrt(self.inner_dim)
        for k in self.kernel_sizes:
            nn.init.uniform_(self.pointwise[f"k{k}"], -bound, bound)
            nn.init.uniform_(self.pointwise_bias[f"k{k}"], -bound, bound)

    def fused_pointwise(self) -> tuple[Tensor, Tensor]:
        """The output projection and every branch's pointwise weights side by side, the latter
        scaled by their softmax mixing weights: ``(C, D * (1 + len(kernel_sizes)))`` in the order
        attention, ``kernel_sizes``; and the summed bias."""
        mix = zip(self.branch_logits.softmax(dim=0), self.kernel_sizes, strict=True)
        scaled = [(w * self.pointwise[f"k{k}"], w * self.pointwise_bias[f"k{k}"]) for w, k in mix]
        weight = torch.cat([self.proj.weight, *(w for w, _ in scaled)], dim=1)
        return weight, self.proj.bias + sum(b for _, b in scaled)

    def branch_inputs(
        self, values: Tensor, grid: tuple[int, ...], mask: Tensor | None = None
    ) -> list[Tensor]:
        """Each branch's depthwise output ``(B, N, D)`` (V itself for k = 1); causal: left
        padding only, so position t mixes values t - k + 1 .. t. The convs read zeros at the
        padded positions of ``mask`` ``(B, *grid)``, as at their own border."""
        v = channels_first(zero_padding(unflatten_grid(values, grid), mask))
        conv = causal_conv1d if self.causal else grid_conv
        return [
            channels_last(
                conv(v, self.depthwise[f"k{k}"], self.depthwise_bias[f"k{k}"], self.inner_dim)
            ).flatten(1, -2)
            if k > 1
            else values
            for k in self.kernel_sizes
        ]

    def state_floats(self, grid: tuple[int, ...]) -> int:
        """``mha``'s cache and the values of the positions its widest causal depthwise
        convolution reads back (``k_max - 1`` of them)."""
        widest = max(self.depthwise_sizes, default=1)
        return super().state_floats(grid) + (widest - 1) * self.inner_dim

    @property
    def decodable(self) -> bool:
        """A depthwise convolution reads earlier positions' values, which no cache keeps: only
        a MUSE whose kernels are all 1 decodes with a KV cache (the others recompute)."""
        return super().decodable and not self.depthwise_sizes

    def forward(self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False):
        out, values, weights, grid = self.attention_heads(x, mask, return_weights)
        weight, bias = self.fused_pointwise()
        # One matmul does the output projection, every pointwise conv and the mixing.
        branches = self.branch_inputs(values, grid, mask)
        y = F.linear(torch.cat([out, *branches], dim=-1), weight, bias)
        y = unflatten_grid(self.proj_drop(y), grid)
        if not return_weights:
            return y
        return y, {"attn": weights, "branches": self.branch_logits.softmax(dim=0).detach()}

    def flops(self, grid: tuple[int, ...]) -> int:
        """``mha``'s count plus, with N = prod(grid), C = dim, D = heads * head_dim: depthwise
        sum over k > 1 of 2*N*D*k^grid_ndim, pointwise 2*N*D*C*len(kernel_sizes) (one fused
        matmul; the mixing weights are folded into it)."""
        n, c, d = self.num_positions(grid), self.dim, self.inner_dim
        depthwise = sum(2 * n * d * k**self.grid_ndim for k in self.depthwise_sizes)
        pointwise = 2 * n * d * c * len(self.kernel_sizes)
        return super().flops(grid) + depthwise + pointwise
