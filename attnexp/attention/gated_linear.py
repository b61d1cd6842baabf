"""Linear attention with decay: ``retnet`` (a fixed decay per head) and ``gla`` (a data-dependent
decay per key feature), on ``attnexp.attention.recurrence``'s gated linear attention.

Both compute, per head, ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T`` and ``o_t = S_t^T q_t``,
chunk by chunk in training (``gla_chunkwise``: time and memory linear in N), then a per-head
RMSNorm of ``o``, a SiLU output gate ``silu(x W_r)`` and the output projection, as the papers'
reference layers do (RetNet's GroupNorm and swish gate; GLA's, as flash-linear-attention's
``fla/layers/gla.py`` builds it).

- ``retnet`` (Sun et al. 2023): ``exp(g) = gamma_h = 1 - 2^(-5 - h)`` for heads h = 0..H-1, the
  paper's; rotary positions on q and k of a sequence (RetNet's xPos is a rotation with a decay,
  and the decay is already gamma here; an image has only the decay along its raster order); keys
  scaled by ``dk^-1/2``.
- ``gla`` (Yang et al. 2024): ``g_t = logsigmoid(x W_1 W_2) / 16`` per key feature, from a
  rank-16 projection (the paper's low-rank gate and normaliser 16); queries scaled by
  ``dk^-1/2``; keys half the width of values (``key_ratio: 0.5``, the paper's).

**Padding** (``mask``, True = real): a padded position writes nothing (k, v = 0) and decays
nothing (g = 0), so the state the real positions see is the one without it.

**Classification** (``causal=False``): the sum of a forward scan and a scan of the reversed
sequence (as Hydra and Vision Mamba make a causal mixer bidirectional), over the flattened grid;
each position so reads every other, its own state twice.

**Generation** (``decodable``): a causal mixer keeps only ``S`` (``H x dk x dv`` floats per layer)
and its position count while ``Transformer.decoding()`` is open (``scan_mixer.RecurrentState``):
each new token costs the same whatever the context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnexp.attention.base import flatten_grid, unflatten_grid
from attnexp.attention.design import rotary
from attnexp.attention.recurrence import gla_chunkwise, gla_scores
from attnexp.attention.scan_mixer import ScanMixer, implied_map
from attnexp.util.checks import check_positive, check_ratio

GLA_GATE_RANK = 16  # the low-rank gate projection's width (GLA's)
GLA_GATE_NORMALIZER = 16  # g = logsigmoid(.) / 16 (GLA's tau)


class GatedLinearMixer(ScanMixer):
    """The layer both variants share; a subclass gives the log decays (``log_decay``)."""

    rope = False  # rotary positions on q and k
    scale_keys = False  # dk^-1/2 on k (RetNet) rather than on q (GLA)

    def __init__(
        self, dim: int, grid_ndim: int = 1, causal: bool = False, num_heads: int = 4,
        key_ratio: float = 1.0, chunk_size: int = 64,
    ) -> None:  # fmt: skip
        super().__init__(dim, grid_ndim, causal)
        check_positive("num_heads", num_heads)
        check_positive("chunk_size", chunk_size)
        check_ratio("key_ratio", key_ratio)
        key_dim = int(dim * key_ratio)
        if dim % num_heads or key_dim % num_heads:
            raise ValueError(
                f"dim={dim} and its key width {key_dim} (key_ratio={key_ratio}) must be divisible "
                f"by num_heads={num_heads}"
            )
        # Rotary positions along a sequence; on an image the decay along the flattened raster
        # order is the only position information (as a 1-D scan of an image has).
        self.rotates = self.rope and grid_ndim == 1
        if self.rotates and (key_dim // num_heads) % 2:
            raise ValueError(f"rotary positions rotate feature pairs: the key head width {key_dim // num_heads} must be even")  # fmt: skip
        self.num_heads, self.key_dim, self.chunk_size = num_heads, key_dim, chunk_size
        self.qk = nn.Linear(dim, 2 * key_dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.gate = nn.Linear(dim, dim, bias=False)
        self.head_norm = nn.RMSNorm(dim // num_heads, eps=1e-5)
        self.proj = nn.Linear(dim, dim)

    def state_floats(self, grid: tuple[int, ...]) -> int:
        """``S``: ``H x dk x dv`` floats, whatever the length."""
        self.check_grid(grid)
        h = self.num_heads
        return h * (self.key_dim // h) * (self.dim // h)

    def log_decay(self, tokens: Tensor) -> Tensor:
        """``g <= 0`` ``(B, H, N, dk / H)`` or ``(B, H, N, 1)`` for ``tokens`` ``(B, N, C)``."""
        raise NotImplementedError

    def forward(self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False):
        self.check_input(x, mask)
        tokens, grid = flatten_grid(x)
        heads = self.num_heads
        q, k = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in self.qk(tokens).chunk(2, -1))
        v = self.v(tokens).unflatten(-1, (heads, -1)).transpose(1, 2)
        g = self.log_decay(tokens)
        scale = q.shape[-1] ** -0.5
        q, k = (q, k * scale) if self.scale_keys else (q * scale, k)
        start = self.cache.length if self.cache is not None else 0
        if self.rotates:
            positions = torch.arange(start, start + q.shape[-2], device=q.device)
            q, k = rotary(q, positions), rotary(k, positions)
        if mask is not None:  # a padded position writes nothing and decays nothing
            real = mask.flatten(1)[:, None, :, None]
            k, v, g = k * real, v * real, g * real
        out = self.scan(lambda *t, state: gla_chunkwise(*t, self.chunk_size, state), q, k, v, g)
        out = self.head_norm(out).transpose(1, 2).flatten(2) * F.silu(self.gate(tokens))
        y = unflatten_grid(self.proj(out), grid)
        if not return_weights:
            return y
        return y, {"attn": implied_map(gla_scores, self.causal, q, k, g)}

    def flops(self, grid: tuple[int, ...]) -> int:
        """Projections ``2 N C (2 K + 3 C)`` (q, k of width K; v, gate, output), the chunkwise
        scan per direction (``2 N C dk`` within each chunk's masked products over ``C`` keys,
        plus reading and writing the state, ``4 N K dv``), the norm and gate ``4 N C``."""
        n, c, kdim, h = self.num_positions(grid), self.dim, self.key_dim, self.num_heads
        dv, chunk = c // h, min(self.chunk_size, n)
        scan = 2 * n * chunk * kdim + 2 * n * chunk * c + 4 * n * kdim * dv
        return 2 * n * c * (2 * kdim + 3 * c) + scan * (1 if self.causal else 2) + 4 * n * c


class RetNet(GatedLinearMixer):
    """Retention (``retnet``): a fixed decay ``gamma_h = 1 - 2^(-5 - h)`` per head."""

    rope = True
    scale_keys = True

    def __init__(
        self, dim: int, grid_ndim: int = 1, causal: bool = False, num_heads: int = 4,
        key_ratio: float = 1.0, chunk_size: int = 64,
    ) -> None:  # fmt: skip
        super().__init__(dim, grid_ndim, causal, num_heads, key_ratio, chunk_size)
        gammas = 1 - torch.pow(2.0, -5.0 - torch.arange(num_heads, dtype=torch.float64))
        self.register_buffer("log_gamma", torch.log(gammas).float(), persistent=False)

    def log_decay(self, tokens: Tensor) -> Tensor:
        b, n = tokens.shape[:2]
        return self.log_gamma.view(1, -1, 1, 1).expand(b, -1, n, 1).to(tokens.dtype)


class GLA(GatedLinearMixer):
    """Gated linear attention (``gla``): ``g_t = logsigmoid(x W_1 W_2) / 16`` per key feature."""

    def __init__(
        self, dim: int, grid_ndim: int = 1, causal: bool = False, num_heads: int = 4,
        key_ratio: float = 0.5, chunk_size: int = 64,
    ) -> None:  # fmt: skip
        super().__init__(dim, grid_ndim, causal, num_heads, key_ratio, chunk_size)
        self.decay = nn.Sequential(
            nn.Linear(dim, GLA_GATE_RANK, bias=False), nn.Linear(GLA_GATE_RANK, self.key_dim)
        )

    def log_decay(self, tokens: Tensor) -> Tensor:
        logits = self.decay(tokens).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        return F.logsigmoid(logits.float()).to(tokens.dtype) / GLA_GATE_NORMALIZER
