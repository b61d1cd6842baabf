"""Text corpora as token streams: nanoGPT's splits and vocabulary, a .npy cache, training windows a
pure function of (seed, step), evaluation windows that score every token once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import Tensor

from attnexp.config.validate import validate
from attnexp.data import text
from attnexp.data.lm import EvalWindows, Stream, TokenStreamDataModule
from attnexp.data.shape import IGNORE_INDEX, DataShape
from attnexp.data.text import TextSplits, load_text, split_text
from attnexp.data.vocab import Vocabulary
from tests.conftest import LM_DATASETS, SUBPROCESS_ENV, compose_cfg, tiny

# Held out: 'z' appears only in the last 10%, so a char vocabulary of the train split lacks it.
TEXT = "abcab cabba\n" * 15 + "bbbbbbbbbbbbbbbbbzzz"  # 200 characters


def write(tmp_path: Path, content: str = TEXT) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(content, encoding="utf-8")
    return path


def stream(splits: TextSplits, context_len=4, batch_size=3, steps_per_epoch=5, seed=0):
    """A data module over fixed splits (the source ignores path and download)."""
    size = splits.vocab.size
    shape = DataShape("tokens", [context_len], size, vocab_size=size, task="lm")
    return TokenStreamDataModule(
        lambda path, download: splits, shape, "unused", context_len, batch_size, steps_per_epoch,
        shuffle_seed=seed,
    )  # fmt: skip


def counting(n_train=200, n_val=23, n_test=17) -> TextSplits:
    """Token i at position i (bytes ids): a window names where it starts."""
    return TextSplits(Vocabulary.bytes(), np.arange(n_train), np.arange(n_val), np.arange(n_test))


def test_splits_are_nanogpts():
    # nanoGPT's prepare.py on tinyshakespeare: "train has 1003854 tokens", "val has 111540".
    train, val, test = split_text("x" * 1_115_394, train_fraction=0.9, val_fraction=0.05)
    assert (len(train), len(val) + len(test)) == (1_003_854, 111_540)
    assert len(val) == len(test) == 55_770
    assert split_text("0123456789" * 2, 0.5, 0.25) == ("0123456789", "01234", "56789")
    with pytest.raises(ValueError, match=r"train_fraction and val_fraction .* sum below 1"):
        split_text("abc", 0.9, 0.1)


def test_char_vocabulary_comes_from_the_train_split_and_bytes_take_any_text(tmp_path):
    path = write(tmp_path, "hello, world" * 9 + "Wq")  # 110 chars: 'W', 'q' in test only
    with pytest.raises(ValueError, match=r"test split .* 'Wq' are not in the vocab.*vocab=bytes"):
        load_text(str(path), str(tmp_path / "data"))
    data = load_text(str(path), str(tmp_path / "data"), vocab="bytes")
    assert data.vocab.size == 256
    # Known answer: 90 / 5 / 5 of 110 characters, decoded back to the text.
    cut = split_text(path.read_text(), 0.9, 0.05)
    assert [data.vocab.decode(getattr(data, s)) for s in text.SPLITS] == list(cut)
    char = load_text(str(write(tmp_path, TEXT.replace("z", "a"))), str(tmp_path / "data"))
    assert char.vocab.symbols == "\n abc"  # sorted, from the first 180 characters
    assert char.train.dtype == np.int64 and char.vocab.decode(char.train) == TEXT[:180]


def test_multibyte_text_round_trips_in_both_vocabularies(tmp_path):
    content = "Ærø – café, naïve. " * 20
    path = write(tmp_path, content)
    for vocab in ("char", "bytes"):
        data = load_text(str(path), str(tmp_path / "data"), vocab=vocab)
        ids = np.concatenate([getattr(data, s) for s in text.SPLITS])
        assert data.vocab.decode(ids) == content  # a byte split may cut a character: decode whole


def test_the_cache_is_npy_and_reused_and_keyed_by_content_and_vocab(tmp_path, monkeypatch):
    path, data_dir = write(tmp_path), tmp_path / "data"
    first = load_text(str(path), str(data_dir), vocab="bytes")
    (cache,) = data_dir.iterdir()
    files = sorted(p.name for p in cache.iterdir())
    assert files == ["test.npy", "train.npy", "val.npy", "vocab.json"]
    np.testing.assert_array_equal(np.load(cache / "train.npy", allow_pickle=False), first.train)

    def refuse(*args):
        raise AssertionError("encoded again: the cache was not reused")

    monkeypatch.setattr(text, "_encode", refuse)
    again = load_text(str(path), str(data_dir), vocab="bytes")
    assert again.vocab == first.vocab and np.array_equal(again.val, first.val)
    with pytest.raises(AssertionError, match="encoded again"):  # another vocabulary: another key
        load_text(str(path), str(data_dir), vocab="char")
    path.write_text(TEXT.upper())  # other content: another key
    with pytest.raises(AssertionError, match="encoded again"):
        load_text(str(path), str(data_dir), vocab="bytes")


def test_a_train_batch_depends_only_on_seed_and_step():
    data = counting()
    loader = stream(data, steps_per_epoch=4).train_dataloader()
    run = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        run += list(loader)
    assert len(run) == 12 and len(loader) == 4

    rebuilt = stream(data, steps_per_epoch=4).train_dataloader()
    rebuilt.sampler.set_epoch(2)  # as Lightning does when resuming at step 8
    for got, expected in zip(rebuilt, run[8:], strict=True):
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    # The step, not the epoch length, decides: 2 steps per epoch, epoch 4 holds steps 8 and 9.
    short = stream(data, steps_per_epoch=2).train_dataloader()
    short.sampler.set_epoch(4)
    assert torch.equal(next(iter(short))[0], run[8][0])

    other = stream(data, steps_per_epoch=4, seed=1).train_dataloader()
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(other, run[:4], strict=True))
    assert len({tuple(x[:, 0].tolist()) for x, _ in run}) > 6  # steps differ from each other


def test_train_windows_are_contiguous_and_y_is_x_shifted_by_one():
    context_len = 8
    module = stream(counting(n_train=40), context_len, batch_size=16, steps_per_epoch=30)
    loader = module.train_dataloader()
    starts = set()
    for x, y in loader:
        assert x.shape == y.shape == (16, context_len) and x.dtype == y.dtype == torch.long
        assert torch.equal(x - x[:, :1], torch.arange(context_len).expand_as(x))
        assert torch.equal(y, x + 1)
        starts |= set(x[:, 0].tolist())
    assert starts == set(range(40 - context_len))  # every start, none past the last full window


@pytest.mark.parametrize("n", [17, 16, 2])  # a padded last window, an exact fit, one token scored
def test_eval_windows_score_every_token_once_in_order(n):
    tokens = torch.arange(100, 100 + n)
    windows = EvalWindows(Stream([tokens]), 4, 4)
    x, y = windows.batch(slice(0, len(windows)))
    scored = y != IGNORE_INDEX
    assert x.shape == y.shape == (-(-(n - 1) // 4), 4)
    assert int(scored.sum()) == n - 1
    assert torch.equal(x[scored], tokens[:-1]) and torch.equal(y[scored], tokens[1:])
    # Padding only at the end of the last window: x = 0, y = IGNORE_INDEX.
    pad = x.numel() - (n - 1)
    assert scored.flatten()[: n - 1].all() and not scored.flatten()[n - 1 :].any()
    assert (x.flatten()[n - 1 :] == 0).all() and len(x.flatten()[n - 1 :]) == pad


def test_val_and_test_loaders_cover_their_split_and_example_batch_is_test():
    data = counting(n_val=23, n_test=17)
    module = stream(data, context_len=4, batch_size=2)
    for split, loader in (("val", module.val_dataloader()), ("test", module.test_dataloader())):
        batches = list(loader)
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        tokens = torch.as_tensor(getattr(data, split))
        assert torch.equal(y[y != IGNORE_INDEX], tokens[1:]) and len(loader) == len(batches)
        assert torch.equal(x[y != IGNORE_INDEX], tokens[:-1])
    assert torch.equal(module.example_batch(2), torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]))
    assert module.vocab == Vocabulary.bytes()


def test_array_data_module_example_batch_is_the_first_test_inputs(data_dir):
    module = instantiate(compose_cfg(tiny("none", "cnn", "digits", data_dir)).dataset)
    x_test = module.load()["test"][0]
    assert torch.equal(module.example_batch(3), x_test[:3])


def lm_overrides(path: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "dataset=text", f"dataset.path={path}", f"paths.data_dir={tmp_path / 'data'}",
        "dataset.shape.vocab_size=256", "dataset.source.vocab=bytes", "dataset.context_len=8",
        "dataset.batch_size=4", "attention=none", "backbone.depth=1", "backbone.dim=16",
        "trainer=cpu", "logger=csv", *extra,
    ]  # fmt: skip


def test_the_text_config_builds_the_data_module_of_its_shape(tmp_path):
    cfg = compose_cfg(lm_overrides(write(tmp_path), tmp_path))
    module = instantiate(cfg.dataset)
    assert module.shape == DataShape("tokens", [8], 256, vocab_size=256, task="lm")
    assert {k: v.lengths for k, v in module.load().items()} == {"train": [180], "val": [10], "test": [10]}
    assert next(iter(module.train_dataloader()))[0].shape == (4, 8)
    assert set(LM_DATASETS) == {"text", "shakespeare_char", "shakespeare_bpe", "tokens", "enwik8", "zoology_mqar"}


BAD_DATA = {
    "no path": ([], "dataset.path=???", r"dataset\.path must be set"),
    "context longer than train": (["dataset.context_len=180"], None, r"dataset\.context_len=180 does not fit the training split \(180 tokens"),
    "batch over the windows": (["dataset.context_len=170", "dataset.batch_size=11"], None, r"dataset\.batch_size=11 is larger than the 10 distinct windows"),
    "wrong vocab size": (["dataset.source.vocab=char", "dataset.shape.vocab_size=7"], None, r"dataset\.shape\.vocab_size=7, but the data's vocabulary has 5 symbols: set dataset\.shape\.vocab_size=5"),
    "zero steps": (["dataset.steps_per_epoch=0"], None, r"dataset\.steps_per_epoch must be a positive integer"),
    "unknown vocab": (["dataset.source.vocab=words"], None, r"dataset\.source\.vocab must be one of char, bytes, got 'words'"),
    "no file": ([], "missing", r"dataset\.path=\S*missing\.txt does not exist \(no download URL"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_validate_refuses_data_that_does_not_fit_naming_the_key(case, tmp_path):
    extra, path, match = BAD_DATA[case]
    overrides = lm_overrides(write(tmp_path, TEXT.replace("z", "a")), tmp_path, *extra)
    if path == "dataset.path=???":
        overrides = [o for o in overrides if not o.startswith("dataset.path=")]
    elif path == "missing":
        overrides.append(f"dataset.path={tmp_path / 'missing.txt'}")
    with pytest.raises(ValueError, match=match):
        validate(compose_cfg(overrides))


class Recorder(L.LightningModule):
    """A trivially causal model (embedding + head) that keeps every training batch it sees."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Embedding(vocab_size, 8), torch.nn.Linear(8, vocab_size)
        )
        self.seen: list[tuple[int, Tensor]] = []

    def training_step(self, batch, _):
        x, y = batch
        self.seen.append((self.global_step, x.clone()))
        return torch.nn.functional.cross_entropy(self.net(x).flatten(0, 1), y.flatten())

    def validation_step(self, batch, _):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_under_lightning_each_step_sees_the_windows_of_its_global_step():
    data = counting()
    module = stream(data, context_len=4, batch_size=3, steps_per_epoch=3, seed=7)
    model = Recorder(data.vocab.size)
    trainer = L.Trainer(
        max_steps=7, max_epochs=-1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        accelerator="cpu", devices=1,
    )  # fmt: skip
    trainer.fit(model, datamodule=module)
    sampler = module.train_dataloader().sampler
    assert [step for step, _ in model.seen] == list(range(7))  # epochs 0, 1 and part of 2
    for step, x in model.seen:
        assert torch.equal(x[:, 0], sampler.starts(step)), f"step {step} saw other windows"


def test_validate_reads_the_text_without_importing_lightning(tmp_path):
    """The command line validates first: a token stream's check must stay as fast as the arrays'."""
    overrides = lm_overrides(write(tmp_path), tmp_path, "dataset.context_len=500")
    code = (
        "import sys\nfrom attnexp.config.validate import validate\n"
        "from tests.conftest import compose_cfg\n"
        f"try:\n    validate(compose_cfg({overrides!r}))\nexcept ValueError as e:\n    print(e)\n"
        "print('lightning' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
        env=SUBPROCESS_ENV,
    )  # fmt: skip
    assert proc.stdout.splitlines()[-2:] == [
        "dataset.context_len=500 does not fit the training split (180 tokens; a window needs "
        "context_len + 1): use at most 179",
        "False",
    ], proc.stderr
