"""Backbones: one file each, every attention variant fits every backbone; ``common`` holds what
they share (the slots attention sits in, the readout).

May import: attnexp.attention, attnexp.data, attnexp.util.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from attnexp.models.common import Backbone


def build_model(cfg: DictConfig) -> Backbone:
    """The backbone with ``cfg.attention`` (a partial) in its slots. Needs torch, not Lightning,
    so ``attnexp.config.validate`` can build it before the slow Lightning import."""
    from hydra.utils import instantiate

    from attnexp.attention import factory

    return instantiate(cfg.backbone, attention=factory(cfg.attention))
