"""Whole splits held as tensors; a batch is an index slice, never per-sample ``__getitem__``.

Two ways to serve the batches (``dataset.loader``), both in the very order of ``EpochOrder``:

- ``slices`` (default): the splits move to the model's device and ``SliceLoader`` cuts batches
  there, so a batch is free. For sets that fit on the device.
- ``workers``: the splits stay on the CPU (a source's memmapped arrays stay memmapped when stored
  in the model's dtype) and ``DataLoader`` workers cut whole batches (``EpochBatches``) into pinned
  memory, overlapping the copy with training. For sets that do not fit on the device.

Images read from files (attnexp/data/images.py) stay uint8 in memory, a quarter of float32, and
become floats one batch at a time on the model's device (``model_inputs``, the one place).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from attnexp.data.augment import model_inputs
from attnexp.data.shape import IGNORE_INDEX, DataShape
from attnexp.data.splits import (
    DEFAULT_LOADER,
    DEFAULT_NUM_WORKERS,
    SPLIT_NAMES,
    Splits,
    arrange_splits,
    check_loader,
    check_trim_padding,
)
from attnexp.util.checks import check_positive
from attnexp.util.seeding import derive_seed


class EpochOrder:
    """The sample indices of one epoch for one rank, a pure function of (seed, epoch).

    Lightning calls ``set_epoch`` before each training epoch (as for a ``DistributedSampler``), also
    after a resume, so the batch order never depends on how many epochs this process has run.
    With several ranks each takes every ``world_size``-th index; ``pad`` repeats the first indices
    so that every rank gets the same number of batches (data-parallel training needs that).
    """

    def __init__(
        self, n: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
        pad: bool = False,
    ) -> None:  # fmt: skip
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def is_identity(self) -> bool:
        return not self.shuffle and self.world_size == 1

    def indices(self) -> Tensor:
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        if self.world_size > 1:
            if self.pad and self.n % self.world_size:
                order = torch.cat([order, order[: self.world_size - self.n % self.world_size]])
            order = order[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.n
        if self.pad:
            return -(-self.n // self.world_size)
        return len(range(self.rank, self.n, self.world_size))


BatchIndex = slice | Tensor  # a contiguous slice (a view, no copy) or the indices of one batch


class EpochBatches(DistributedSampler):
    """The batches of ``order`` (an ``EpochOrder``) as ``BatchIndex``es of ``batch_size``: a
    ``DataLoader`` sampler whose every item is a whole batch (``batch_size=None``), so a worker cuts
    a batch at once. ``set_epoch`` is passed on to ``order``; index tensors are made on ``device``
    (the data's: ``SliceLoader`` on a GPU gathers there).

    A ``DistributedSampler`` because it is one (``order`` holds this rank's share): Lightning
    leaves such a sampler in place, where it would wrap any other in its own under data-parallel
    training and split the batches across ranks a second time.
    """

    def __init__(
        self, order: EpochOrder, batch_size: int, device: torch.device | str = "cpu"
    ) -> None:  # no super().__init__: it wants a dataset to count
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.order, self.batch_size, self.device = order, batch_size, device
        self.resume: tuple[int, int] | None = None  # (epoch, batches to leave out): a restored run

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.order.epoch

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __iter__(self) -> Iterator[BatchIndex]:
        n, first = len(self.order), skipped(self, self.order.epoch) * self.batch_size
        if self.order.is_identity:  # contiguous slices are views: no copy
            for start in range(first, n, self.batch_size):
                yield slice(start, start + self.batch_size)
            return
        order = self.order.indices().to(self.device)
        for start in range(first, n, self.batch_size):
            yield order[start : start + self.batch_size]


def take_batch(
    x: Tensor, y: Tensor, index: BatchIndex, trim_pad_index: int | None = None
) -> tuple[Tensor, Tensor]:
    """The batch ``index`` of ``(x, y)``; with ``trim_pad_index`` its token sequences padded at
    their end with this id are cut to the batch's longest real sample (``trim_padding``)."""
    x, y = x[index], y[index]
    return (x if trim_pad_index is None else trim_padding(x, trim_pad_index)), y


def trained_batches(trainer: Any) -> int:
    """The training batches of the current epoch ``trainer`` has trained on: what a checkpoint
    taken now has seen (Lightning counts a batch processed before its ``on_train_batch_end``)."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def skipped(source: Any, epoch: int) -> int:
    """How many batches a pass over ``epoch`` of ``source`` (an ``EpochBatches`` or
    ``attnexp.data.lm.StepWindows``) leaves out: those a restored run trained on before its
    checkpoint, when the checkpoint is of this epoch; 0 otherwise. Used up by the first pass."""
    resume, source.resume = source.resume, None
    return resume[1] if resume is not None and resume[0] == epoch else 0


class Resumable:
    """A training loader Lightning can restart mid-epoch: the ``state_dict`` / ``load_state_dict``
    a checkpoint carries. The state is the epoch and how many of its batches the trainer had
    trained on (``progress``, read from the trainer, not counted here: Lightning fetches a batch
    ahead); a restored loader leaves those out of its next pass over that epoch (a checkpoint at
    an epoch's end leaves the next epoch whole)."""

    progress: Callable[[], int] | None = None  # set by the data module for training loaders

    @property
    def source(self) -> Any:
        """What yields one epoch's batches and knows the epoch (``set_epoch``)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, int]:
        trained = self.progress() if self.progress is not None else 0
        return {"epoch": self.source.epoch, "trained_batches": trained}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.source.resume = (int(state["epoch"]), int(state["trained_batches"]))


class SliceLoader(Resumable):
    """Yields ``(x, y)`` batches of in-memory tensors in the order of ``sampler`` (an ``EpochOrder``;
    Lightning finds it under the name ``sampler`` to call ``set_epoch``).

    ``trim_pad_index``: token sequences padded at their end with this id are cut, batch by batch,
    to the batch's longest real sample, so a batch of short sequences costs what they need and
    not the padded maximum (None: every batch keeps the full width).
    """

    def __init__(
        self, x: Tensor, y: Tensor, batch_size: int, sampler: EpochOrder | None = None,
        trim_pad_index: int | None = None,
    ) -> None:  # fmt: skip
        self.x, self.y = x, y
        self.sampler = sampler or EpochOrder(len(y), shuffle=False)
        self.batches = EpochBatches(self.sampler, batch_size, y.device)
        self.batch_size = batch_size
        self.trim_pad_index = trim_pad_index
        self.batch_sampler = None  # DataLoader's interface, which Lightning inspects

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for index in self.batches:
            yield take_batch(self.x, self.y, index, self.trim_pad_index)

    @property
    def source(self) -> EpochBatches:
        return self.batches


class WorkerLoader(Resumable, DataLoader):
    """A ``DataLoader`` over an ``EpochBatches`` sampler that restarts mid-epoch like the others
    (the sampler runs in this process, so leaving batches out costs the workers nothing)."""

    @property
    def source(self) -> EpochBatches:
        return self.sampler


class SplitBatches(Dataset):
    """A split as a map-style dataset whose items are whole batches (``take_batch``): what
    ``DataLoader`` workers read from the CPU arrays in ``dataset.loader=workers``."""

    def __init__(self, x: Tensor, y: Tensor, trim_pad_index: int | None = None) -> None:
        self.x, self.y, self.trim_pad_index = x, y, trim_pad_index

    def __getitem__(self, index: BatchIndex) -> tuple[Tensor, Tensor]:
        return take_batch(self.x, self.y, index, self.trim_pad_index)


def worker_loader(
    batches: SplitBatches, sampler: EpochBatches, num_workers: int, pin_memory: bool
) -> WorkerLoader:
    """A ``DataLoader`` serving ``sampler``'s batches of ``batches`` from ``num_workers`` workers
    (0: in this process), kept alive across epochs, into pinned memory when ``pin_memory``."""
    return WorkerLoader(
        batches,
        sampler=sampler,
        batch_size=None,  # each item is already a batch
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def as_tensor(array: np.ndarray, dtype: torch.dtype) -> Tensor:
    """``array`` as a ``dtype`` tensor sharing its memory when it has that dtype already (copied
    only to convert). A read-only memmap is shared too: the splits are never written to."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(array, dtype=dtype)


def trim_padding(x: Tensor, pad_index: int) -> Tensor:
    """``x`` ``(B, L)`` cut to ``(B, W)``, ``W`` the end of its longest real sample (at least 1):
    the columns dropped hold only ``pad_index``, so no sample loses a real token."""
    real_columns = (x != pad_index).any(0)
    width = int(real_columns.nonzero().max()) + 1 if bool(real_columns.any()) else 1
    return x[:, :width]


class ArrayDataModule(L.LightningDataModule):
    """Train/val/test tensors from a ``source`` callable, checked against the declared ``shape``.

    The shape facts live in the dataset config so backbones can take them too; here they are
    verified against the data so a wrong yaml fails before training with the key named.
    """

    def __init__(
        self,
        source: Callable[[], Splits],
        shape: DataShape,
        batch_size: int = 128,
        val_fraction: float | None = 0.1,
        split_seed: int = 0,
        shuffle_seed: int = 0,
        trim_padding: bool = False,
        loader: str = DEFAULT_LOADER,
        num_workers: int = DEFAULT_NUM_WORKERS,
        pin_memory: bool | None = None,
        **source_args: Any,
    ) -> None:
        super().__init__()
        # A dataset yaml may lift its source's main arguments to its top level (``dataset.seq_len``
        # read as ``source.seq_len: ${dataset.seq_len}``); anything else there is a mistake.
        allowed = sorted(getattr(source, "keywords", {}))
        unknown = sorted(set(source_args) - set(allowed))
        if unknown:
            raise ValueError(
                f"dataset.{unknown[0]} is neither an argument of the data module nor one of "
                f"dataset.source's ({', '.join(allowed)})"
            )
        check_positive("dataset.batch_size", batch_size)
        if val_fraction is not None and not 0.0 < val_fraction < 1.0:
            raise ValueError(
                f"dataset.val_fraction must be in (0, 1) (or null for a source with its own "
                f"validation split), got {val_fraction}"
            )
        check_trim_padding(trim_padding, shape)
        check_loader(loader, num_workers, pin_memory)
        self.source = source
        self.shape = shape
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.shuffle_seed = shuffle_seed
        self.trim_padding = trim_padding
        self.loader = loader
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.splits: dict[str, tuple[Tensor, Tensor]] | None = None

    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Build (once) and return ``{"train", "val", "test"} -> (x, y)``."""
        if self.splits is None:
            arrays = arrange_splits(
                self.source(), self.val_fraction, self.split_seed, self.batch_size
            )
            for split in SPLIT_NAMES:
                self._check(*arrays[split], split)
            self.splits = {split: self._tensors(x, y) for split, (x, y) in arrays.items()}
        return self.splits

    def setup(self, stage: str | None = None) -> None:
        splits = self.load()
        # Keep the data where the model is (the GPU when training there): batches are then free.
        # Streamed through workers, it stays on the CPU.
        if self.trainer is not None and self.loader == "slices":
            device = self.trainer.strategy.root_device
            self.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in splits.items()}

    def train_dataloader(self) -> SliceLoader | WorkerLoader:
        loader = self._loader("train", shuffle=True, pad=True)
        if self.trainer is not None:
            loader.progress = lambda: trained_batches(self.trainer)
        return loader

    def val_dataloader(self) -> SliceLoader | DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> SliceLoader | DataLoader:
        return self._loader("test")

    def example_batch(self, n: int, split: str = "test") -> Tensor:
        """The first ``n`` inputs of ``split`` (figures, sampling prompts, diagnostics), as a
        model reads them."""
        return model_inputs(self.load()[split][0][:n])

    def _loader(
        self, split: str, shuffle: bool = False, pad: bool = False
    ) -> SliceLoader | DataLoader:
        """Under data-parallel training each rank gets its share of ``split``. Evaluation splits
        are not padded (a sample counted twice would bias the synchronised metrics)."""
        x, y = self.load()[split]
        rank, world = (
            (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        )
        order = EpochOrder(len(y), shuffle, self.shuffle_seed, rank, world, pad)
        trim = self.shape.pad_index if self.trim_padding else None
        if self.loader == "slices":
            return SliceLoader(x, y, self.batch_size, order, trim)
        return worker_loader(
            SplitBatches(x, y, trim),
            EpochBatches(order, self.batch_size),
            self.num_workers,
            self._pins_memory(),
        )

    def _pins_memory(self) -> bool:
        """``dataset.pin_memory``, or when null: whether the model trains on a CUDA device (pinned
        pages speed up the copy there and are useless, with a warning, elsewhere)."""
        if self.pin_memory is not None:
            return self.pin_memory
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def _tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        """Token ids as int64; uint8 pixels stay uint8 (a quarter of float32's memory on the
        device; the training module's ``augment`` makes them floats per batch); others float32.
        An array already of its dtype is shared, not copied: a memmap stays on disk."""
        if self.shape.is_tokens:
            dtype = torch.long
        else:
            dtype = torch.uint8 if x.dtype == np.uint8 else torch.float32
        return as_tensor(x, dtype), as_tensor(y, torch.long)

    def _check(self, x: np.ndarray, y: np.ndarray, split: str) -> None:
        shape = self.shape
        if tuple(x.shape[1:]) != shape.sample_shape:
            declared = "grid" if shape.is_tokens else "grid / dataset.shape.in_channels"
            raise ValueError(
                f"{split} inputs have per-sample shape {tuple(x.shape[1:])}, but "
                f"dataset.shape.{declared} declare {shape.sample_shape}"
            )
        # A language model's labels are per position (the next token, or IGNORE_INDEX: unscored).
        labels_shape = shape.grid if shape.is_lm else ()
        if tuple(y.shape[1:]) != labels_shape:
            raise ValueError(
                f"{split} labels have per-sample shape {tuple(y.shape[1:])}, but "
                f"dataset.shape.task={shape.task} needs {labels_shape}"
            )
        scored = y[y != IGNORE_INDEX] if shape.is_lm else y
        if len(scored) and (scored.min() < 0 or scored.max() >= shape.num_classes):
            allowed = f" (or {IGNORE_INDEX}, unscored)" if shape.is_lm else ""
            raise ValueError(
                f"{split} labels fall outside dataset.shape.num_classes={shape.num_classes}{allowed}"
            )
        if shape.is_tokens and (x.min() < 0 or x.max() >= shape.vocab_size):
            raise ValueError(
                f"{split} tokens fall outside dataset.shape.vocab_size={shape.vocab_size}"
            )

