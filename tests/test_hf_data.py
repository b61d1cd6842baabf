"""Hugging Face datasets (the ``hf`` extra) from a tiny dataset saved to a local directory:
images and texts read back to known values, configurable columns and splits, a step of
training, and clear errors (a missing column, a wrong vocab size, an unloadable name offline)."""

from __future__ import annotations

import sys

import datasets  # the optional extra: make install installs it (.[dev,sweep,hf])
import huggingface_hub
import numpy as np
import pytest

from attnexp.config.validate import validate
from attnexp.data.hf import PAD, load_hf_image, load_hf_text
from attnexp.training.pipeline import train
from tests.conftest import compose_cfg
from tests.test_image_data import COLOURS, TINY

TEXTS = ["héllo", "a much longer text than the context", "", "bye", "ok", "xyz", "hi", "no"]


def save_images(path, splits=("train", "test"), image_column="img"):
    from PIL import Image

    names = list(COLOURS)
    feature = datasets.Features(
        {image_column: datasets.Image(), "label": datasets.ClassLabel(names=names)}
    )
    data = {}
    for split in splits:
        labels = [i % 3 for i in range(9)]
        images = [Image.new("RGB", (5, 7), COLOURS[names[y]]) for y in labels]
        data[split] = datasets.Dataset.from_dict(
            {image_column: images, "label": labels}, features=feature
        )
    datasets.DatasetDict(data).save_to_disk(str(path))


def test_images_from_a_saved_dataset_dict_are_uint8_resized_with_their_labels(tmp_path):
    save_images(tmp_path / "ds")
    x_train, y_train, x_test, y_test = load_hf_image(
        str(tmp_path / "ds"), str(tmp_path / "cache"), [4, 4], 3, image_column="img"
    )
    assert x_train.dtype == np.uint8 and x_train.shape == (9, 4, 4, 3)
    assert y_train.tolist() == [0, 1, 2] * 3 and y_test.tolist() == [0, 1, 2] * 3
    for image, label in zip(x_test, y_test, strict=True):
        assert (image == list(COLOURS.values())[label]).all()
    with pytest.raises(ValueError, match=r"dataset\.source\.image_column='image' is not a column of the data \(it has img, label\)"):  # fmt: skip
        load_hf_image(str(tmp_path / "ds"), str(tmp_path / "cache2"), [4, 4], 3)


def test_hf_image_trains_a_step_and_a_single_split_is_held_out_stratified(tmp_path):
    save_images(tmp_path / "ds", splits=("train",), image_column="image")
    overrides = ["dataset=hf_image", f"dataset.name={tmp_path / 'ds'}",
                 "dataset.shape.num_classes=3", "dataset.shape.grid=[8,8]",
                 f"paths.data_dir={tmp_path / 'cache'}", "dataset.source.test_fraction=0.3",
                 *TINY, "dataset.batch_size=2"]  # fmt: skip
    _, y_train, _, y_test = load_hf_image(
        str(tmp_path / "ds"), str(tmp_path / "cache"), [8, 8], 3, test_fraction=0.3
    )
    assert sorted(y_test.tolist()) == [0, 1, 2] and len(y_train) == 6
    assert train(compose_cfg(overrides, tmp_path / "run"))["status"] == "completed"


def save_texts(path):
    data = {
        "train": datasets.Dataset.from_dict({"sentence": TEXTS, "y": [0, 1] * 4}),
        "test": datasets.Dataset.from_dict({"sentence": TEXTS[:4], "y": [1, 0, 1, 0]}),
    }
    datasets.DatasetDict(data).save_to_disk(str(path))


def test_text_becomes_padded_byte_or_char_ids(tmp_path):
    save_texts(tmp_path / "ds")
    columns = {"text_column": "sentence", "label_column": "y"}
    x_train, y_train, x_test, _ = load_hf_text(str(tmp_path / "ds"), 8, 257, **columns)
    # "héllo": UTF-8 bytes + 1; é is two bytes; the rest padded with 0.
    expected = [b + 1 for b in "héllo".encode()] + [PAD, PAD]
    assert x_train[0].tolist() == expected and x_train.shape == (8, 8)
    assert x_train[1].tolist() == [b + 1 for b in b"a much l"]  # cut to seq_len
    assert x_train[2].tolist() == [PAD] * 8 and y_train.tolist() == [0, 1] * 4
    symbols = sorted(set("".join(TEXTS)))
    with pytest.raises(ValueError, match=rf"dataset\.shape\.vocab_size=257, but char tokens .* take {len(symbols) + 1} ids .*set dataset\.shape\.vocab_size={len(symbols) + 1}"):  # fmt: skip
        load_hf_text(str(tmp_path / "ds"), 8, 257, vocab="char", **columns)
    chars, _, _, _ = load_hf_text(str(tmp_path / "ds"), 4, len(symbols) + 1, vocab="char", **columns)
    assert chars[3].tolist() == [symbols.index(c) + 1 for c in "bye"] + [PAD]


def test_hf_text_trains_a_step_with_padding_declared(tmp_path):
    save_texts(tmp_path / "ds")
    overrides = ["dataset=hf_text", f"dataset.name={tmp_path / 'ds'}", "dataset.seq_len=8",
                 "dataset.shape.num_classes=2", "dataset.source.text_column=sentence",
                 "dataset.source.label_column=y", f"paths.data_dir={tmp_path}",
                 *TINY, "backbone=transformer", "dataset.batch_size=2"]  # fmt: skip
    cfg = compose_cfg(overrides, tmp_path / "run")
    assert cfg.dataset.shape.pad_index == PAD
    assert train(cfg)["status"] == "completed"


def test_an_unloadable_name_offline_is_named_before_training(tmp_path, monkeypatch):
    # The libraries read these at import (already done): set their constants as the env would.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = compose_cfg(["dataset=hf_text", "dataset.name=nobody/no-such-dataset",
                       "dataset.shape.num_classes=2", f"paths.data_dir={tmp_path}", *TINY,
                       f"dataset.source.cache_dir={tmp_path / 'hf'}"])  # fmt: skip
    with pytest.raises(ValueError, match=r"dataset\.name=nobody/no-such-dataset cannot be loaded .*HF_DATASETS_OFFLINE=1"):  # fmt: skip
        validate(cfg)
    with pytest.raises(ValueError, match=r"dataset\.name must be set"):
        validate(compose_cfg(["dataset=hf_image", "dataset.shape.num_classes=2", *TINY]))


def test_without_the_extra_the_error_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed: import fails
    with pytest.raises(ImportError, match=r"optional extra: pip install 'attnexp\[hf\]'"):
        load_hf_text(str(tmp_path), 8, 257)
