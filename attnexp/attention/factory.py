"""The one code path from an attention config node to a module: a Hydra partial the backbone calls.

Composing a variant's yaml by name (``create("muse", dim=64)``) is config work and lives in
``attnexp.config.attention``; this module only instantiates a node that is already composed.
"""

from __future__ import annotations

from collections.abc import Callable

from hydra.utils import instantiate
from omegaconf import DictConfig

from attnexp.attention.base import AttentionModule

AttentionFactory = Callable[..., AttentionModule]  # a Hydra partial: called with dim=, grid_ndim=, causal=


def factory(node: DictConfig) -> AttentionFactory:
    """The partial a backbone calls with ``dim=`` and ``grid_ndim=``, from an attention config."""
    if not node.get("_partial_"):
        raise ValueError(
            f"attention config {node.get('_target_')!r} needs `_partial_: true`: the backbone "
            "gives dim and grid_ndim"
        )
    return instantiate(node)
