"""MNIST-1D (Greydanus 2020): 1-D digit templates, transformed; length 40, 10 classes.

Generated locally with ``mnist1d.data.make_dataset`` (never ``get_dataset``, which downloads) and
cached in the data dir under a name derived from the generator's arguments.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from attnexp.data.cache import cached_arrays
from attnexp.data.splits import Splits


def load_mnist1d(data_dir: str, num_samples: int = 5000, seed: int = 42) -> Splits:
    """``(x_train, y_train, x_test, y_test)``, x as ``(N, 40, 1)``; 80/20 split as in the paper."""
    from mnist1d.data import get_dataset_args

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    key = {k: v for k, v in vars(args).items() if k != "url"}
    f = cached_arrays(data_dir, "mnist1d", key, lambda: _generate(args))
    return (f["x"][..., None], f["y"], f["x_test"][..., None], f["y_test"])


def _generate(args) -> dict[str, np.ndarray]:
    """Run the generator without disturbing the caller's RNGs (it reseeds random and numpy)."""
    from mnist1d.data import make_dataset

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
    return {
        "x": d["x"].astype(np.float32),
        "y": d["y"].astype(np.int64),
        "x_test": d["x_test"].astype(np.float32),
        "y_test": d["y_test"].astype(np.int64),
    }
