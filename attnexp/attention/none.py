"""``none``: the identity, the baseline every ablation needs."""

from __future__ import annotations

from torch import Tensor

from attnexp.attention.base import AttentionModule, Kind


class Identity(AttentionModule):
    """Returns its input unchanged; backbones drop the slot entirely for this kind. Causal as it
    is: it mixes nothing."""

    kind = Kind.IDENTITY
    weight_kinds = {}

    def forward(self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False):
        self.check_input(x, mask)
        return (x, {}) if return_weights else x

    def flops(self, grid: tuple[int, ...]) -> int:
        self.check_grid(grid)
        return 0
