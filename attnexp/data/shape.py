"""A dataset's shape facts as one object: what the data module, the backbones and the classifier
need to know about a sample, checked once. Each dataset yaml holds it as its ``shape:`` node and
each backbone yaml passes ``shape: ${dataset.shape}``; no Lightning, so ``validate`` can build it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from attnexp.util.checks import check_int, check_positive

INPUT_TYPES = ("sequence", "tokens", "image")
# What is predicted: one class per sample, or the next token at every position of a 1-D sequence
# of tokens (a causal language model; labels -100 are not scored).
CLASSIFICATION = "classification"
LM = "lm"
TASKS = (CLASSIFICATION, LM)
IGNORE_INDEX = -100  # a label that is not scored (PyTorch's cross-entropy default)
# The backbones have 1-D and 2-D layers; continuous inputs say by their type which one they need.
GRID_RANKS = {"sequence": (1,), "image": (2,), "tokens": (1, 2)}
KEY = "dataset.shape"


@dataclass(frozen=True)
class DataShape:
    """``input_type``: ``sequence`` (1-D grid) or ``image`` (2-D grid) of ``in_channels`` real
    values per position, or ``tokens``: integer ids below ``vocab_size`` on a 1-D or 2-D grid.
    ``grid``: the positions of one sample. ``task``: ``classification`` (one label ``0 ..
    num_classes-1`` per sample) or ``lm`` (a label per position, the next token, or
    ``IGNORE_INDEX`` where not scored; tokens on a 1-D grid, ``num_classes == vocab_size``).
    ``pad_index``: for tokens of variable length, the id that fills a sample's positions past its
    end (``None``: every position is real). A model reads the padding mask ``x != pad_index``
    (``(B, *grid)``, True at real positions) and leaves padded positions out of everything.

    >>> DataShape("sequence", [40], num_classes=10, in_channels=1).sample_shape
    (40, 1)
    """

    input_type: str
    grid: tuple[int, ...]
    num_classes: int
    in_channels: int | None = None
    vocab_size: int | None = None
    task: str = CLASSIFICATION
    pad_index: int | None = None

    def __post_init__(self) -> None:
        if self.input_type not in INPUT_TYPES:
            allowed = ", ".join(INPUT_TYPES)
            raise ValueError(f"{KEY}.input_type must be one of {allowed}, got {self.input_type!r}")
        inputs = "token inputs" if self.is_tokens else f"{self.input_type} inputs"
        grid = _grid(self.grid, GRID_RANKS[self.input_type], inputs)
        object.__setattr__(self, "grid", grid)  # a tuple (Hydra hands a list): hashable, frozen
        check_int(f"{KEY}.num_classes", self.num_classes, minimum=2)
        # A token is an id (its width is the embedding's); a continuous position has channels.
        needed, unused = (
            ("vocab_size", "in_channels") if self.is_tokens else ("in_channels", "vocab_size")
        )
        check_positive(f"{KEY}.{needed}", getattr(self, needed), why=f" for {inputs}")
        if getattr(self, unused) is not None:
            raise ValueError(
                f"{KEY}.{unused} must be null for {inputs}, which use {needed}, "
                f"got {getattr(self, unused)!r}"
            )
        if self.task not in TASKS:
            raise ValueError(f"{KEY}.task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.is_lm and (not self.is_tokens or len(self.grid) != 1):
            raise ValueError(
                f"{KEY}.task=lm predicts the next token of a sequence: it needs input_type tokens "
                f"on a 1-D grid, got input_type {self.input_type} on grid {list(self.grid)}"
            )
        if self.is_lm and self.num_classes != self.vocab_size:
            raise ValueError(
                f"{KEY}.num_classes must equal vocab_size for task=lm (the model predicts a "
                f"token), got num_classes={self.num_classes}, vocab_size={self.vocab_size}"
            )

        if self.pad_index is not None:
            if not self.is_tokens:
                raise ValueError(
                    f"{KEY}.pad_index marks padding tokens: it needs input_type tokens, got "
                    f"{self.input_type} (set pad_index: null)"
                )
            check_int(f"{KEY}.pad_index", self.pad_index, minimum=0)
            if self.pad_index >= self.vocab_size:
                raise ValueError(
                    f"{KEY}.pad_index must be a token id below vocab_size={self.vocab_size}, "
                    f"got {self.pad_index}"
                )

    @property
    def is_lm(self) -> bool:
        return self.task == LM

    @property
    def is_tokens(self) -> bool:
        return self.input_type == "tokens"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's array shape, tokens-last: ``grid`` for ids, ``(*grid, in_channels)`` else."""
        return self.grid if self.is_tokens else (*self.grid, self.in_channels)


def _grid(grid: Any, ranks: tuple[int, ...], inputs: str) -> tuple[int, ...]:
    sizes = tuple(grid) if isinstance(grid, Sequence) and not isinstance(grid, str) else ()
    if len(sizes) not in ranks or any(
        isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in sizes
    ):
        rank = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(
            f"{KEY}.grid must be a {rank} list of positive integers for {inputs}, got {grid!r}"
        )
    return sizes
