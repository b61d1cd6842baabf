"""attnexp: a config-driven experiment framework for attention mechanisms."""

__version__ = "0.1.0"
