"""The delta rule: ``deltanet`` (Yang et al. 2024, "Parallelizing Linear Transformers with the
Delta Rule over Sequence Length") and ``gated_deltanet`` (Yang et al. 2025, "Gated Delta
Networks").

Per head, ``S_t = a_t S_{t-1} (I - b_t k_t k_t^T) + b_t k_t v_t^T`` and ``o_t = S_t^T q_t``: each
step replaces the value stored under ``k_t`` by ``v_t`` in proportion ``b_t``, where linear
attention would add it (``recurrence.delta_chunkwise``, the WY form, in training). DeltaNet has
``a = 1``; Gated DeltaNet decays the state by Mamba-2's ``a_t = exp(-exp(A_log) softplus(x W_a +
b_dt))`` per head. The layer is flash-linear-attention's (``fla/layers/delta_net.py``,
``gated_deltanet.py``): q, k and v projections (no bias), each through a causal depthwise conv of
width 4 with SiLU; q and k L2-normalised per head (so ``I - b k k^T`` is a contraction), queries
scaled by ``dk^-1/2``; ``b_t = sigmoid(x W_b)`` per head; a per-head RMSNorm of ``o``, which
Gated DeltaNet gates by ``silu(x W_g)``; an output projection. Keys and values have ``dim``
features (fla's gated default widens values 2x; here both variants keep ``mha``'s widths).

Padding (``mask``, True = real): a padded position is read as zero by the convs and writes and
decays nothing (``b = 0``, ``a = 1``). A classifier (``causal=False``) uses centred convs and the
sum of a forward and a reversed scan (``recurrence.both_ways``). Generation keeps ``S`` (``H x dk
x dv`` floats) and each conv's last 3 inputs (``scan_mixer.RecurrentState``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnexp.attention.base import check_heads, flatten_grid, unflatten_grid
from attnexp.attention.mamba2 import step_parameters
from attnexp.attention.recurrence import delta_chunkwise, delta_scores
from attnexp.attention.scan_mixer import ScanMixer, implied_map
from attnexp.attention.short_conv import ShortConv
from attnexp.util.checks import check_positive


class DeltaNet(ScanMixer):
    """DeltaNet (``deltanet``); ``gated = True`` in ``GatedDeltaNet``."""

    gated = False

    def __init__(
        self, dim: int, grid_ndim: int = 1, causal: bool = False, num_heads: int = 4,
        conv_size: int = 4, chunk_size: int = 64,
    ) -> None:  # fmt: skip
        super().__init__(dim, grid_ndim, causal)
        check_heads(dim, num_heads)
        check_positive("chunk_size", chunk_size)
        self.num_heads, self.chunk_size = num_heads, chunk_size
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.convs = nn.ModuleDict(
            {name: ShortConv(dim, conv_size, causal=causal, grid_ndim=grid_ndim) for name in "qkv"}
        )
        self.beta = nn.Linear(dim, num_heads, bias=False)
        self.head_norm = nn.RMSNorm(dim // num_heads, eps=1e-5)
        self.proj = nn.Linear(dim, dim, bias=False)
        if self.gated:
            self.decay = nn.Linear(dim, num_heads, bias=False)
            self.dt_bias, self.A_log = step_parameters(num_heads)
            self.gate = nn.Linear(dim, dim, bias=False)

    def state_floats(self, grid: tuple[int, ...]) -> int:
        """``S`` (``H x dk x dv``) and the three convs' last ``k - 1`` inputs."""
        self.check_grid(grid)
        h, d = self.num_heads, self.dim
        return h * (d // h) ** 2 + 3 * (self.convs["q"].kernel_size - 1) * d

    def forward(self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False):
        self.check_input(x, mask)
        tokens, grid = flatten_grid(x)
        real = None if mask is None else mask.flatten(1)
        heads = []
        for name, t in zip("qkv", self.qkv(tokens).chunk(3, -1), strict=True):
            t, tail = self.convs[name](t, grid, real, self.conv_tail(name))
            self.keep_tail(name, tail)
            heads.append(t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2))  # (B, H, N, d)
        q, k, v = heads
        q = F.normalize(q, dim=-1) * q.shape[-1] ** -0.5
        k = F.normalize(k, dim=-1)
        beta = torch.sigmoid(self.beta(tokens)).transpose(1, 2)  # (B, H, N)
        g = self.log_decay(tokens)
        if real is not None:  # a padded position writes nothing and decays nothing
            beta = beta * real[:, None].to(beta.dtype)
            g = None if g is None else g * real[:, None].to(g.dtype)
        tensors = (q, k, v, beta) if g is None else (q, k, v, beta, g)
        out = self.head_norm(self.scan(self.chunkwise, *tensors)).transpose(1, 2).flatten(2)
        if self.gated:
            out = out * F.silu(self.gate(tokens))
        y = unflatten_grid(self.proj(out), grid)
        if not return_weights:
            return y
        tensors = (q, k, beta) if g is None else (q, k, beta, g)
        return y, {"attn": implied_map(delta_scores, self.causal, *tensors)}

    def log_decay(self, tokens: Tensor) -> Tensor | None:
        """``log a`` ``(B, H, N)``: none for DeltaNet, Mamba-2's ``-exp(A_log) dt`` when gated."""
        if not self.gated:
            return None
        dt = F.softplus(self.decay(tokens) + self.dt_bias).transpose(1, 2)
        return -torch.exp(self.A_log).view(-1, 1) * dt

    def chunkwise(
        self, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, *g: Tensor, state: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        return delta_chunkwise(q, k, v, beta, *g, chunk_size=self.chunk_size, state=state)

    def flops(self, grid: tuple[int, ...]) -> int:
        """Projections ``2 N C (4 C + H)`` (and ``2 N C (C + H)`` more gated), the convs, and the
        WY scan per direction: within chunks of ``C_k``, ``K K^T``, ``Q K^T`` and their products
        with the written values (``6 N C_k C``), the triangular solve (``N C_k^2 H``), reading and
        writing the state (``6 N C d``); the norm and gate ``4 N C``."""
        n, c, h = self.num_positions(grid), self.dim, self.num_heads
        chunk, d = min(self.chunk_size, n), c // h
        scan = 6 * n * chunk * c + n * chunk * chunk * h + 6 * n * c * d
        projections = 2 * n * c * (4 * c + h) + (2 * n * c * (c + h) if self.gated else 0)
        convs = 3 * self.convs["q"].flops(n)
        return projections + convs + scan * (1 if self.causal else 2) + 4 * n * c


class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet (``gated_deltanet``): the delta rule with Mamba-2's decay per head and an
    output gate."""

    gated = True
