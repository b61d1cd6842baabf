"""``mamba2``: Mamba-2's state-space layer (Dao & Gu 2024, "Transformers are SSMs"), its SSD form.

Per head h, with a scalar data-dependent step ``dt_t = softplus(x W_dt + b_dt)`` and ``A_h =
-exp(A_log_h)``: ``S_t = exp(dt_t A_h) S_{t-1} + dt_t B_t x_t^T``, ``y_t = S_t^T C_t + D_h x_t``.
That is gated linear attention with one decay per head (``recurrence.gla_chunkwise``: ``q = C``,
``k = dt B``, ``v = x``, ``g = dt A``), trained chunk by chunk. Around it, the layer of the
paper's reference (``mamba_ssm/modules/mamba2_simple.py``): one input projection to ``z``, ``x``,
``B``, ``C`` and ``dt`` (no bias); a causal depthwise conv of width 4 with SiLU over ``x``, ``B``
and ``C``; one ``B`` and ``C`` shared by the heads (one group); the output ``RMSNorm(y *
silu(z))`` and an output projection. Initialisation as the reference: ``dt`` log-uniform in
[0.001, 0.1] through ``b_dt`` (softplus's inverse), ``A`` uniform in [1, 16], ``D = 1``.

Padding (``mask``, True = real): a padded position is read as zero by the conv and writes and
decays nothing (``dt = 0`` there). A classifier (``causal=False``) uses a centred conv and the sum
of a forward and a reversed scan (``recurrence.both_ways``); ``D x`` is added once. Generation
keeps ``S`` (``H x state_dim x head_dim`` floats) and the conv's last 3 inputs
(``scan_mixer.RecurrentState``), so each new token costs the same whatever the context.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnexp.attention.base import flatten_grid, unflatten_grid
from attnexp.attention.recurrence import gla_chunkwise, gla_scores
from attnexp.attention.scan_mixer import ScanMixer, implied_map
from attnexp.attention.short_conv import ShortConv
from attnexp.util.checks import check_positive

DT_RANGE = (1e-3, 1e-1)  # the initial steps, log-uniform (the reference's dt_min, dt_max)
A_RANGE = (1.0, 16.0)  # the initial -A, uniform (the reference's A_init_range)


def step_parameters(num_heads: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Mamba-2's per-head ``(b_dt, A_log)`` as its reference initialises them: ``softplus(b_dt)``
    log-uniform in ``DT_RANGE``, ``-A = exp(A_log)`` uniform in ``A_RANGE``; the log decay of a
    step is ``-exp(A_log) softplus(x W_dt + b_dt)``."""
    low, high = DT_RANGE
    dt = torch.exp(torch.rand(num_heads) * math.log(high / low) + math.log(low))
    dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt
    return dt_bias, nn.Parameter(torch.log(torch.empty(num_heads).uniform_(*A_RANGE)))


class Mamba2(ScanMixer):
    """Mamba-2 (``mamba2``): ``expand * dim`` inner channels in heads of ``head_dim``, a state of
    ``state_dim`` per head and channel."""

    def __init__(
        self, dim: int, grid_ndim: int = 1, causal: bool = False, state_dim: int = 16,
        head_dim: int = 16, expand: int = 2, conv_size: int = 4, chunk_size: int = 64,
    ) -> None:  # fmt: skip
        super().__init__(dim, grid_ndim, causal)
        for key, value in (("state_dim", state_dim), ("head_dim", head_dim), ("expand", expand),
                           ("chunk_size", chunk_size)):  # fmt: skip
            check_positive(key, value)
        inner = expand * dim
        if inner % head_dim:
            raise ValueError(
                f"expand * dim = {inner} must be divisible by head_dim={head_dim} (the heads)"
            )
        self.inner, self.state_dim, self.head_dim = inner, state_dim, head_dim
        self.num_heads, self.chunk_size = inner // head_dim, chunk_size
        heads = self.num_heads
        self.in_proj = nn.Linear(dim, 2 * inner + 2 * state_dim + heads, bias=False)
        self.conv = ShortConv(inner + 2 * state_dim, conv_size, causal=causal, grid_ndim=grid_ndim)
        self.dt_bias, self.A_log = step_parameters(heads)
        self.D = nn.Parameter(torch.ones(heads))
        self.norm = nn.RMSNorm(inner, eps=1e-5)
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def state_floats(self, grid: tuple[int, ...]) -> int:
        """``S`` (``H x state_dim x head_dim``) and the conv's last ``k - 1`` inputs."""
        self.check_grid(grid)
        tail = (self.conv.kernel_size - 1) * (self.inner + 2 * self.state_dim)
        return self.num_heads * self.state_dim * self.head_dim + tail

    def forward(self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False):
        self.check_input(x, mask)
        tokens, grid = flatten_grid(x)
        real = None if mask is None else mask.flatten(1)
        inner, n, heads = self.inner, tokens.shape[1], self.num_heads
        z, xbc, dt = self.in_proj(tokens).split([inner, inner + 2 * self.state_dim, heads], -1)
        xbc, tail = self.conv(xbc, grid, real, self.conv_tail("conv"))
        self.keep_tail("conv", tail)
        xs, b, c = xbc.split([inner, self.state_dim, self.state_dim], -1)
        dt = F.softplus(dt + self.dt_bias)  # (B, N, H)
        if real is not None:  # a padded position writes nothing and decays nothing
            dt = dt * real[..., None].to(dt.dtype)
        v = xs.view(-1, n, heads, self.head_dim).transpose(1, 2)  # (B, H, N, P)
        dt = dt.transpose(1, 2)[..., None]  # (B, H, N, 1)
        q = c[:, None].expand(-1, heads, -1, -1)
        k = b[:, None] * dt
        g = dt * -torch.exp(self.A_log.float()).view(-1, 1, 1).to(dt.dtype)
        y = self.scan(lambda *t, state: gla_chunkwise(*t, self.chunk_size, state), q, k, v, g)
        y = y + self.D.view(-1, 1, 1) * v
        y = y.transpose(1, 2).flatten(2)
        out = unflatten_grid(self.out_proj(self.norm(y * F.silu(z))), grid)
        if not return_weights:
            return out
        return out, {"attn": implied_map(gla_scores, self.causal, q, k, g)}

    def flops(self, grid: tuple[int, ...]) -> int:
        """Projections ``2 N C (2 E + 2 S + H) + 2 N E C``, the conv, and the scan per direction
        (``2 N C_k (S + P) H`` within chunks of ``C_k``, ``4 N S E`` through the state), the skip,
        norm and gate ``4 N E``."""
        n, c, e, s, h = self.num_positions(grid), self.dim, self.inner, self.state_dim, self.num_heads
        chunk = min(self.chunk_size, n)
        scan = 2 * n * chunk * (s + self.head_dim) * h + 4 * n * s * e
        projections = 2 * n * c * (2 * e + 2 * s + h) + 2 * n * e * c
        return projections + self.conv.flops(n) + scan * (1 if self.causal else 2) + 4 * n * e
