"""Gated long convolutions: ``hyena`` (Poli et al. 2023, "Hyena Hierarchy") and ``base_conv``
(Arora et al. 2023, "Zoology"'s BaseConv), as Zoology builds them (``zoology/mixers/hyena.py``,
``base_conv.py``, ``convolution.py``).

A long convolution gives each channel c a filter ``h_c`` as long as the input, computed by FFT in
``O(N log N)``. The filter is implicit: an MLP of the offset's positional features (``offset /
max_len``, and ``bands`` cosine/sine pairs), so its parameters do not grow with N. The FFT runs in float64 (its rounding would otherwise leak
later inputs into earlier outputs at float32's 1e-5):

- ``hyena``: ``in_proj`` to ``x1, x2, v`` (3C), a short conv of width 3 over all three, ``y = x2 *
  (h * (x1 v) + D (x1 v))``, ``out_proj``. The filter MLP has sine activations (a learned
  frequency per unit, 1 at start), width ``filter_order`` (64) and two inner layers, and is
  modulated by ``exp(-|delta_c| r)`` (``r = |offset| / max_len``; ``delta_c`` spaced from
  ``log(0.01)/1.5`` to ``log(0.01)/0.3`` over the channels, fixed), Hyena's exponential decay.
- ``base_conv``: ``y = conv(u) * (u W + b) + u``; ``conv`` is, by the layer's index, a short conv
  of width ``kernel_by_layer[layer]`` (no activation) or, where it is -1, a long conv with an
  implicit filter (an MLP 3 -> 16 -> C with ReLU, no decay) plus ``u`` (Zoology's ``fft_conv``
  adds it). Zoology's figure 2 alternates ``[3, -1]``; the list is cycled over the layers.

**Causal** (language models): offsets ``0 .. N - 1``, each position reads itself and the past.
**Classification**: offsets in both directions, ``-(N - 1) .. N - 1`` along each axis of the grid,
so an image is convolved in 2-D (its filter is a function of ``(dy, dx)``) and appended padding,
read as zeros, changes nothing at the real positions. **Generation** recomputes: the state of a
long convolution is its whole input history (``state_floats``: ``N x C`` per long conv), so these
mixers keep no cache (``decodable`` is False), except ``base_conv``'s short layers, which keep
their conv's last inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from attnexp.attention.base import flatten_grid, unflatten_grid
from attnexp.attention.scan_mixer import ScanMixer
from attnexp.attention.short_conv import ShortConv
from attnexp.util.checks import check_positive

DECAY_TARGET, FAST_DECAY, SLOW_DECAY = 1e-2, 0.3, 1.5  # Hyena's ExponentialModulation


def offsets(grid: Sequence[int], causal: bool, device: torch.device | None = None) -> Tensor:
    """The filter's offsets ``(*kernel, D)``: ``0 .. N - 1`` causal, else ``-(n - 1) .. n - 1``
    along each of the grid's ``D`` axes."""
    if causal:
        return torch.arange(grid[0], device=device, dtype=torch.float32)[:, None]
    axes = [torch.arange(-(n - 1), n, device=device, dtype=torch.float32) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


class Sin(nn.Module):
    """``sin(w x)`` with a learned frequency ``w`` per feature (Hyena's filter activation)."""

    def __init__(self, width: int, w: float = 1.0) -> None:
        super().__init__()
        self.freq = nn.Parameter(torch.full((width,), w))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


class ImplicitFilter(nn.Module):
    """An MLP from an offset's features to one tap per channel: per axis ``offset / max_len`` and
    ``bands`` pairs ``cos, -sin(2 pi f offset / max_len)`` (Zoology's positional embedding, its
    frequencies ``f`` from 1e-4 to ``bands - 1``), optionally times Hyena's decay."""

    def __init__(
        self, channels: int, grid_ndim: int, max_len: int, hidden: int, inner_layers: int,
        activation: str, modulate: bool, bands: int = 1,
    ) -> None:  # fmt: skip
        super().__init__()
        check_positive("max_len", max_len)
        self.max_len, self.modulate = max_len, modulate
        self.register_buffer("freqs", torch.linspace(1e-4, bands - 1, bands), persistent=False)
        width = grid_ndim * (1 + 2 * bands)
        act = (lambda: Sin(hidden)) if activation == "sin" else nn.ReLU
        layers: list[nn.Module] = [nn.Linear(width, hidden), act()]
        for _ in range(inner_layers):
            layers += [nn.Linear(hidden, hidden), act()]
        layers.append(nn.Linear(hidden, channels, bias=modulate is False))
        self.mlp = nn.Sequential(*layers)
        deltas = torch.linspace(math.log(DECAY_TARGET) / SLOW_DECAY, math.log(DECAY_TARGET) / FAST_DECAY, channels)
        self.register_buffer("deltas", deltas.abs(), persistent=False)

    def forward(self, grid: Sequence[int], causal: bool, dtype: torch.dtype) -> Tensor:
        """The filter ``(C, *kernel)`` for ``offsets(grid, causal)``."""
        where = offsets(grid, causal, self.freqs.device) / self.max_len  # (*kernel, D)
        angle = 2 * math.pi * where[..., None] * self.freqs  # (*kernel, D, bands)
        features = torch.cat([where, angle.cos().flatten(-2), (-angle.sin()).flatten(-2)], -1)
        taps = self.mlp(features.to(dtype))  # (*kernel, C)
        if self.modulate:
            taps = taps * torch.exp(-where.abs().sum(-1, keepdim=True) * self.deltas).to(dtype)
        return taps.movedim(-1, 0)


def long_conv(u: Tensor, h: Tensor, causal: bool) -> Tensor:
    """``u`` ``(B, C, *grid)`` convolved per channel with ``h`` ``(C, *kernel)`` by FFT: causal
    (1-D), ``y_t = sum_{s <= t} h_{t - s} u_s``; else ``h`` is centred (offsets ``-(n - 1) ..
    n - 1`` per axis) and ``y_x = sum_s h_{x - s} u_s`` over the grid."""
    grid = u.shape[2:]
    dims = tuple(range(2, u.dim()))
    # In float64: an FFT spreads its rounding over every position, and in float32 that put 1e-5
    # of later inputs into earlier outputs; float64 keeps the causal one causal to 1e-13.
    dtype = torch.float64
    if causal:
        size = (2 * grid[0],)
        y = torch.fft.irfftn(torch.fft.rfftn(u.to(dtype), size, dims) * torch.fft.rfftn(h.to(dtype), size, (1,)), size, dims)  # fmt: skip
        return y[..., : grid[0]].to(u.dtype)
    size = tuple(3 * n - 2 for n in grid)
    kernel_dims = tuple(range(1, h.dim()))
    y = torch.fft.irfftn(torch.fft.rfftn(u.to(dtype), size, dims) * torch.fft.rfftn(h.to(dtype), size, kernel_dims), size, dims)  # fmt: skip
    for axis, n in zip(dims, grid, strict=True):
        y = y.narrow(axis, n - 1, n)
    return y.to(u.dtype)


class LongConvMixer(ScanMixer):
    """What ``hyena`` and ``base_conv`` share: no attention map (a filter per channel, not one
    map), and the whole history as their state wherever a long convolution runs; a layer with a
    short convolution only (``base_conv``'s short layers) continues from its last inputs."""

    weight_kinds = {}

    def __init__(self, dim: int, grid_ndim: int = 1, causal: bool = False) -> None:
        super().__init__(dim, grid_ndim, causal)
        self.long_channels = 0  # channels through a long convolution (its state is N x those)
        self.short: ShortConv | None = None  # a short convolution, if any

    @property
    def bounded_state(self) -> bool:
        """A long convolution keeps its whole input; a short one its last ``k - 1`` inputs."""
        return self.long_channels == 0

    @property
    def decodable(self) -> bool:
        """Causal, with no long convolution: the short one continues from its kept inputs."""
        return self.causal and self.bounded_state

    def state_floats(self, grid: tuple[int, ...]) -> int:
        """The long convolution's input so far (``N x channels``) and the short conv's last
        inputs: what continuing the sequence needs, growing with N."""
        n = self.num_positions(grid)
        tail = 0 if self.short is None else (self.short.kernel_size - 1) * self.short.conv.in_channels
        return n * self.long_channels + tail

    def grid_of(self, tokens: Tensor, grid: tuple[int, ...], real: Tensor | None) -> Tensor:
        """``tokens`` ``(B, N, C)`` as ``(B, C, *grid)``, zero at padded positions."""
        if real is not None:
            tokens = tokens * real[..., None].to(tokens.dtype)
        return tokens.transpose(1, 2).unflatten(-1, grid)


class Hyena(LongConvMixer):
    """Hyena of order 2 with one head (``hyena``), as Zoology's figure 2 runs it."""

    def __init__(
        self, dim: int, grid_ndim: int = 1, causal: bool = False, filter_order: int = 64,
        short_conv_size: int = 3, max_len: int = 1024,
    ) -> None:  # fmt: skip
        super().__init__(dim, grid_ndim, causal)
        check_positive("filter_order", filter_order)
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.short = ShortConv(3 * dim, short_conv_size, causal=causal, activation=False, grid_ndim=grid_ndim)
        self.filter = ImplicitFilter(dim, grid_ndim, max_len, filter_order, inner_layers=2,
                                     activation="sin", modulate=True)  # fmt: skip
        self.D = nn.Parameter(torch.randn(dim))  # the filter's bias: a skip per channel
        self.out_proj = nn.Linear(dim, dim)
        self.long_channels = dim

    def forward(self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False):
        self.check_input(x, mask)
        tokens, grid = flatten_grid(x)
        real = None if mask is None else mask.flatten(1)
        u, _ = self.short(self.in_proj(tokens), grid, real)
        x1, x2, v = u.chunk(3, dim=-1)
        v = self.grid_of(v * x1, grid, real)  # (B, C, *grid)
        h = self.filter(grid, self.causal, v.dtype)
        v = long_conv(v, h, self.causal) + self.D.view(-1, *[1] * len(grid)) * v
        y = unflatten_grid(self.out_proj(v.flatten(2).transpose(1, 2) * x2), grid)
        return (y, {}) if return_weights else y

    def flops(self, grid: tuple[int, ...]) -> int:
        """Projections ``2 N C (3 C + C)``, the short conv, the gates and skip ``3 N C``, and the
        FFT convolution: ``5 F log2 F`` per transform of ``F`` points (three per channel) and the
        spectrum product; the filter MLP over the offsets is not counted (it does not depend on
        the batch)."""
        n, c = self.num_positions(grid), self.dim
        return 2 * n * c * 4 * c + self.short.flops(n) + 3 * n * c + fft_flops(grid, self.causal) * c


def fft_flops(grid: tuple[int, ...], causal: bool) -> int:
    """FLOPs of one channel's FFT convolution: three transforms of ``F`` points, ``5 F log2 F``
    each (the usual count), and ``6 F`` for the complex product."""
    points = 2 * grid[0] if causal else math.prod(3 * n - 2 for n in grid)
    return int(3 * 5 * points * math.log2(max(points, 2)) + 6 * points)


class BaseConv(LongConvMixer):
    """Zoology's BaseConv (``base_conv``): a projection gated by a short or a long convolution."""

    def __init__(
        self, dim: int, grid_ndim: int = 1, causal: bool = False, kernel_by_layer: Sequence[int] = (3, -1),
        filter_hidden: int = 16, max_len: int = 1024, layer: int = 0,
    ) -> None:  # fmt: skip
        super().__init__(dim, grid_ndim, causal)
        check_positive("filter_hidden", filter_hidden)
        sizes = list(kernel_by_layer)
        if not sizes or any(not isinstance(k, int) or (k < 1 and k != -1) for k in sizes):
            raise ValueError(
                f"kernel_by_layer must be a non-empty list of widths >= 1 or -1 (a long convolution), "
                f"got {kernel_by_layer!r}"
            )
        self.kernel_size = sizes[layer % len(sizes)]
        self.projection = nn.Linear(dim, dim)
        if self.kernel_size == -1:
            self.filter = ImplicitFilter(dim, grid_ndim, max_len, filter_hidden, inner_layers=0,
                                         activation="relu", modulate=False)  # fmt: skip
            self.long_channels = dim
        else:
            self.short = ShortConv(dim, self.kernel_size, causal=causal, activation=False, grid_ndim=grid_ndim)

    def forward(self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False):
        self.check_input(x, mask)
        tokens, grid = flatten_grid(x)
        real = None if mask is None else mask.flatten(1)
        if self.short is not None:
            conv, tail = self.short(tokens, grid, real, self.conv_tail("conv"))
            self.keep_tail("conv", tail)
        else:
            u = self.grid_of(tokens, grid, real)
            conv = long_conv(u, self.filter(grid, self.causal, u.dtype), self.causal) + u
            conv = conv.flatten(2).transpose(1, 2)
        y = unflatten_grid(conv * self.projection(tokens) + tokens, grid)
        return (y, {}) if return_weights else y

    def flops(self, grid: tuple[int, ...]) -> int:
        """The projection ``2 N C^2``, the gate and residual ``2 N C``, and the convolution: the
        short one's taps or the FFT's (``fft_flops`` per channel)."""
        n, c = self.num_positions(grid), self.dim
        conv = self.short.flops(n) if self.short is not None else fft_flops(grid, self.causal) * c
        return 2 * n * c * c + 2 * n * c + conv
