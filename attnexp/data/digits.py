"""scikit-learn's bundled 8x8 handwritten digits (1797 images, offline), as ``(N, 8, 8, 1)``."""

from __future__ import annotations

import numpy as np

from attnexp.data.splits import Splits


def load_digits(
    test_fraction: float = 0.2, seed: int = 0, num_samples: int | None = None
) -> Splits:
    """Stratified train/test split; pixels scaled from 0..16 to 0..1.

    ``num_samples`` keeps a stratified subset first (for quick runs); ``None`` keeps all.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    data = sk_load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int64)
    if num_samples is not None and num_samples < len(y):
        x, _, y, _ = train_test_split(x, y, train_size=num_samples, stratify=y, random_state=seed)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    return x_train, y_train, x_test, y_test
