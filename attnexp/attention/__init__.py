"""Attention mechanisms, one module per file, all obeying the contract in ``base``; ``factory``
builds one from its config node. Composing a variant's yaml by name is ``attnexp.config.attention``
(``create("muse", dim=64)``).

May import: attnexp.util. Nothing here reads yaml or knows about runs.
"""

from attnexp.attention.base import AttentionModule, Kind, WeightKind
from attnexp.attention.factory import AttentionFactory, factory

__all__ = ["AttentionFactory", "AttentionModule", "Kind", "WeightKind", "factory"]
