"""Shared test helpers: compose the real config as the CLI would, tiny and on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from attnexp.config import CONFIG_DIR, compose_train_config, register_resolvers
from attnexp.data.shape import DataShape

register_resolvers()

# The models here are tiny: one thread is as fast, and far faster on a CPU other jobs share.
torch.set_num_threads(1)
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

ATTENTIONS = sorted(p.stem for p in (CONFIG_DIR / "attention").glob("*.yaml"))
BACKBONES = sorted(p.stem for p in (CONFIG_DIR / "backbone").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml"))

# Small enough for a 2-core CI machine; num_samples keeps every class present.
TINY = ["trainer=cpu", "logger=csv", "backbone.depth=1", "backbone.dim=16"]
TINY_DATA = {
    "mnist1d": ["dataset.source.num_samples=400"],
    "digits": ["dataset.source.num_samples=300"],
    "mqar": ["dataset.source.num_samples=400"],
}


def tiny(attention: str, backbone: str, dataset: str, data_dir: Path) -> list[str]:
    """Overrides for a tiny CPU run of one grid cell."""
    return [
        f"attention={attention}",
        f"backbone={backbone}",
        f"dataset={dataset}",
        f"paths.data_dir={data_dir}",
        *TINY,
        *TINY_DATA[dataset],
    ]


def example_input(shape: DataShape, batch: int = 5) -> torch.Tensor:
    """A random batch of data of this ``shape``: token ids or tokens-last continuous inputs."""
    if shape.is_tokens:
        return torch.randint(0, shape.vocab_size, (batch, *shape.sample_shape))
    return torch.randn(batch, *shape.sample_shape)


def compose_cfg(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """The resolved train config for ``overrides``, as ``attnexp.cli`` hands it to ``train``."""
    return compose_train_config(overrides, output_dir if output_dir is not None else "unused")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One cache of generated datasets for the whole session."""
    return tmp_path_factory.mktemp("data")
