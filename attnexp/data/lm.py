"""A token stream for causal language modelling: random training windows, exhaustive evaluation.

Training: one "epoch" is ``steps_per_epoch`` batches of ``batch_size`` windows of
``context_len + 1`` tokens at random starts (``x`` the first ``context_len``, ``y`` the same shifted by one), drawn
from a generator seeded by (seed, global step, rank): a resumed run sees the windows the
uninterrupted one saw. Validation and test: non-overlapping windows in order that score every
token but the first exactly once; the last one is padded (``x = 0``, ``y = IGNORE_INDEX``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch import Tensor

from attnexp.data.datamodule import EpochOrder, Resumable, SliceLoader, trained_batches
from attnexp.data.shape import IGNORE_INDEX, DataShape
from attnexp.data.text import SPLITS, TextSplits
from attnexp.data.vocab import Vocabulary
from attnexp.util.seeding import derive_seed

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

    def __init__(self, tokens: Tensor, context_len: int, sampler: StepWindows) -> None:
        self.tokens, self.sampler = tokens, sampler
        self.batch_sampler = None  # DataLoader's interface, which Lightning inspects
        self.offsets = torch.arange(context_len + 1, device=tokens.device)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for starts in self.sampler:
            windows = self.tokens[starts.to(self.tokens.device)[:, None] + self.offsets]
            yield windows[:, :-1], windows[:, 1:]

    @property
    def source(self) -> StepWindows:
        return self.sampler

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Nothing to restore: the windows follow the trainer's global step, which the checkpoint
        restores (Lightning's epoch count after a restore of step-based training can be off)."""


def eval_windows(tokens: Tensor, context_len: int) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of shape ``(ceil((n - 1) / context_len), context_len)``: position ``t`` of the
    stream predicts token ``t + 1``, for every ``t < n - 1`` once, in order."""
    x, y = tokens[:-1], tokens[1:]
    pad = -len(x) % context_len
    x = torch.cat([x, x.new_zeros(pad)])
    y = torch.cat([y, y.new_full((pad,), IGNORE_INDEX)])
    return x.view(-1, context_len), y.view(-1, context_len)


class TokenStreamDataModule(L.LightningDataModule):
    """Batches of a text's token stream for a causal language model.

    ``source(path=..., download=...)`` returns the encoded splits (``attnexp.data.text.load_text``
    partially applied); ``shape`` is the dataset's shape facts (``grid: [context_len]``,
    ``vocab_size``), checked against the data before training with the key named.
    """

    def __init__(
        self,
        source: Callable[..., TextSplits],
        shape: DataShape,
        path: str,
        context_len: int = 256,
        batch_size: int = 64,
        steps_per_epoch: int = 250,
        download: bool = False,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        if not shape.is_lm or shape.grid != (context_len,):
            raise ValueError(
                f"dataset.shape must be an lm shape on grid [dataset.context_len]=[{context_len}], "
                f"got task={shape.task}, grid={list(shape.grid)}"
            )
        self.source, self.shape, self.path, self.download = source, shape, path, download
        self.context_len, self.batch_size = context_len, batch_size
        self.steps_per_epoch, self.shuffle_seed = steps_per_epoch, shuffle_seed
        self.splits: dict[str, Tensor] | None = None
        self.eval_splits: dict[str, tuple[Tensor, Tensor]] = {}
        self.vocab: Vocabulary | None = None

    def load(self) -> dict[str, Tensor]:
        """Read (once) and return ``{"train", "val", "test"} -> int64 token ids``."""
        if self.splits is None:
            data = self.source(path=self.path, download=self.download)
            data.check(
                self.shape.vocab_size, self.context_len, self.batch_size, self.steps_per_epoch
            )
            self.vocab = data.vocab
            self.splits = {s: torch.as_tensor(getattr(data, s), dtype=torch.long) for s in SPLITS}
            self.eval_splits = {}
        return self.splits

    def setup(self, stage: str | None = None) -> None:
        splits = self.load()
        # Keep the data where the model is (the GPU when training there): batches are then free.
        if self.trainer is not None:
            device = self.trainer.strategy.root_device
            self.splits = {k: v.to(device) for k, v in splits.items()}
            self.eval_splits = {}

    def train_dataloader(self) -> WindowLoader:
        tokens = self.load()["train"]
        rank = self.trainer.global_rank if self.trainer else 0
        order = StepWindows(
            len(tokens) - self.context_len, self.batch_size, self.steps_per_epoch,
            self.shuffle_seed, rank,
        )  # fmt: skip
        loader = WindowLoader(tokens, self.context_len, order)
        if self.trainer is not None:
            loader.progress = lambda: trained_batches(self.trainer)
            order.first_step = lambda: self.trainer.global_step
        return loader

    def val_dataloader(self) -> SliceLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> SliceLoader:
        return self._eval_loader("test")

    def example_batch(self, n: int, split: str = "test") -> Tensor:
        """The first ``n`` inputs of ``split`` ``(n, context_len)`` (figures, sampling prompts,
        diagnostics)."""
        return self._windows(split)[0][:n]

    def _windows(self, split: str) -> tuple[Tensor, Tensor]:
        if split not in self.eval_splits:
            self.eval_splits[split] = eval_windows(self.load()[split], self.context_len)
        return self.eval_splits[split]

    def _eval_loader(self, split: str) -> SliceLoader:
        """Under data-parallel training each rank scores its share of the windows, none twice."""
        x, y = self._windows(split)
        rank, world = (
            (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        )
        return SliceLoader(x, y, self.batch_size, EpochOrder(len(y), False, 0, rank, world))
