"""Every attention x backbone x dataset composes, builds, and classifies a real batch."""

from __future__ import annotations

import itertools

import pytest
import torch

from attnexp.attention import Kind, factory
from attnexp.config.paths import CONFIG_DIR
from attnexp.models.common import kind_of
from attnexp.training.pipeline import build_data, build_model
from tests.conftest import ATTENTIONS, BACKBONES, DATASETS, compose_cfg, tiny


def test_the_grid_has_every_part():
    assert "none" in ATTENTIONS
    assert set(BACKBONES) == {"cnn", "transformer"}
    assert set(DATASETS) == {"mnist1d", "digits", "mqar"}


@pytest.fixture(scope="module")
def batches(data_dir):
    """One real validation batch per dataset."""
    out = {}
    for dataset in DATASETS:
        cfg = compose_cfg(tiny("none", "cnn", dataset, data_dir))
        out[dataset] = next(iter(build_data(cfg).val_dataloader()))
    return out


@pytest.mark.parametrize(
    "attention,backbone,dataset", list(itertools.product(ATTENTIONS, BACKBONES, DATASETS))
)
def test_every_cell_builds_and_classifies_a_real_batch(
    attention, backbone, dataset, data_dir, batches
):
    cfg = compose_cfg(tiny(attention, backbone, dataset, data_dir))
    model = build_model(cfg).eval()
    x, y = batches[dataset]
    logits = model(x)
    assert logits.shape == (len(y), cfg.dataset.shape.num_classes)
    assert torch.isfinite(logits).all()

    kind = kind_of(factory(cfg.attention))
    slots = dict(model.slots())
    expected_slots = {
        Kind.IDENTITY: 0,
        Kind.POOL: 1,
        Kind.MIXER: cfg.backbone.depth,
        Kind.GATE: cfg.backbone.depth,
    }[kind]
    assert len(slots) == expected_slots
    assert model.attention_flops() == sum(s.module.flops(s.grid) for s in slots.values())
    if kind is not Kind.IDENTITY:
        assert model.attention_flops() > 0

    # Collecting weights gives the same logits and one weights dict per slot.
    same_logits, weights = model.attention_weights(x)
    torch.testing.assert_close(same_logits, logits)
    assert set(weights) == set(slots)
    assert all(isinstance(w, dict) for w in weights.values())


EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment, data_dir):
    cfg = compose_cfg([f"experiment={experiment}", f"paths.data_dir={data_dir}"])
    assert cfg.choices.experiment == experiment
    build_model(cfg)
