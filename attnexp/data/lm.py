"""A token stream for causal language modelling: random training windows, exhaustive evaluation.

A split is a ``Stream``: one or more pieces of token ids (a text's split, held as a tensor on the
model's device; or token files, memory-mapped and read a window at a time). A window never spans
two pieces.

Training: one "epoch" is ``steps_per_epoch`` batches of ``batch_size`` windows of
``context_len + 1`` tokens at random starts (``x`` the first ``context_len``, ``y`` the same shifted by one), drawn
from a generator seeded by (seed, global step, rank): a resumed run sees the windows the
uninterrupted one saw. Validation and test (``EvalWindows``): windows in order that score every
token but each piece's first exactly once, starting every ``eval_stride`` tokens (default: every
``context_len``, non-overlapping); the last one is padded (``x = 0``, ``y = IGNORE_INDEX``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from attnexp.data.datamodule import EpochBatches, EpochOrder, Resumable, trained_batches
from attnexp.data.shape import IGNORE_INDEX, DataShape
from attnexp.data.text import SPLITS, check_eval_stride
from attnexp.util.seeding import derive_seed

Piece = Tensor | np.ndarray  # token ids: a tensor (int64), or a memory-mapped array of a file


class Stream:
    """One split's token ids as ``pieces``; a window never spans two of them."""

    def __init__(self, pieces: Sequence[Piece]) -> None:
        self.pieces = list(pieces)
        self.lengths = [len(p) for p in self.pieces]

    def to(self, device: torch.device | str) -> Stream:
        """Tensor pieces moved to ``device``; memory-mapped ones stay on disk."""
        return Stream([p.to(device) if isinstance(p, Tensor) else p for p in self.pieces])

    def num_starts(self, width: int) -> int:
        """How many windows of ``width`` tokens the pieces hold."""
        return sum(max(0, n - width + 1) for n in self.lengths)

    def windows(self, starts: Tensor, width: int) -> Tensor:
        """``(B, width)`` token ids (int64) at ``starts``, numbered over every piece's windows of
        ``width`` in order (0 .. ``num_starts(width) - 1``)."""
        if len(self.pieces) == 1:
            return self.take(0, starts, width)
        starts = starts.cpu()
        counts = torch.tensor([max(0, n - width + 1) for n in self.lengths])
        ends = counts.cumsum(0)
        which = torch.searchsorted(ends, starts, right=True)
        local = starts - (ends - counts)[which]
        out = torch.empty(len(starts), width, dtype=torch.long)
        for i in which.unique().tolist():
            rows = which == i
            out[rows] = self.take(i, local[rows], width).cpu()
        return out

    def take(self, piece: int, starts: Tensor, width: int) -> Tensor:
        """``(B, width)`` ids of piece ``piece`` from each of ``starts``; a position past the
        piece's end repeats its last token (evaluation's last window masks those)."""
        tokens, last = self.pieces[piece], self.lengths[piece] - 1
        if isinstance(tokens, Tensor):
            offsets = torch.arange(width, device=tokens.device)
            return tokens[(starts.to(tokens.device)[:, None] + offsets).clamp_(max=last)]
        index = np.minimum(starts.cpu().numpy()[:, None] + np.arange(width), last)
        return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))

WINDOW_STREAM = 1  # keeps the window seeds apart from EpochSeed's (seed, epoch, rank) stream


class StepWindows:
    """The start of every training window of one epoch for one rank, a pure function of (seed,
    global step, rank). A pass starts at the trainer's global step (``first_step``: a run restored
    mid-epoch starts where it stopped) and ends at the next multiple of ``steps_per_epoch``; without
    a trainer it covers the epoch Lightning last set with ``set_epoch``."""

    def __init__(
        self, num_starts: int, batch_size: int, steps_per_epoch: int, seed: int = 0, rank: int = 0
    ) -> None:
        self.num_starts, self.batch_size = num_starts, batch_size
        self.steps_per_epoch, self.seed, self.rank = steps_per_epoch, seed, rank
        self.epoch = 0
        self.first_step: Callable[[], int] | None = None  # the trainer's global step

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def starts(self, step: int) -> Tensor:
        generator = torch.Generator().manual_seed(
            derive_seed(self.seed, WINDOW_STREAM, step, self.rank)
        )
        return torch.randint(0, self.num_starts, (self.batch_size,), generator=generator)

    def __iter__(self) -> Iterator[Tensor]:
        per_epoch = self.steps_per_epoch
        first = self.first_step() if self.first_step is not None else self.epoch * per_epoch
        for step in range(first, (first // per_epoch + 1) * per_epoch):
            yield self.starts(step)

    def __len__(self) -> int:
        return self.steps_per_epoch


class WindowLoader(Resumable):
    """``(x, y)`` batches gathered from one token tensor at the starts ``sampler`` yields
    (Lightning finds it under the name ``sampler`` to call ``set_epoch``)."""

    def __init__(self, stream: Stream, context_len: int, sampler: StepWindows) -> None:
        self.stream, self.sampler, self.width = stream, sampler, context_len + 1
        self.batch_sampler = None  # DataLoader's interface, which Lightning inspects

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for starts in self.sampler:
            windows = self.stream.windows(starts, self.width)
            yield windows[:, :-1], windows[:, 1:]

    @property
    def source(self) -> StepWindows:
        return self.sampler

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Nothing to restore: the windows follow the trainer's global step, which the checkpoint
        restores (Lightning's epoch count after a restore of step-based training can be off)."""


class EvalWindows:
    """The evaluation windows of a ``Stream``: in each piece of ``n`` tokens, windows of
    ``context_len`` inputs start every ``stride`` tokens until position ``n - 2`` (the last that
    has a next token) is covered. Every token but a piece's first is scored once: the first window
    scores all its positions, a later one only those past the previous window's end, so each
    scored token sees at least ``context_len - stride`` tokens before it (``stride =
    context_len``: non-overlapping windows). Past a piece's end, ``x = 0`` and ``y =
    IGNORE_INDEX``."""

    def __init__(self, stream: Stream, context_len: int, stride: int) -> None:
        self.stream, self.context_len, self.stride = stream, context_len, stride
        pieces, starts = [], []
        for i, n in enumerate(stream.lengths):
            if n < 2:
                continue
            count = 1 + -(-max(0, n - 1 - context_len) // stride)
            pieces += [i] * count
            starts += range(0, count * stride, stride)
        self.piece = torch.tensor(pieces, dtype=torch.long)
        self.start = torch.tensor(starts, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.start)

    def batch(self, index: slice | Tensor) -> tuple[Tensor, Tensor]:
        """``(x, y)`` of the windows ``index`` (a slice or indices of them)."""
        index = index if isinstance(index, slice) else index.cpu()
        pieces, starts = self.piece[index], self.start[index]
        if not len(pieces):
            empty = torch.zeros(0, self.context_len, dtype=torch.long)
            return empty, empty.clone()
        xs, ys = [], []
        for i in pieces.unique_consecutive().tolist():
            xs_i, ys_i = self._of_piece(i, starts[pieces == i])
            xs.append(xs_i)
            ys.append(ys_i)
        return (xs[0], ys[0]) if len(xs) == 1 else (torch.cat(xs), torch.cat(ys))

    def _of_piece(self, piece: int, starts: Tensor) -> tuple[Tensor, Tensor]:
        n, width = self.stream.lengths[piece], self.context_len + 1
        values = self.stream.take(piece, starts, width)
        begin = starts.to(values.device)[:, None]
        positions = begin + torch.arange(width, device=values.device)
        real = positions[:, 1:] < n  # input t is scored when token t + 1 exists
        new = (positions[:, :-1] >= begin + self.context_len - self.stride) | (begin == 0)
        x = torch.where(real, values[:, :-1], torch.zeros_like(values[:, :-1]))
        y = torch.where(real & new, values[:, 1:], torch.full_like(values[:, 1:], IGNORE_INDEX))
        return x, y


class EvalLoader:
    """``(x, y)`` batches of ``EvalWindows`` in the order of ``sampler`` (an ``EpochOrder``;
    under data-parallel training each rank's share)."""

    def __init__(self, windows: EvalWindows, batch_size: int, sampler: EpochOrder) -> None:
        self.windows, self.sampler = windows, sampler
        self.batches = EpochBatches(sampler, batch_size)
        self.batch_sampler = None  # DataLoader's interface, which Lightning inspects

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for index in self.batches:
            yield self.windows.batch(index)


class TokenStreamDataModule(L.LightningDataModule):
    """Batches of a token stream for a causal language model.

    ``source(path=..., download=...)`` returns the splits: a text's (``attnexp.data.text.load_text``,
    ``attnexp.data.bpe.load_bpe_text``) or token files' (``attnexp.data.tokens.load_token_files``),
    partially applied; ``shape`` is the dataset's shape facts (``grid: [context_len]``,
    ``vocab_size``), checked against the data before training with the key named.
    ``eval_stride`` (null: ``context_len``) spaces the evaluation windows (``EvalWindows``).
    After ``load``: ``vocab`` decodes the ids (None when unknown), ``test_split`` names the split
    the test scores, ``provenance`` what a run records of its data.
    """

    def __init__(
        self,
        source: Callable[..., Any],
        shape: DataShape,
        path: str,
        context_len: int = 256,
        batch_size: int = 64,
        steps_per_epoch: int = 250,
        download: bool = False,
        shuffle_seed: int = 0,
        eval_stride: int | None = None,
    ) -> None:
        super().__init__()
        if not shape.is_lm or shape.grid != (context_len,):
            raise ValueError(
                f"dataset.shape must be an lm shape on grid [dataset.context_len]=[{context_len}], "
                f"got task={shape.task}, grid={list(shape.grid)}"
            )
        check_eval_stride(eval_stride, context_len)
        self.source, self.shape, self.path, self.download = source, shape, path, download
        self.context_len, self.batch_size = context_len, batch_size
        self.steps_per_epoch, self.shuffle_seed = steps_per_epoch, shuffle_seed
        self.eval_stride = eval_stride or context_len
        self.streams: dict[str, Stream] | None = None
        self.eval_windows: dict[str, EvalWindows] = {}
        self.vocab: Any = None
        self.test_split = "test"
        self.provenance: dict[str, Any] = {}

    def load(self) -> dict[str, Stream]:
        """Read (once) and return the ``train``, ``val`` and ``test`` streams."""
        if self.streams is None:
            data = self.source(path=self.path, download=self.download)
            data.check(
                self.shape.vocab_size, self.context_len, self.batch_size, self.steps_per_epoch
            )
            self.vocab, self.test_split = data.vocab, data.test_split
            self.provenance = dict(data.provenance)
            self.streams = {s: Stream([_piece(p) for p in data.pieces[s]]) for s in SPLITS}
            self.eval_windows = {}
        return self.streams

    def facts(self) -> dict[str, Any]:
        """What a run records of its data beyond its config (after ``load``): the split the test
        scores (``val`` for token files without test files) and the data's provenance (the
        hashes of a prepared text and its tokenizer)."""
        return {"test_split": self.test_split, **({"data": self.provenance} if self.provenance else {})}

    def setup(self, stage: str | None = None) -> None:
        streams = self.load()
        # Keep the data where the model is (the GPU when training there): batches are then free.
        if self.trainer is not None:
            device = self.trainer.strategy.root_device
            self.streams = {k: v.to(device) for k, v in streams.items()}
            self.eval_windows = {}

    def train_dataloader(self) -> WindowLoader:
        stream = self.load()["train"]
        rank = self.trainer.global_rank if self.trainer else 0
        order = StepWindows(
            stream.num_starts(self.context_len + 1), self.batch_size, self.steps_per_epoch,
            self.shuffle_seed, rank,
        )  # fmt: skip
        loader = WindowLoader(stream, self.context_len, order)
        if self.trainer is not None:
            loader.progress = lambda: trained_batches(self.trainer)
            order.first_step = lambda: self.trainer.global_step
        return loader

    def val_dataloader(self) -> EvalLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> EvalLoader:
        return self._eval_loader("test")

    def example_batch(self, n: int, split: str = "test") -> Tensor:
        """The first ``n`` inputs of ``split`` ``(n, context_len)`` (figures, sampling prompts,
        diagnostics)."""
        windows = self._windows(split)
        return windows.batch(slice(0, min(n, len(windows))))[0]

    def _windows(self, split: str) -> EvalWindows:
        if split not in self.eval_windows:
            self.eval_windows[split] = EvalWindows(
                self.load()[split], self.context_len, self.eval_stride
            )
        return self.eval_windows[split]

    def _eval_loader(self, split: str) -> EvalLoader:
        """Under data-parallel training each rank scores its share of the windows, none twice."""
        windows = self._windows(split)
        rank, world = (
            (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        )
        return EvalLoader(windows, self.batch_size, EpochOrder(len(windows), False, 0, rank, world))


def _piece(array: np.ndarray) -> Piece:
    """A memory-mapped file stays one (read a window at a time); ids in memory become a tensor."""
    if isinstance(array, np.memmap):
        return array
    return torch.as_tensor(array, dtype=torch.long)
