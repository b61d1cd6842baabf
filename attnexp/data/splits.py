"""How a source's arrays become train/val/test: kept free of Lightning so that ``validate`` can
check a config against the data's real size in about a second, before anything heavy is imported."""

from __future__ import annotations

from typing import Any

import numpy as np

from attnexp.data.shape import DataShape
from attnexp.util.checks import check_int

# A source returns (x_train, y_train, x_test, y_test) as arrays; x is tokens-last. A dataset
# released with its own validation split (LRA's ListOps) returns it in the middle:
# (x_train, y_train, x_val, y_val, x_test, y_test), and its yaml sets val_fraction: null.
Splits = tuple[np.ndarray, ...]
SPLIT_NAMES = ("train", "val", "test")


def arrange_splits(
    arrays: Splits, val_fraction: float | None, split_seed: int, batch_size: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train", "val", "test"} -> (x, y)`` from a source's four or six arrays.

    Four: validation is carved from train (``carve_validation``); six: the source's own
    validation split is used as is, and ``val_fraction`` must be null (there is nothing to carve).
    """
    if len(arrays) == 6:
        if val_fraction is not None:
            raise ValueError(
                "dataset.val_fraction must be null: this dataset's source brings its own "
                f"validation split, got val_fraction={val_fraction}"
            )
        x_train, y_train, x_val, y_val, x_test, y_test = arrays
        check_batch(batch_size, len(y_train), "")
        return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
    if len(arrays) != 4:
        raise ValueError(
            f"dataset.source must return 4 arrays (x_train, y_train, x_test, y_test) or 6 "
            f"(with x_val, y_val after train), got {len(arrays)}"
        )
    if val_fraction is None:
        raise ValueError(
            "dataset.val_fraction must be in (0, 1): this dataset's source has no validation "
            "split of its own, so one is carved from train"
        )
    x_train, y_train, x_test, y_test = arrays
    val, train = carve_validation(len(y_train), val_fraction, split_seed, batch_size)
    return {
        "train": (x_train[train], y_train[train]),
        "val": (x_train[val], y_train[val]),
        "test": (x_test, y_test),
    }


def carve_validation(
    n_train: int, val_fraction: float, split_seed: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(val, train)`` indices into the source's training arrays.

    The validation split is carved from train with its own fixed seed, so it does not move when
    the training seed changes; the test split is never touched. Refuses a batch larger than what
    is left for training.
    """
    order = np.random.default_rng(split_seed).permutation(n_train)
    n_val = max(1, int(round(n_train * val_fraction)))
    val, train = order[:n_val], order[n_val:]
    check_batch(batch_size, len(train), " once validation is carved out")
    return val, train


def check_batch(batch_size: int, n_train: int, why: str) -> None:
    if batch_size > n_train:
        raise ValueError(
            f"dataset.batch_size={batch_size} is larger than the training split "
            f"({n_train} samples{why}): use at most {n_train}"
        )


def check_trim_padding(trim_padding: Any, shape: DataShape) -> None:
    """``dataset.trim_padding`` cuts token sequences padded at their end: it needs the pad id."""
    if not isinstance(trim_padding, bool):
        raise ValueError(f"dataset.trim_padding must be true or false, got {trim_padding!r}")
    if trim_padding and (shape.pad_index is None or len(shape.grid) != 1):
        raise ValueError(
            "dataset.trim_padding=true cuts each batch of 1-D token sequences to its longest "
            "sample: it needs dataset.shape.pad_index set and a 1-D grid, got pad_index="
            f"{shape.pad_index}, grid={list(shape.grid)}"
        )


LOADERS = ("slices", "workers")
# The defaults of ``dataset.loader`` and ``dataset.num_workers`` (``pin_memory``: None, automatic).
DEFAULT_LOADER, DEFAULT_NUM_WORKERS = "slices", 2


def check_loader(loader: Any, num_workers: Any, pin_memory: Any) -> None:
    """``dataset.loader`` and, for ``workers``, its ``num_workers`` and ``pin_memory``."""
    if loader not in LOADERS:
        raise ValueError(
            f"dataset.loader must be one of {', '.join(LOADERS)} (slices: the splits on the model's "
            f"device; workers: streamed from the CPU by DataLoader workers), got {loader!r}"
        )
    check_int("dataset.num_workers", num_workers, 0, " (0: batches cut in the training process)")
    if pin_memory is not None and not isinstance(pin_memory, bool):
        raise ValueError(
            f"dataset.pin_memory must be true, false or null (null: pinned when training on a "
            f"CUDA device), got {pin_memory!r}"
        )
