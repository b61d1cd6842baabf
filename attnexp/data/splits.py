"""How a source's arrays become train/val/test: kept free of Lightning so that ``validate`` can
check a config against the data's real size in about a second, before anything heavy is imported."""

from __future__ import annotations

import numpy as np

# A source returns (x_train, y_train, x_test, y_test) as arrays; x is tokens-last.
Splits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


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
    if batch_size > len(train):
        raise ValueError(
            f"dataset.batch_size={batch_size} is larger than the training split "
            f"({len(train)} samples once validation is carved out): use at most {len(train)}"
        )
    return val, train
