"""attnexp: a config-driven experiment framework for attention mechanisms.

The layers, top to bottom, are in docs/architecture.md; each package's ``__init__`` says what it
owns and what it may import, and tests/test_architecture.py holds the code to that.
"""

__version__ = "0.1.0"
