"""A dataset's shape facts are one object: checked once with the key named, carried whole from the
dataset config to the data module, the backbone and the classifier."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from attnexp.config.validate import validate
from attnexp.data.shape import DataShape
from attnexp.models import build_model
from attnexp.training.pipeline import build_data
from tests.conftest import BACKBONES, DATASETS, compose_cfg, example_input, tiny

SEQUENCE = {"input_type": "sequence", "grid": [40], "num_classes": 10, "in_channels": 1}
TOKENS = {"input_type": "tokens", "grid": [16], "num_classes": 8, "vocab_size": 25}

BAD = {
    "unknown input type": (
        {**SEQUENCE, "input_type": "video"},
        "dataset.shape.input_type must be one of sequence, tokens, image, got 'video'",
    ),
    "image with a 1-D grid": (
        {**SEQUENCE, "input_type": "image"},
        "dataset.shape.grid must be a 2-D list of positive integers for image inputs, got [40]",
    ),
    "sequence with a 2-D grid": (
        {**SEQUENCE, "grid": [8, 8]},
        "dataset.shape.grid must be a 1-D list of positive integers for sequence inputs",
    ),
    "empty grid": ({**TOKENS, "grid": []}, "dataset.shape.grid must be a 1-D or 2-D list"),
    "zero grid size": ({**SEQUENCE, "grid": [0]}, "dataset.shape.grid must be a 1-D list"),
    "grid not a list": ({**SEQUENCE, "grid": 40}, "dataset.shape.grid must be a 1-D list"),
    "one class": (
        {**SEQUENCE, "num_classes": 1}, "dataset.shape.num_classes must be an integer >= 2, got 1"
    ),
    "no channels": (
        {**SEQUENCE, "in_channels": None},
        "dataset.shape.in_channels must be a positive integer for sequence inputs, got None",
    ),
    "fractional channels": ({**SEQUENCE, "in_channels": 1.5}, "dataset.shape.in_channels must"),
    "channels of tokens": (
        {**TOKENS, "in_channels": 1},
        "dataset.shape.in_channels must be null for token inputs, which use vocab_size, got 1",
    ),
    "no vocabulary": (
        {**TOKENS, "vocab_size": None},
        "dataset.shape.vocab_size must be a positive integer for token inputs, got None",
    ),
    "vocabulary of a sequence": (
        {**SEQUENCE, "vocab_size": 25},
        "dataset.shape.vocab_size must be null for sequence inputs, which use in_channels",
    ),
    "padding of a sequence": (
        {**SEQUENCE, "pad_index": 0}, "dataset.shape.pad_index marks padding tokens: it needs"
    ),
    "negative padding id": (
        {**TOKENS, "pad_index": -1}, "dataset.shape.pad_index must be an integer >= 0, got -1"
    ),
    "padding id outside the vocabulary": (
        {**TOKENS, "vocab_size": 25, "pad_index": 25},
        "dataset.shape.pad_index must be a token id below vocab_size=25, got 25",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_shape_fact_is_refused_naming_its_key_and_what_is_allowed(case):
    fields, message = BAD[case]
    with pytest.raises(ValueError) as info:
        DataShape(**fields)
    assert str(info.value).startswith(message)


def test_a_shape_is_hashable_frozen_and_knows_one_samples_array_shape():
    from_yaml = DataShape(**OmegaConf.create(SEQUENCE))  # Hydra hands lists as ListConfig
    assert from_yaml.grid == (40,) and from_yaml.sample_shape == (40, 1)
    assert from_yaml == DataShape(**SEQUENCE) and len({from_yaml, DataShape(**SEQUENCE)}) == 1
    assert DataShape(**TOKENS).sample_shape == (16,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        from_yaml.num_classes = 3
    ids = example_input(DataShape(**TOKENS), batch=64)
    assert ids.dtype == torch.long and ids.shape == (64, 16) and 0 <= ids.min() < ids.max() < 25


def test_a_dataset_config_without_a_shape_node_is_refused_naming_it(data_dir):
    cfg = compose_cfg(tiny("none", "cnn", "digits", data_dir))
    with open_dict(cfg):  # the layout before the shape node: loose keys
        cfg.dataset.input_type, cfg.dataset.grid = "image", [8, 8]
        del cfg.dataset.shape
    with pytest.raises(ValueError, match=r"dataset\.shape is missing: .* conf/dataset/\*\.yaml"):
        validate(cfg)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("dataset", DATASETS)
def test_the_data_module_and_the_backbone_get_the_datasets_one_shape(dataset, backbone, data_dir):
    cfg = compose_cfg(tiny("none", backbone, dataset, data_dir))
    shape = build_data(cfg).shape
    assert isinstance(shape, DataShape) and build_model(cfg).shape == shape
    known = {
        "mnist1d": DataShape(**SEQUENCE),
        "digits": DataShape("image", [8, 8], num_classes=10, in_channels=1),
        "mqar": DataShape(**TOKENS),
    }
    assert shape == known[dataset]


@pytest.mark.parametrize(
    ("overrides", "parameters"), [([], 137_610), (["backbone=transformer"], 70_410)]
)
def test_default_models_keep_their_parameter_count(overrides, parameters):
    """The counts of mha on MNIST-1D before the shape facts became one object (same init too:
    a state_dict comparison at the change found every tensor equal)."""
    model = build_model(compose_cfg(overrides))
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_a_language_model_shape_is_next_token_prediction_on_a_1d_token_grid():
    lm = DataShape("tokens", [64], num_classes=65, vocab_size=65, task="lm")
    assert lm.is_lm and not DataShape(**TOKENS).is_lm
    with pytest.raises(ValueError, match="dataset.shape.task must be one of classification, lm"):
        DataShape(**{**TOKENS, "task": "seq2seq"})
    with pytest.raises(ValueError, match="task=lm predicts the next token .* needs input_type tokens"):
        DataShape(**{**SEQUENCE, "task": "lm"})
    with pytest.raises(ValueError, match="num_classes must equal vocab_size for task=lm"):
        DataShape("tokens", [64], num_classes=10, vocab_size=65, task="lm")
