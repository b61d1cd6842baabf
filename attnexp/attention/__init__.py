"""Attention mechanisms, one module per file, all obeying the contract in ``base``."""

from attnexp.attention.base import AttentionModule, Kind

__all__ = ["AttentionModule", "Kind"]
