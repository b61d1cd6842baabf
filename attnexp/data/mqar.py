"""Multi-query associative recall (Zoology, Arora et al. 2023), reduced to classification.

A sequence holds ``num_pairs`` key-value pairs, then filler, then one query key in the last position;
the label is the value bound to that key. Solving it needs information to move between positions,
so it separates token mixers from models without one.

Token ids: values ``0 .. num_classes-1`` (a value's id is its label), keys next, the filler last:
``vocab_size = num_classes + num_keys + 1``.
"""

from __future__ import annotations

import numpy as np

from attnexp.data.splits import Splits


def mqar_layout(seq_len: int, vocab_size: int, num_classes: int, num_pairs: int) -> int:
    """Check the sizes fit together; returns the number of distinct keys."""
    num_keys = vocab_size - num_classes - 1
    if num_pairs < 1:
        raise ValueError(f"dataset.num_pairs must be >= 1, got {num_pairs}")
    if num_keys < num_pairs:
        raise ValueError(
            f"mqar needs at least num_pairs={num_pairs} distinct keys, but vocab_size={vocab_size} "
            f"- num_classes={num_classes} - 1 (filler) leaves {num_keys}"
        )
    if 2 * num_pairs + 1 > seq_len:
        raise ValueError(
            f"mqar needs seq_len >= 2 * num_pairs + 1 = {2 * num_pairs + 1}, got seq_len={seq_len}"
        )
    return num_keys


def make_mqar(
    num_samples: int, seq_len: int, vocab_size: int, num_classes: int, num_pairs: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens (N, seq_len), labels (N,))`` from a seed."""
    num_keys = mqar_layout(seq_len, vocab_size, num_classes, num_pairs)
    rng = np.random.default_rng(seed)
    # Distinct keys per sequence: argsort of uniform noise is a batch of random permutations.
    keys = np.argsort(rng.random((num_samples, num_keys)), axis=1)[:, :num_pairs] + num_classes
    values = rng.integers(0, num_classes, size=(num_samples, num_pairs))
    tokens = np.full((num_samples, seq_len), vocab_size - 1, dtype=np.int64)
    tokens[:, 0 : 2 * num_pairs : 2] = keys
    tokens[:, 1 : 2 * num_pairs : 2] = values
    asked = rng.integers(0, num_pairs, size=num_samples)
    rows = np.arange(num_samples)
    tokens[:, -1] = keys[rows, asked]
    return tokens, values[rows, asked].astype(np.int64)


def load_mqar(
    num_samples: int = 6000,
    seq_len: int = 32,
    vocab_size: int = 65,
    num_classes: int = 16,
    num_pairs: int = 8,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Splits:
    """Train and test sequences drawn independently (test from ``seed + 1``)."""
    n_test = int(round(num_samples * test_fraction))
    x_train, y_train = make_mqar(num_samples - n_test, seq_len, vocab_size, num_classes, num_pairs, seed)
    x_test, y_test = make_mqar(n_test, seq_len, vocab_size, num_classes, num_pairs, seed + 1)
    return x_train, y_train, x_test, y_test
