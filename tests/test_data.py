"""Datasets are deterministic under a seed, correct, cached, and batched by index slices."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from attnexp.data import mnist1d
from attnexp.data.datamodule import ArrayDataModule, EpochOrder, SliceLoader
from attnexp.data.digits import load_digits
from attnexp.data.mqar import load_mqar, make_mqar
from attnexp.data.shape import DataShape


def mqar(seed, n=50):
    return make_mqar(n, seq_len=20, vocab_size=30, num_classes=8, num_pairs=5, seed=seed)


def test_mqar_is_deterministic_under_a_seed_and_seeds_differ():
    x0, y0 = mqar(0)
    x0b, y0b = mqar(0)
    x1, _ = mqar(1)
    np.testing.assert_array_equal(x0, x0b)
    np.testing.assert_array_equal(y0, y0b)
    assert not np.array_equal(x0, x1)


def test_mqar_label_is_the_value_bound_to_the_query():
    x, y = mqar(3, n=200)
    for tokens, label in zip(x, y, strict=True):
        keys, values = tokens[0:10:2], tokens[1:10:2]
        assert len(set(keys)) == 5 and all(8 <= k < 29 for k in keys)  # distinct keys
        assert all(0 <= v < 8 for v in values)
        assert (tokens[10:] == 29).sum() == 9  # filler up to the query
        assert label == values[list(keys).index(tokens[-1])]
    assert len(set(y.tolist())) > 1


def test_mqar_refuses_sizes_that_do_not_fit():
    with pytest.raises(ValueError, match="seq_len"):
        make_mqar(4, seq_len=10, vocab_size=30, num_classes=8, num_pairs=5, seed=0)
    with pytest.raises(ValueError, match="distinct keys"):
        make_mqar(4, seq_len=40, vocab_size=12, num_classes=8, num_pairs=5, seed=0)


def test_mqar_train_and_test_are_different_draws():
    x_train, _, x_test, _ = load_mqar(
        num_samples=100, seq_len=20, vocab_size=30, num_classes=8, num_pairs=5
    )
    assert len(x_train) == 80 and len(x_test) == 20
    assert not np.array_equal(x_train[:20], x_test)


def test_mnist1d_is_cached_and_leaves_global_rngs_alone(tmp_path, monkeypatch):
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    first = mnist1d.load_mnist1d(str(tmp_path), num_samples=200)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected

    def regenerate(_):
        raise AssertionError("the cached dataset was generated again")

    monkeypatch.setattr(mnist1d, "_generate", regenerate)
    second = mnist1d.load_mnist1d(str(tmp_path), num_samples=200)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    x_train, y_train, x_test, y_test = first
    assert x_train.shape == (160, 40, 1) and x_test.shape == (40, 40, 1)
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 1
    # Other generator arguments are another dataset with another cache file.
    monkeypatch.undo()
    mnist1d.load_mnist1d(str(tmp_path), num_samples=100)
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 2


def test_digits_split_is_stratified_and_scaled():
    x_train, y_train, x_test, y_test = load_digits()
    assert x_train.shape[1:] == (8, 8, 1) and len(x_train) + len(x_test) == 1797
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    train_share = np.bincount(y_train) / len(y_train)
    test_share = np.bincount(y_test) / len(y_test)
    np.testing.assert_allclose(train_share, test_share, atol=0.01)


def test_slice_loader_covers_each_sample_once_per_epoch_reproducibly():
    x = torch.arange(10).float()[:, None]
    y = torch.arange(10)

    def epoch(e, seed=7):
        loader = SliceLoader(x, y, batch_size=4, sampler=EpochOrder(10, shuffle=True, seed=seed))
        assert len(loader) == 3
        loader.sampler.set_epoch(e)
        return torch.cat([b[1] for b in loader])

    assert sorted(epoch(0).tolist()) == list(range(10))
    assert not torch.equal(epoch(0), epoch(1))  # reshuffled each epoch
    assert torch.equal(epoch(1), epoch(1))  # a function of (seed, epoch): a resume replays it
    assert not torch.equal(epoch(1), epoch(1, seed=8))
    ordered = torch.cat([b[1] for b in SliceLoader(x, y, batch_size=4)])
    assert torch.equal(ordered, y)


def test_ranks_share_an_epoch_without_overlap_and_train_ranks_get_equal_batches():
    train = [EpochOrder(10, True, seed=3, rank=r, world_size=3, pad=True) for r in range(3)]
    parts = [o.indices().tolist() for o in train]
    assert [len(p) for p in parts] == [4, 4, 4] == [len(o) for o in train]
    assert set(sum(parts, [])) == set(range(10))  # 12 slots: two samples repeated as padding
    evals = [EpochOrder(10, False, rank=r, world_size=3).indices().tolist() for r in range(3)]
    assert sorted(sum(evals, [])) == list(range(10))  # evaluation: each sample exactly once


DIGITS = DataShape("image", [8, 8], num_classes=10, in_channels=1)


def digits_module(shape: DataShape = DIGITS, **kw) -> ArrayDataModule:
    return ArrayDataModule(source=lambda: load_digits(num_samples=300), shape=shape, **kw)


def test_validation_split_is_fixed_and_disjoint_from_train():
    a = digits_module(shuffle_seed=0).load()
    b = digits_module(shuffle_seed=1).load()  # another training seed: same split
    torch.testing.assert_close(a["val"][0], b["val"][0])
    train = {tuple(r) for r in a["train"][0].flatten(1).tolist()}
    val = {tuple(r) for r in a["val"][0].flatten(1).tolist()}
    assert len(a["val"][1]) == 24 and not (train & val)


def test_wrong_shape_facts_fail_with_the_key_named():
    with pytest.raises(ValueError, match=r"dataset\.shape\.grid / dataset\.shape\.in_channels"):
        digits_module(replace(DIGITS, grid=[8, 7])).load()
    with pytest.raises(ValueError, match=r"dataset\.shape\.num_classes=5"):
        digits_module(replace(DIGITS, num_classes=5)).load()


def test_mnist1d_seeds_give_different_datasets(tmp_path):
    a = mnist1d.load_mnist1d(str(tmp_path), num_samples=100, seed=1)
    b = mnist1d.load_mnist1d(str(tmp_path), num_samples=100, seed=2)
    assert not np.array_equal(a[0], b[0])
