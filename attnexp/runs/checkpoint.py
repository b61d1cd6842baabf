"""Checkpoints: written atomically, loaded without running code, stamped with their config
(``check_resumable`` checks the stamp before a run continues from one).

``AtomicCheckpointIO`` is the trainer's checkpoint plugin: a crash mid-save leaves the previous
file intact (temp file + rename), and every load goes through ``load_checkpoint``, which only
accepts tensors and plain data (``torch.load(..., weights_only=True)``) whatever the caller asks.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from omegaconf import DictConfig

from attnexp.runs.identity import computed_config, config_diff
from attnexp.util.files import atomic_open

CONFIG_KEY = "attnexp_config"  # where a checkpoint keeps the config that produced it


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, unsafe, or from another config."""


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path``, loaded with ``weights_only=True``; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load checkpoint {path}: it holds objects other than tensors and plain "
            f"data, and loading them could run code from the file ({str(e).splitlines()[0]})"
        ) from e
    except Exception as e:  # truncated zip, not a torch file at all, ...
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a PyTorch checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); delete it, or resume from another one"
        ) from e
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a dict")
    return checkpoint


def check_resumable(path: str | Path, cfg: DictConfig) -> tuple[int, int]:
    """The epoch (Lightning's count from 0) and training step ``path`` was saved at; refuses
    (``CheckpointError``) a checkpoint made with another computed config, naming the keys that
    differ."""
    checkpoint = load_checkpoint(path)
    saved = checkpoint.get(CONFIG_KEY)
    if saved is None:
        raise CheckpointError(f"checkpoint {path} was not written by attnexp (no {CONFIG_KEY})")
    diffs = config_diff(saved, computed_config(cfg))
    if diffs:
        shown = "; ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, a, b in diffs[:10])
        more = f" (and {len(diffs) - 10} more)" if len(diffs) > 10 else ""
        raise CheckpointError(
            f"checkpoint {path} belongs to another config; keys that differ: {shown}{more}"
        )
    return int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, saving via temp file + rename and loading weights only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        # Serialised in memory first: a write error is then the OS's, with its errno (a full
        # disk is ``DiskFull``), not torch's "enforce fail at inline_container.cc".
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_open(path, "wb") as f:
            f.write(buffer.getbuffer())

    def load_checkpoint(
        self, path, map_location: Callable | Any = "cpu", weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(path, map_location)


class ConfigStamp(L.Callback):
    """Store the computed config in every checkpoint, so a resume can check it belongs."""

    def __init__(self, cfg: DictConfig) -> None:
        self.config = computed_config(cfg)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config
