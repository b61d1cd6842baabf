"""Attention mechanisms, one module per file, all obeying the contract in ``base``; ``variants``
builds them from their configs (``create("muse", dim=64)``)."""

from attnexp.attention.base import AttentionModule, Kind, WeightKind
from attnexp.attention.variants import attention_config, available, create, factory

__all__ = [
    "AttentionModule", "Kind", "WeightKind", "attention_config", "available", "create", "factory",
]  # fmt: skip
