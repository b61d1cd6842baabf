"""``se``: Squeeze-and-Excitation (Hu et al., 2018, "Squeeze-and-Excitation Networks")."""

from __future__ import annotations

from torch import Tensor, nn

from attnexp.attention.base import AttentionModule, Kind, WeightKind, make_divisible
from attnexp.attention.causal import running_mean
from attnexp.attention.masking import flat_mask, masked_mean
from attnexp.util.checks import check_ratio


class SqueezeExcite(AttentionModule):
    """Channel gate: ``x * sigmoid(W2 relu(W1 mean_grid(x)))``, bottleneck width
    ``make_divisible(rd_ratio * dim, 8)`` (a multiple of 8, never below 8).

    Causal (``causal=True``, sequences only): position t is gated by the MLP of the running mean
    over positions ``<= t``, one gate vector per position. A padding mask leaves padded positions
    out of the mean.

    ``weights`` (with ``return_weights=True``): ``{"channel": (B, C)}``, the gate; causal: the gate
    of the last position, which has seen the whole sequence (equal to the non-causal gate).
    """

    kind = Kind.GATE
    weight_kinds = {"channel": WeightKind.CHANNEL_GATE}

    def __init__(
        self, dim: int, grid_ndim: int = 1, causal: bool = False, rd_ratio: float = 1 / 16
    ) -> None:
        super().__init__(dim, grid_ndim, causal)
        check_ratio("rd_ratio", rd_ratio)
        self.rd_dim = make_divisible(rd_ratio * dim)
        self.fc1 = nn.Linear(dim, self.rd_dim)
        self.fc2 = nn.Linear(self.rd_dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False):
        self.check_input(x, mask)
        if self.causal:  # (B, L, C): one gate per position
            gate = self.excite(running_mean(x, mask))
            y = x * gate
            return (y, {"channel": gate[:, -1]}) if return_weights else y
        gate = self.excite(masked_mean(x.flatten(1, -2), flat_mask(mask)))
        y = x * gate.view(gate.shape[0], *([1] * (x.dim() - 2)), self.dim)
        return (y, {"channel": gate}) if return_weights else y

    def excite(self, squeezed: Tensor) -> Tensor:
        """Channel descriptors ``(..., C)`` -> gates in (0, 1)."""
        return self.fc2(self.fc1(squeezed).relu()).sigmoid()

    def flops(self, grid: tuple[int, ...]) -> int:
        """With N = prod(grid), C = dim, r = rd_dim: mean N*C + MLP 2*2*C*r + gating N*C; causal:
        the MLP at every position, N*2*2*C*r."""
        n, c = self.num_positions(grid), self.dim
        return 2 * n * c + 4 * c * self.rd_dim * (n if self.causal else 1)
