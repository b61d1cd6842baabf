"""Reproducible randomness that survives a resume.

Lightning checkpoints hold model, optimizer, scheduler and loop state, but not the global RNG
states. So nothing random is drawn from a stream that runs across epochs: every epoch starts from
a seed derived from (run seed, epoch), for the batch order (``SliceLoader``) and for everything
drawn from the global generators (dropout, random key subsets). A run resumed at epoch ``e`` then
draws exactly what the uninterrupted run drew in epoch ``e``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from integer keys (e.g. run seed and epoch)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def seed_all(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """The states of every global generator ``seed_all`` seeds, as tensors and plain data (what a
    checkpoint loaded with ``weights_only=True`` may hold)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},  # fmt: skip
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Put every global generator back where ``rng_states`` found it."""
    python, numpy = states["python"], states["numpy"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
