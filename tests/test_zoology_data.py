"""Zoology's MQAR: its sampling law, per-token labels, the cache, and a tiny run as a language model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from attnexp.data import zoology_mqar
from attnexp.data.datamodule import ArrayDataModule
from attnexp.data.shape import IGNORE_INDEX, DataShape
from attnexp.data.zoology_mqar import load_zoology_mqar, make_zoology_mqar, power_law
from attnexp.tasks.lm import TokenMetrics
from tests.conftest import compose_cfg

V = 64  # keys [1, 32), values [32, 64)
TINY_MQAR = [
    "dataset=zoology_mqar", "dataset.seq_len=16", "dataset.num_kv_pairs=2",
    f"dataset.vocab_size={V}", "dataset.num_train=200", "dataset.num_test=40",
    "dataset.batch_size=32", "dataset.val_fraction=0.2",
]  # fmt: skip


def test_each_key_is_asked_once_and_labelled_with_its_value_and_nothing_else_is_scored():
    seq_len, k = 32, 4
    x, y = make_zoology_mqar(500, seq_len, k, vocab_size=V, seed=0)
    assert x.shape == y.shape == (500, seq_len) and x.dtype == y.dtype == np.int64
    for tokens, labels in zip(x, y, strict=True):
        keys, values = tokens[0 : 2 * k : 2], tokens[1 : 2 * k : 2]
        assert len(set(keys)) == k and all(1 <= key < V // 2 for key in keys)
        assert len(set(values)) == k and all(V // 2 <= v < V for v in values)
        after = tokens[2 * k :]
        asked = np.flatnonzero(after) + 2 * k
        assert sorted(tokens[asked]) == sorted(keys)  # each key once as a query, 0 elsewhere
        assert all((p - 2 * k) % 2 == 0 for p in asked)  # at even offsets after the pairs
        bound = dict(zip(keys, values, strict=True))
        assert [labels[p] for p in asked] == [bound[tokens[p]] for p in asked]
        assert set(np.flatnonzero(labels != IGNORE_INDEX)) == set(asked)
    # Keys and values span their whole ranges across sequences.
    assert x[:, 0].min() == 1 and x[:, 0].max() == V // 2 - 1
    assert x[:, 1].min() == V // 2 and x[:, 1].max() == V - 1


def test_the_docstring_layout_inputs_are_the_sequence_labels_its_next_tokens():
    # The value would follow its query: the label at a query is the (shifted) next token.
    x, y = make_zoology_mqar(3, 16, 2, vocab_size=12, seed=5)
    for tokens, labels in zip(x, y, strict=True):
        for p in np.flatnonzero(labels != IGNORE_INDEX):
            key = tokens[p]
            pair = list(tokens[0:4:2]).index(key)
            assert labels[p] == tokens[2 * pair + 1]
        assert tokens[-1] == 0 and labels[-1] == IGNORE_INDEX  # the last slot never holds a query


def test_query_gaps_follow_zoologys_power_law_drawn_without_replacement():
    """Each draw's marginal matches numpy's ``choice(p=..., replace=False)``, Zoology's sampler;
    the first draw is the power law itself."""
    n, seq_len, k = 20_000, 64, 4
    space = (seq_len - 2 * k) // 2
    p = power_law(space, 0.01)
    assert p[0] / p[1] == pytest.approx(2**0.99)  # P(g) ∝ (g + 1)^(a - 1)
    x, _ = make_zoology_mqar(n, seq_len, k, vocab_size=V, seed=1)
    keys = x[:, 0 : 2 * k : 2]
    after = x[:, 2 * k :]
    # gap of the i-th pair's key: where it comes back, in slots of two after the pairs
    gaps = np.stack([np.argmax(after == keys[:, [i]], axis=1) // 2 for i in range(k)], axis=1)
    rng = np.random.default_rng(2)
    reference = np.stack([rng.choice(space, size=k, replace=False, p=p) for _ in range(n)])
    for i in range(k):
        ours = np.bincount(gaps[:, i], minlength=space) / n
        theirs = np.bincount(reference[:, i], minlength=space) / n
        sigma = np.sqrt(theirs * (1 - theirs) * 2 / n) + 1e-3
        assert np.all(np.abs(ours - theirs) < 5 * sigma), f"draw {i}"
    first = np.bincount(gaps[:, 0], minlength=space) / n
    assert np.all(np.abs(first - p) < 5 * np.sqrt(p * (1 - p) / n) + 1e-3)
    assert first[0] > 0.2 and first[-1] < 0.03  # mostly short gaps


def test_random_non_queries_fills_only_the_zeros_and_keeps_the_labels():
    x0, y0 = make_zoology_mqar(50, 32, 4, vocab_size=V, seed=3)
    x1, y1 = make_zoology_mqar(50, 32, 4, vocab_size=V, random_non_queries=True, seed=3)
    np.testing.assert_array_equal(y0, y1)
    kept = x0 != 0
    np.testing.assert_array_equal(x0[kept], x1[kept])
    assert (x1[~kept] != 0).mean() > 0.9


def test_a_seed_gives_one_dataset_and_train_and_test_are_different_draws(tmp_path):
    a = make_zoology_mqar(20, 16, 2, vocab_size=V, seed=0)
    b = make_zoology_mqar(20, 16, 2, vocab_size=V, seed=0)
    c = make_zoology_mqar(20, 16, 2, vocab_size=V, seed=1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    x_train, _, x_test, _ = load_zoology_mqar(
        str(tmp_path), seq_len=16, num_kv_pairs=2, vocab_size=V, num_train=40, num_test=40
    )
    assert not np.array_equal(x_train, x_test)


def test_the_dataset_is_generated_once_per_argument_set(tmp_path, monkeypatch):
    args = dict(seq_len=16, num_kv_pairs=2, vocab_size=V, num_train=30, num_test=10)
    first = load_zoology_mqar(str(tmp_path), **args)

    def regenerate(*_, **__):
        raise AssertionError("the cached dataset was generated again")

    monkeypatch.setattr(zoology_mqar, "make_zoology_mqar", regenerate)
    for a, b in zip(first, load_zoology_mqar(str(tmp_path), **args), strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(list(tmp_path.glob("zoology_mqar-*.npz"))) == 1
    monkeypatch.undo()
    load_zoology_mqar(str(tmp_path), **{**args, "seed": 1})
    load_zoology_mqar(str(tmp_path), **{**args, "num_kv_pairs": 3, "seq_len": 12})
    assert len(list(tmp_path.glob("zoology_mqar-*.npz"))) == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seq_len=15), r"dataset\.seq_len must be even"),
        (dict(num_kv_pairs=5), r"dataset\.num_kv_pairs must be in \[1, seq_len / 4\]"),
        (dict(vocab_size=8, num_kv_pairs=4), r"dataset\.vocab_size=8 leaves 3 keys"),
        (dict(num_train=0), r"dataset\.num_train must be a positive integer"),
    ],
)
def test_sizes_that_do_not_fit_are_refused_naming_the_key(tmp_path, kwargs, message):
    args = dict(seq_len=16, num_kv_pairs=2, vocab_size=V, num_train=10, num_test=10)
    with pytest.raises(ValueError, match=message):
        load_zoology_mqar(str(tmp_path), **{**args, **kwargs})


def test_the_config_builds_per_token_splits_with_validation_carved_from_train(data_dir):
    cfg = compose_cfg([*TINY_MQAR, f"paths.data_dir={data_dir}"])
    module = instantiate(cfg.dataset)
    assert module.shape == DataShape("tokens", [16], V, vocab_size=V, task="lm")
    splits = module.load()
    assert {s: tuple(y.shape) for s, (_, y) in splits.items()} == {
        "train": (160, 16), "val": (40, 16), "test": (40, 16)
    }  # fmt: skip
    x, y = next(iter(module.train_dataloader()))
    assert x.dtype == y.dtype == torch.long and x.shape == y.shape == (32, 16)
    assert ((y != IGNORE_INDEX).sum(1) == 2).all()  # two queries scored per sequence


def labelled_module(y: np.ndarray, grid: int = 4) -> ArrayDataModule:
    x = np.zeros((len(y), grid), dtype=np.int64)
    shape = DataShape("tokens", [grid], 8, vocab_size=8, task="lm")
    return ArrayDataModule(lambda: (x, y, x, y), shape, batch_size=2, val_fraction=0.25)


def test_per_token_labels_are_checked_against_the_shape():
    ok = np.full((8, 4), IGNORE_INDEX)
    ok[:, 1] = 7
    assert labelled_module(ok).load()["train"][1].shape == (6, 4)
    with pytest.raises(ValueError, match=r"labels have per-sample shape \(\), .*task=lm needs \(4,\)"):
        labelled_module(np.zeros(8, dtype=np.int64)).load()
    bad = ok.copy()
    bad[0, 0] = 8
    with pytest.raises(ValueError, match=r"num_classes=8 \(or -100, unscored\)"):
        labelled_module(bad).load()


def test_accuracy_counts_the_labelled_positions_only():
    _, y = make_zoology_mqar(10, 16, 2, vocab_size=V, seed=0)
    y = torch.as_tensor(y)
    scored = y != IGNORE_INDEX
    logits = torch.zeros(*y.shape, V)
    # Right at every query but the first of each sequence; never right where nothing is scored.
    right = scored.clone()
    right[torch.arange(10), scored.int().argmax(1)] = False
    logits[right] = torch.nn.functional.one_hot(y[right], V).float()
    logits[~scored, 0] = 1.0
    metric = TokenMetrics()
    metric.update(logits, y)
    out = metric.compute()
    assert out["tokens"] == 20 and out["acc"] == pytest.approx(0.5)


def test_a_tiny_transformer_run_records_test_accuracy(tmp_path, data_dir):
    from attnexp.training.pipeline import train

    overrides = [
        *TINY_MQAR, f"paths.data_dir={data_dir}", "backbone=transformer", "attention=mha",
        "backbone.depth=1", "backbone.dim=16", "trainer=cpu", "logger=csv",
        "trainer.max_epochs=2", "figures=1",
    ]  # fmt: skip
    results = train(compose_cfg(overrides, tmp_path / "run"))
    assert results["status"] == "completed" and results["task"]["name"] == "lm"
    assert 0.0 <= results["metrics"]["test/acc"] <= 1.0
    assert not (tmp_path / "run" / "samples.txt").exists()  # token ids spell no text


def test_a_top_level_dataset_key_the_source_does_not_take_is_refused(data_dir):
    cfg = compose_cfg([*TINY_MQAR, f"paths.data_dir={data_dir}", "+dataset.num_pairs=3"])
    with pytest.raises(Exception, match=r"dataset\.num_pairs is neither an argument"):
        instantiate(cfg.dataset)
