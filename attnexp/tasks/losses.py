"""Losses shared by the LightningModules and the benchmark's plain loop; no Lightning import."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from attnexp.data.shape import IGNORE_INDEX


def next_token_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy over the scored positions of ``(B, L, V)`` (or ``(N, V)``) logits."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE_INDEX
    )
