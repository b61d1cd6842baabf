"""Hugging Face ``datasets`` (the optional extra ``attnexp[hf]``) as in-memory arrays.

``dataset.name`` is a hub id (loaded through the HF cache; with ``HF_DATASETS_OFFLINE=1`` only
what the cache holds) or a local directory written by ``save_to_disk``. Its ``train_split`` and
``test_split`` are used; without a test split a stratified ``test_fraction`` of train is held
out. Column names are settings (``image_column``, ``text_column``, ``label_column``).

- ``load_hf_image``: uint8 ``(N, H, W, C)`` images, converted and resized as an image folder's
  (``attnexp.data.images.fit_image``), cached decoded in ``data_dir`` under the splits'
  fingerprints.
- ``load_hf_text``: text classification over characters or UTF-8 bytes (``attnexp.data.vocab``):
  id 0 pads (``dataset.shape.pad_index``), a symbol's id is its vocabulary id + 1; texts are cut
  to ``seq_len`` tokens. ``char``'s vocabulary is the sorted characters of both splits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from attnexp.data.cache import cached_arrays
from attnexp.data.images import as_labels, check_channels, fit_image
from attnexp.data.splits import Splits
from attnexp.data.vocab import KINDS, Vocabulary

PAD = 0  # the id of padding past a text's end; symbols start at 1
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            "dataset=hf_image / hf_text need Hugging Face datasets, an optional extra: "
            "pip install 'attnexp[hf]' (or pip install 'datasets>=2.14')"
        ) from e
    return datasets


def load_splits(
    name: str, train_split: str, test_split: str, test_fraction: float, seed: int,
    stratify: str | None = None, cache_dir: str | None = None,
) -> tuple[Any, Any]:  # fmt: skip
    """The ``(train, test)`` ``datasets.Dataset`` of ``name`` (hub id or saved local dir)."""
    datasets = _datasets()
    local = Path(name)
    try:
        if any((local / m).is_file() for m in SAVED_MARKERS):
            data = datasets.load_from_disk(str(local))
        else:
            data = datasets.load_dataset(name, cache_dir=cache_dir)
    except Exception as e:
        raise ValueError(
            f"dataset.name={name} cannot be loaded ({type(e).__name__}: {e}). It must be a hub id "
            "(offline, HF_DATASETS_OFFLINE=1: one already in the Hugging Face cache) or a local "
            "directory written by Dataset.save_to_disk / DatasetDict.save_to_disk"
        ) from e
    if isinstance(data, datasets.Dataset):
        data = datasets.DatasetDict({train_split: data})
    if train_split not in data:
        raise ValueError(
            f"dataset.source.train_split={train_split!r} is not a split of dataset.name={name} "
            f"(it has {', '.join(data)})"
        )
    if test_split in data:
        return data[train_split], data[test_split]
    if not 0 < test_fraction < 1:
        raise ValueError(f"dataset.source.test_fraction must be in (0, 1), got {test_fraction}")
    train = data[train_split]
    # Stratifying needs a ClassLabel column; a plain integer column splits at random.
    feature = train.features.get(stratify) if stratify else None
    by = stratify if isinstance(feature, datasets.ClassLabel) else None
    halves = train.train_test_split(test_size=test_fraction, seed=seed, stratify_by_column=by)
    return halves["train"], halves["test"]


def _column(split: Any, column: str, key: str) -> list[Any]:
    if column not in split.column_names:
        raise ValueError(
            f"dataset.source.{key}={column!r} is not a column of the data (it has "
            f"{', '.join(split.column_names)})"
        )
    return split[column]


def load_hf_image(
    name: str, data_dir: str, grid: list[int], in_channels: int, image_column: str = "image",
    label_column: str = "label", train_split: str = "train", test_split: str = "test",
    test_fraction: float = 0.2, seed: int = 0, cache_dir: str | None = None,
) -> Splits:  # fmt: skip
    check_channels(in_channels)
    splits = load_splits(
        name, train_split, test_split, test_fraction, seed, label_column, cache_dir
    )
    key = {
        "name": name, "fingerprints": [getattr(s, "_fingerprint", None) for s in splits],
        "columns": [image_column, label_column], "grid": list(grid), "channels": in_channels,
    }  # fmt: skip

    def decode() -> dict[str, np.ndarray]:
        out = {}
        for split, data in zip(("train", "test"), splits, strict=True):
            images = _column(data, image_column, "image_column")
            labels = np.asarray(_column(data, label_column, "label_column"))
            out[f"x_{split}"] = np.stack([fit_image(im, grid, in_channels) for im in images])
            out[f"y_{split}"] = as_labels(labels, f"dataset.name={name}'s {label_column!r}")
        return out

    if None in key["fingerprints"]:  # nothing names this data's version: decode it afresh
        arrays = decode()
    else:
        arrays = cached_arrays(data_dir, "hf_image", key, decode)
    return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]


def load_hf_text(
    name: str, seq_len: int, vocab_size: int, vocab: str = "bytes", text_column: str = "text",
    label_column: str = "label", train_split: str = "train", test_split: str = "test",
    test_fraction: float = 0.2, seed: int = 0, cache_dir: str | None = None,
) -> Splits:  # fmt: skip
    if vocab not in KINDS:  # refused before loading anything
        raise ValueError(f"dataset.source.vocab must be one of {', '.join(KINDS)}, got {vocab!r}")
    splits = load_splits(
        name, train_split, test_split, test_fraction, seed, label_column, cache_dir
    )
    texts = [_column(s, text_column, "text_column") for s in splits]
    vocabulary = (
        Vocabulary.from_text("".join(t for split in texts for t in split))
        if vocab == "char"
        else Vocabulary.bytes()
    )
    if vocabulary.size + 1 != vocab_size:
        raise ValueError(
            f"dataset.shape.vocab_size={vocab_size}, but {vocab} tokens of dataset.name={name} "
            f"take {vocabulary.size + 1} ids ({vocabulary.size} symbols + padding): set "
            f"dataset.shape.vocab_size={vocabulary.size + 1}"
        )
    out: list[np.ndarray] = []
    for split, split_texts in zip(splits, texts, strict=True):
        ids = np.full((len(split_texts), seq_len), PAD, dtype=np.int64)
        for row, text in zip(ids, split_texts, strict=True):
            encoded = vocabulary.encode(text)[:seq_len] + 1
            row[: len(encoded)] = encoded
        labels = np.asarray(_column(split, label_column, "label_column"))
        out += [ids, as_labels(labels, f"dataset.name={name}'s {label_column!r}")]
    return tuple(out)  # type: ignore[return-value]
