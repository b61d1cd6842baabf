"""The design knobs as config: command-line overrides of ``attention=mha|muse`` and the
``design_space`` experiment's sweep values build working modules on both grid ranks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from attnexp.attention import factory
from attnexp.attention.design import NORMALIZATIONS, SCORES

CONF = Path(__file__).resolve().parents[1] / "conf"
GRIDS = [(6,), (3, 4)]


def composed_attention(name: str, overrides: list[str]):
    """``attention=<name> <overrides>`` as the command line would compose it (just that group)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=[f"+attention={name}", *overrides])
    return cfg.attention


def check_builds_and_runs(cfg) -> None:
    """Built as a backbone builds it, on a sequence and on an image: shape kept, N x N weights."""
    for grid in GRIDS:
        torch.manual_seed(0)
        module = factory(cfg)(dim=16, grid_ndim=len(grid))
        x = torch.randn(2, *grid, 16)
        y, weights = module(x, return_weights=True)
        assert y.shape == x.shape and torch.isfinite(y).all()
        assert weights["attn"].shape[-2:] == (math.prod(grid),) * 2


@pytest.mark.parametrize("name", ["mha", "muse"])
@pytest.mark.parametrize(
    "override",
    [f"attention.score={s}" for s in SCORES] + [f"attention.normalize={n}" for n in NORMALIZATIONS],
)
def test_each_score_and_normalisation_is_a_command_line_override(name, override):
    cfg = composed_attention(name, [override])
    key, value = override.removeprefix("attention.").split("=")
    assert cfg[key] == value
    module = factory(cfg)(dim=16, grid_ndim=1)
    assert getattr(module.core.design, key) == value
    check_builds_and_runs(cfg)


def test_a_bad_knob_fails_when_the_module_is_built_naming_the_key():
    cfg = composed_attention("mha", ["attention.normalize=relu"])
    with pytest.raises(ValueError, match="normalize must be one of softmax, sigmoid, max"):
        factory(cfg)(dim=16, grid_ndim=1)


def test_design_space_experiment_sweeps_valid_knob_values():
    """Every attention value the sweep will try builds and runs; the rest of the experiment
    (backbone, dataset, trainer) is composed by the training pipeline."""
    experiment = OmegaConf.load(CONF / "experiment" / "design_space.yaml")
    params = experiment.hydra.sweeper.params
    knobs = {k.removeprefix("attention."): str(v).split(",") for k, v in params.items()}
    assert knobs.pop("score") == list(SCORES)
    assert knobs.pop("normalize") == list(NORMALIZATIONS)
    assert knobs.pop("seed") == ["0", "1", "2"]
    assert not knobs
    for score in SCORES:
        for normalize in NORMALIZATIONS:
            overrides = [f"attention.score={score}", f"attention.normalize={normalize}"]
            check_builds_and_runs(composed_attention("mha", overrides))
