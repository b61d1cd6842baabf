"""A missing corpus is downloaded once, verified, and renamed into place; a corrupted download is
refused and leaves nothing; no network fails before training naming dataset.path. The files are
served from a loopback HTTP server (conftest.py's ``server``): nothing real is downloaded."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from attnexp.config.validate import validate
from tests.conftest import compose_cfg

GOOD = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20
SHA256 = hashlib.sha256(GOOD).hexdigest()
VOCAB_SIZE = len(set(GOOD.decode()[: int(len(GOOD) * 0.9)]))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overrides(tmp_path: Path, url: str, *extra: str) -> list[str]:
    return [
        "dataset=shakespeare_char", f"paths.data_dir={tmp_path / 'data'}",
        f"dataset.source.url={url}", f"dataset.source.sha256={SHA256}",
        f"dataset.shape.vocab_size={VOCAB_SIZE}", "dataset.context_len=16", "dataset.batch_size=4",
        "attention=none", "backbone.depth=1", "backbone.dim=16", "trainer=cpu", "logger=csv",
        *extra,
    ]  # fmt: skip


def corpus(tmp_path: Path) -> Path:
    return tmp_path / "data" / "tinyshakespeare" / "input.txt"


def test_a_missing_file_is_downloaded_once_and_verified(tmp_path, server):
    base, files, requests = server
    files["input.txt"] = GOOD
    cfg = compose_cfg(overrides(tmp_path, f"{base}/input.txt"))
    assert cfg.dataset.path == str(corpus(tmp_path))  # the default place, under paths.data_dir
    validate(cfg)  # downloads, encodes and checks: before training
    assert corpus(tmp_path).read_bytes() == GOOD
    assert sorted(p.name for p in corpus(tmp_path).parent.iterdir()) == ["input.txt"]
    validate(cfg)
    assert requests == ["input.txt"]  # once


def test_a_corrupted_download_is_refused_and_leaves_nothing(tmp_path, server):
    base, files, _ = server
    files["input.txt"] = GOOD.replace(b"speak", b"spake")
    bad = hashlib.sha256(files["input.txt"]).hexdigest()
    with pytest.raises(ValueError, match=rf"has sha256 {bad}, expected {SHA256}: refused"):
        validate(compose_cfg(overrides(tmp_path, f"{base}/input.txt")))
    assert list(corpus(tmp_path).parent.iterdir()) == []


@pytest.mark.parametrize("where", ["no server", "not found"])
def test_offline_fails_before_training_naming_dataset_path(tmp_path, server, where):
    base, _, _ = server
    url = f"http://127.0.0.1:{closed_port()}/input.txt" if where == "no server" else f"{base}/gone"
    with pytest.raises(ValueError, match=r"dataset\.path=\S+input\.txt does not exist and downloading it from .* failed .*Put the file at"):  # fmt: skip
        validate(compose_cfg(overrides(tmp_path, url)))
    assert list(corpus(tmp_path).parent.iterdir()) == []


def test_download_false_never_downloads(tmp_path, server):
    base, files, requests = server
    files["input.txt"] = GOOD
    with pytest.raises(ValueError, match=r"dataset\.path=\S+ does not exist \(dataset\.download is false\)"):  # fmt: skip
        validate(compose_cfg(overrides(tmp_path, f"{base}/input.txt", "dataset.download=false")))
    assert requests == []
