"""Reproducible randomness that survives a resume.

Lightning checkpoints hold model, optimizer, scheduler and loop state, but not the global RNG
states. So nothing random is drawn from a stream that runs across epochs: every epoch starts from
a seed derived from (run seed, epoch), for the batch order (``SliceLoader``) and for everything
drawn from the global generators (dropout, random key subsets). A run resumed at epoch ``e`` then
draws exactly what the uninterrupted run drew in epoch ``e``.
"""

from __future__ import annotations

import random

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
