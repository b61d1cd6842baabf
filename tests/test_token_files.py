"""Token files the field shares (nanoGPT's ``.bin`` pair, llm.c's headered shards), read
memory-mapped; byte-level BPE preparation that gives byte-identical files when run twice; bits per
byte; evaluation windows with a stride."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from attnexp.config.validate import validate
from attnexp.data.lm import EvalWindows, Stream
from attnexp.data.shape import IGNORE_INDEX
from attnexp.data.tokenizer import Tokenizer
from attnexp.data.tokens import MAGIC, read_shard, write_shard
from attnexp.util.checks import ConfigError
from tests.conftest import SUBPROCESS_ENV, compose_cfg

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "experiment=shakespeare_char_cpu", "trainer=cpu", "logger=csv", "figures=0",
    "backbone.depth=1", "backbone.dim=16", "dataset.context_len=16", "dataset.batch_size=4",
    "dataset.steps_per_epoch=3", "trainer.max_steps=6", "optim.scheduler.warmup_steps=2",
]  # fmt: skip


def tokens_run(folder: Path, *extra: str) -> list[str]:
    return [*TINY, "dataset=tokens", f"dataset.path={folder}", "dataset.shape.vocab_size=64", *extra]


def nanogpt_pair(folder: Path, n_train: int = 600, n_val: int = 90) -> Path:
    """What nanoGPT's prepare.py writes: ``np.array(ids, dtype=np.uint16).tofile(...)``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.array(rng.integers(0, 64, n_train), dtype=np.uint16).tofile(folder / "train.bin")
    np.array(rng.integers(0, 64, n_val), dtype=np.uint16).tofile(folder / "val.bin")
    return folder


def test_a_nanogpt_pair_trains_evaluates_and_val_serves_as_test(tmp_path):
    from attnexp.training.pipeline import evaluate, train

    run = tmp_path / "run"
    cfg = compose_cfg(tokens_run(nanogpt_pair(tmp_path / "data")), run)
    results = train(cfg)
    assert results["status"] == "completed" and results["test_split"] == "val"
    assert results["state_floats"] == 2 * 16 * 16  # one layer's keys and values: 16 positions x 16
    m = results["metrics"]
    assert m["test/loss"] == pytest.approx(m["val/loss_best"], rel=1e-6)  # the same tokens
    assert "test/bpb" not in m  # no tokenizer: no bytes to divide by, nothing guessed
    again = evaluate(cfg, run / results["best_checkpoint"])
    assert again["test/loss"] == pytest.approx(m["test/loss"], rel=1e-6)


def test_token_files_stay_memory_mapped_and_a_window_never_spans_two_shards(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    # Shard 0 holds 0..39, shard 1 40..59: a window that spans two shards would break the count,
    # and a window's first id says which shard it came from.
    for k, n in enumerate([40, 20]):
        write_shard(folder / f"data_train_{k:06d}.bin", np.arange(40 * k, 40 * k + n))
    write_shard(folder / "data_val_000000.bin", np.arange(30), version=2)  # uint32 ids read too
    cfg = compose_cfg(tokens_run(folder, "dataset.source.format=llmc", "dataset.context_len=8",
                                 "dataset.batch_size=16"))  # fmt: skip
    module = instantiate(cfg.dataset)
    streams = module.load()
    assert all(isinstance(p, np.memmap) for s in streams.values() for p in s.pieces)
    assert streams["train"].lengths == [40, 20] and streams["test"].lengths == [30]
    starts = set()
    for x, y in module.train_dataloader():
        full = torch.cat([x, y[:, -1:]], 1)
        assert torch.equal(full[:, 1:] - full[:, :-1], torch.ones(16, 8, dtype=torch.long))
        starts |= set(x[:, 0].tolist())
    first, second = set(range(0, 40 - 8)), set(range(40, 60 - 8))  # each shard's window starts
    assert starts <= first | second and starts & first and starts & second  # both shards drawn


def headered(path: Path, magic=MAGIC, version=1, count=None, tokens=(1, 2, 3)) -> Path:
    header = np.zeros(256, dtype="<i4")
    header[:3] = magic, version, len(tokens) if count is None else count
    path.write_bytes(header.tobytes() + np.array(tokens, dtype="<u2").tobytes())
    return path


BAD_FILES = {
    "wrong magic": (lambda d: headered(d / "a_train_0.bin", magic=20240519), r"a_train_0\.bin starts with 20240519, not llm\.c's magic number 20240520"),
    "count past the end": (lambda d: headered(d / "a_train_0.bin", count=5), r"a_train_0\.bin: its header says 5 tokens but the file holds 3 after the header: it is truncated"),
    "unknown version": (lambda d: headered(d / "a_train_0.bin", version=7), r"a_train_0\.bin has header version 7"),
    "no header": (lambda d: (d / "a_train_0.bin").write_bytes(b"\0" * 100), r"a_train_0\.bin holds 100 bytes, less than the 1024-byte header"),
    "id past the vocabulary": (lambda d: write_shard(d / "a_train_0.bin", [1, 64] * 50), r"a_train_0\.bin holds token id 64, not below dataset\.shape\.vocab_size=64: set it to at least 65"),
    "too short for a window": (lambda d: write_shard(d / "a_train_0.bin", range(10)), r"dataset\.context_len=16 does not fit the training files \(\S*a_train_0\.bin; the longest holds 10 tokens"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_shard_is_refused_before_training_naming_the_file(tmp_path, case):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_shard(folder / "a_val_0.bin", range(40))
    make, message = BAD_FILES[case]
    make(folder)
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(tokens_run(folder, "dataset.source.format=llmc")))


def test_a_truncated_nanogpt_file_and_a_glob_that_matches_nothing_are_refused(tmp_path):
    folder = nanogpt_pair(tmp_path / "data")
    with open(folder / "val.bin", "ab") as f:
        f.write(b"\1")  # half a token
    with pytest.raises(ConfigError, match=r"val\.bin holds 181 bytes, not a whole number of uint16"):
        validate(compose_cfg(tokens_run(folder)))
    with pytest.raises(ConfigError, match=r"dataset\.source\.val='nothing\*\.bin' matches no file"):
        validate(compose_cfg(tokens_run(folder, "dataset.source.val=nothing*.bin")))


def test_shards_round_trip_in_llm_cs_layout(tmp_path):
    write_shard(tmp_path / "s.bin", [5, 65535, 0])
    raw = (tmp_path / "s.bin").read_bytes()
    assert np.frombuffer(raw[:12], "<i4").tolist() == [MAGIC, 1, 3] and len(raw) == 1024 + 6
    assert read_shard(tmp_path / "s.bin").tolist() == [5, 65535, 0]


# --------------------------------------------------------------------------- evaluation windows


@pytest.mark.parametrize(("lengths", "context", "stride"), [([23], 8, 3), ([23, 2, 9], 8, 8), ([40], 5, 1)])
def test_strided_windows_score_each_token_once_with_context_minus_stride_before_it(lengths, context, stride):
    pieces = [torch.arange(1000 * i, 1000 * i + n) for i, n in enumerate(lengths)]
    windows = EvalWindows(Stream(pieces), context, stride)
    x, y = windows.batch(torch.arange(len(windows)))
    scored = y != IGNORE_INDEX
    assert sorted(y[scored].tolist()) == sorted(t for p in pieces for t in p[1:].tolist())
    assert torch.equal(y[scored] - 1, x[scored])  # each label is the token after its input
    history = torch.arange(context).expand_as(x)[scored]  # tokens before it inside its window
    at_start = (y[scored] % 1000) - 1  # the tokens before it in its piece
    assert (history >= torch.minimum(at_start, torch.tensor(context - stride))).all()


# --------------------------------------------------------------------------- BPE


TEXT = "".join(f"line {i}: the quick brown fox, é ü €, jumps {i % 7} times\n" for i in range(400))


def test_bpe_preparation_run_twice_gives_byte_identical_files_and_decodes_back(tmp_path):
    source = tmp_path / "text.txt"
    source.write_text(TEXT, encoding="utf-8")
    command = [sys.executable, str(ROOT / "scripts" / "prepare_text.py"), "--input", str(source),
               "--vocab-size", "300"]  # fmt: skip
    for out in ("a", "b"):  # separate processes: nothing cached between them
        subprocess.run([*command, "--out", str(tmp_path / out)], check=True, env=SUBPROCESS_ENV,
                       capture_output=True)  # fmt: skip
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["manifest.json", "test.bin", "tokenizer.json", "train.bin", "val.bin"]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    tokenizer = Tokenizer.load(tmp_path / "a" / "tokenizer.json")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    decoded = "".join(
        tokenizer.decode(np.fromfile(tmp_path / "a" / f"{s}.bin", dtype="<u2"))
        for s in ("train", "val", "test")
    )
    assert decoded == TEXT and tokenizer.size == manifest["vocab_size"] <= 300
    assert sum(s["bytes"] for s in manifest["splits"].values()) == len(TEXT.encode("utf-8"))
    lengths = tokenizer.byte_lengths
    ids = np.fromfile(tmp_path / "a" / "test.bin", dtype="<u2")
    assert lengths[ids].sum() == manifest["splits"]["test"]["bytes"]


def test_a_bpe_run_reports_bits_per_byte_over_the_test_texts_bytes(tmp_path):
    from attnexp.training.pipeline import train

    source = tmp_path / "text.txt"
    source.write_text(TEXT, encoding="utf-8")
    overrides = [*TINY, "dataset=shakespeare_bpe", f"dataset.path={source}",
                 f"paths.data_dir={tmp_path / 'data'}", "dataset.shape.vocab_size=300"]  # fmt: skip
    results = train(compose_cfg(overrides, tmp_path / "run"))
    m = results["metrics"]
    (cache,) = (tmp_path / "data").glob("bpe-text-*")
    ids = np.fromfile(cache / "test.bin", dtype="<u2")
    scored_bytes = Tokenizer.load(cache / "tokenizer.json").byte_lengths[ids[1:]].sum()
    # bits over the scored tokens = bpt x tokens = bpb x their bytes
    assert m["test/bpb"] * scored_bytes == pytest.approx(m["test/bpt"] * (len(ids) - 1), rel=1e-5)
    assert results["test_split"] == "test" and results["data"]["tokenizer_sha256"]
    assert m["test/bpb"] < m["test/bpt"] and math.isfinite(m["test/bpb"])


# --------------------------------------------------------------------------- enwik8 and FineWeb


def test_a_raw_byte_file_splits_by_byte_counts_and_reports_bits_per_character(tmp_path):
    from attnexp.training.pipeline import train

    raw = tmp_path / "enwik8"
    raw.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4200, dtype=np.uint8)))
    counts = ["dataset.source.train_bytes=3000", "dataset.source.val_bytes=500",
              "dataset.source.test_bytes=500"]  # fmt: skip
    overrides = [*TINY, "dataset=enwik8", f"dataset.path={raw}", *counts]
    module = instantiate(compose_cfg(overrides).dataset)
    streams = module.load()
    assert {s: v.lengths for s, v in streams.items()} == {"train": [3000], "val": [500], "test": [500]}
    assert streams["test"].pieces[0][0] == raw.read_bytes()[3500]  # raw bytes, never decoded
    m = train(compose_cfg(overrides, tmp_path / "run"))["metrics"]
    assert m["test/bpc"] == m["test/bpb"] == pytest.approx(m["test/bpt"], rel=1e-6)
    with pytest.raises(ConfigError, match=r"holds 4,200 bytes, fewer than dataset\.source\.train_bytes"):
        validate(compose_cfg([*overrides[:-3], "dataset.source.train_bytes=4000", *counts[1:]]))


def test_fineweb_gpt2_reads_modded_nanogpts_shards(tmp_path):
    folder = tmp_path / "fineweb10B"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("fineweb_train_000001.bin", 3000), ("fineweb_train_000002.bin", 2500),
                    ("fineweb_val_000000.bin", 1200)):  # fmt: skip
        write_shard(folder / name, rng.integers(0, 50257, n))
    small = ["experiment=fineweb_gpt2", f"dataset.path={folder}", "trainer=cpu", "trainer.precision=32",
             "backbone.depth=1", "backbone.dim=24", "attention.num_heads=2", "dataset.context_len=32",
             "dataset.batch_size=2", "trainer.accumulate_grad_batches=1", "trainer.max_steps=2",
             "dataset.steps_per_epoch=2", "optim.scheduler.warmup_steps=1", "logger=csv", "figures=0"]  # fmt: skip
    cfg = compose_cfg(small)
    validate(cfg)
    module = instantiate(cfg.dataset)
    assert module.load()["train"].lengths == [3000, 2500] and module.test_split == "val"
    x, y = next(iter(module.train_dataloader()))
    assert x.shape == (2, 32) and int(x.max()) < 50257


def test_texts_come_from_a_folder_or_a_saved_hugging_face_dataset(tmp_path):
    import datasets

    from attnexp.data.bpe import read_texts

    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("second")
    (folder / "sub" / "a.txt").write_text("nested")
    assert list(read_texts(str(folder))) == ["second", "nested"]  # every file, in path order
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"body": ["one", "two"], "id": [1, 2]}).save_to_disk(str(saved))
    assert list(read_texts(str(saved), text_column="body")) == ["one", "two"]
    with pytest.raises(ValueError, match=r"--text-column text is not one of body, id"):
        list(read_texts(str(saved)))
