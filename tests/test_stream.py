"""``dataset.loader=workers``: DataLoader workers stream the splits from the CPU in exactly the
batches of the default ``slices`` path, so the two train identically."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from attnexp.config.validate import validate
from attnexp.data.datamodule import (
    ArrayDataModule,
    EpochBatches,
    EpochOrder,
    SliceLoader,
    SplitBatches,
    worker_loader,
)
from attnexp.data.shape import DataShape
from attnexp.training.pipeline import train
from tests.conftest import compose_cfg, tiny

IMAGES = DataShape("image", [4, 4], num_classes=3, in_channels=1)
TOKENS = DataShape("tokens", [9], num_classes=3, vocab_size=6, pad_index=0)


def images() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 4, 4, 1), dtype=np.uint8)
    y = rng.integers(0, 3, 40)
    return x[:30], y[:30], x[30:], y[30:]


def padded_tokens() -> tuple[np.ndarray, ...]:
    """Sequences of 1 .. 9 real tokens padded with 0 at their end: trimmed batches differ in width."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 10, 40)
    x = np.where(np.arange(9) < lengths[:, None], rng.integers(1, 6, (40, 9)), 0)
    y = rng.integers(0, 3, 40)
    return x[:30], y[:30], x[30:], y[30:]


def epochs_of(loader, epochs: int = 2) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Every batch of ``epochs`` epochs, each after ``set_epoch`` as Lightning calls it."""
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        out.append(list(loader))
    return out


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.dtype == xb.dtype and ya.dtype == yb.dtype
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize(
    "source, shape, trim", [(images, IMAGES, False), (padded_tokens, TOKENS, True)]
)
def test_workers_yield_exactly_the_batches_of_slices(source, shape, trim, num_workers):
    def module(loader: str) -> ArrayDataModule:
        return ArrayDataModule(
            source, shape, batch_size=4, shuffle_seed=3, trim_padding=trim, loader=loader,
            num_workers=num_workers,
        )  # fmt: skip

    slices, workers = module("slices"), module("workers")
    train_loader = workers.train_dataloader()
    assert isinstance(train_loader, DataLoader) and train_loader.num_workers == num_workers
    assert not train_loader.pin_memory  # no trainer on a CUDA device: nothing to pin for
    two = epochs_of(train_loader)
    assert_same_batches(two[0], epochs_of(slices.train_dataloader())[0])
    assert_same_batches(two[1], epochs_of(slices.train_dataloader())[1])
    assert not torch.equal(two[0][0][1], two[1][0][1])  # the epochs are shuffled differently
    for split in ("val", "test"):
        assert_same_batches(
            list(getattr(workers, f"{split}_dataloader")()),
            list(getattr(slices, f"{split}_dataloader")()),
        )
    if shape is IMAGES:  # converted on the device, per batch, as in slices
        assert all(xb.dtype == torch.uint8 for xb, _ in two[0])
    else:  # trimmed to each batch's longest sample, so widths vary
        assert len({xb.shape[1] for xb, _ in two[0]}) > 1


def test_each_rank_gets_the_same_share_from_workers_as_from_slices():
    x, y = torch.arange(22).view(11, 2), torch.arange(11)
    for rank in (0, 1):
        order = EpochOrder(11, shuffle=True, seed=5, rank=rank, world_size=2, pad=True)
        streamed = worker_loader(SplitBatches(x, y), EpochBatches(order, 2), 0, False)
        assert_same_batches(
            epochs_of(streamed)[1], epochs_of(SliceLoader(x, y, 2, order))[1]
        )


def test_memmapped_splits_are_streamed_without_a_copy(tmp_path):
    x, y, x_test, y_test = images()
    arrays = []
    for name, a in {"x": x, "y": y, "xv": x[:8], "yv": y[:8], "xt": x_test, "yt": y_test}.items():
        np.save(tmp_path / f"{name}.npy", a.astype(np.uint8 if name.startswith("x") else np.int64))
        arrays.append(np.load(tmp_path / f"{name}.npy", mmap_mode="r"))
    six = lambda: tuple(arrays)  # noqa: E731
    dm = ArrayDataModule(six, IMAGES, batch_size=4, val_fraction=None, loader="workers")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even torch's note on read-only arrays
        splits = dm.load()
    for i, split in enumerate(("train", "val", "test")):
        (xs, ys), (xm, ym) = splits[split], arrays[2 * i : 2 * i + 2]
        assert xs.data_ptr() == xm.ctypes.data and ys.data_ptr() == ym.ctypes.data  # shared
    in_memory = ArrayDataModule(
        lambda: tuple(np.array(a) for a in arrays), IMAGES, batch_size=4, val_fraction=None
    )
    assert_same_batches(
        epochs_of(dm.train_dataloader())[1], epochs_of(in_memory.train_dataloader())[1]
    )


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("loader", "stream", "must be one of slices, workers"),
        ("num_workers", -1, "must be an integer >= 0"),
        ("num_workers", 1.5, "must be an integer >= 0"),
        ("pin_memory", "yes", "must be true, false or null"),
    ],
)
def test_bad_loader_settings_are_refused_before_training(key, value, allowed, data_dir):
    with pytest.raises(ValueError, match=f"dataset.{key} {allowed}"):
        ArrayDataModule(images, IMAGES, **{key: value})
    cfg = compose_cfg([*tiny("none", "cnn", "digits", data_dir), f"dataset.{key}={value}"])
    with pytest.raises(ValueError, match=f"dataset.{key} {allowed}"):
        validate(cfg)


def test_training_with_workers_gives_the_metrics_of_slices(tmp_path, data_dir):
    base = [*tiny("none", "cnn", "digits", data_dir), "debug=limit", "seed=1"]
    with_slices = train(compose_cfg(base, tmp_path / "slices"))["metrics"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with_workers = train(
            compose_cfg([*base, "dataset.loader=workers"], tmp_path / "workers")
        )["metrics"]
    assert with_workers == with_slices
    assert not [w for w in caught if "pin_memory" in str(w.message)]  # null: no pinning on CPU
