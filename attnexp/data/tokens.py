"""Token files the field shares, read memory-mapped (never copied whole into memory):

- ``nanogpt``: nanoGPT's ``train.bin`` / ``val.bin``, flat little-endian ``uint16`` token ids
  (its ``prepare.py``: ``np.array(ids, dtype=np.uint16).tofile(path)``); nothing in the file says
  the vocabulary size, so ``dataset.shape.vocab_size`` does.
- ``llmc``: llm.c's and modded-nanogpt's shards: a header of 256 little-endian ``int32`` (the
  magic 20240520, the version: 1 for ``uint16`` token ids (GPT-2), 2 for ``uint32`` (LLaMA 3), and
  the token count), then the tokens. A split is every shard its glob matches, in name order.

Both hold a training and a validation split only: unless ``dataset.source.test`` names test files
(``scripts/prepare_text.py`` writes a ``test.bin``), the validation split also serves as the test
split (``TokenSplits.test_split`` is ``"val"``; the run records it as ``test_split``).

A file whose header lies, a truncated file, a token id at or above ``dataset.shape.vocab_size`` and
a split too short for one window are refused before training, naming the file and the key.

>>> import tempfile, os
>>> d = tempfile.mkdtemp(); write_shard(os.path.join(d, "a.bin"), [1, 2, 3])
>>> read_shard(os.path.join(d, "a.bin")).tolist()
[1, 2, 3]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnexp.data.text import SPLITS, check_windows
from attnexp.data.tokenizer import TOKENIZER_FILE, Tokenizer

MAGIC = 20240520  # llm.c's data files (dev/data/data_common.py)
HEADER_INTS = 256
TOKEN_DTYPES = {1: np.dtype("<u2"), 2: np.dtype("<u4")}  # llm.c's header version -> token type
NANOGPT_DTYPE = np.dtype("<u2")
FORMATS = ("nanogpt", "llmc")
DEFAULT_FILES = {  # format -> (train glob, val glob) inside dataset.path
    "nanogpt": ("train.bin", "val.bin"),
    "llmc": ("*train*.bin", "*val*.bin"),
}
MANIFEST_FILE = "manifest.json"  # written by attnexp.data.bpe.prepare_text beside the files
SCAN_TOKENS = 1 << 24  # ids checked against the vocabulary this many at a time


# --------------------------------------------------------------------------- the two formats


def read_nanogpt(path: str | os.PathLike) -> np.ndarray:
    """nanoGPT's flat ``uint16`` file, memory-mapped."""
    path = Path(path)
    size = path.stat().st_size
    if size % NANOGPT_DTYPE.itemsize:
        raise ValueError(
            f"{path} holds {size} bytes, not a whole number of uint16 token ids: is it truncated, "
            "or not in dataset.source.format=nanogpt?"
        )
    if size == 0:
        return np.zeros(0, NANOGPT_DTYPE)
    return np.memmap(path, dtype=NANOGPT_DTYPE, mode="r")


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """An llm.c shard's tokens, memory-mapped, after checking its header against its size."""
    path = Path(path)
    size = path.stat().st_size
    header_bytes = HEADER_INTS * 4
    if size < header_bytes:
        raise ValueError(
            f"{path} holds {size} bytes, less than the 1024-byte header of "
            "dataset.source.format=llmc: is it truncated, or in another format?"
        )
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version, count = (int(v) for v in header[:3])
    if magic != MAGIC:
        raise ValueError(
            f"{path} starts with {magic}, not llm.c's magic number {MAGIC}: it is not a shard "
            "of dataset.source.format=llmc (a flat nanoGPT file is format=nanogpt)"
        )
    if version not in TOKEN_DTYPES:
        raise ValueError(
            f"{path} has header version {version}; dataset.source.format=llmc reads versions "
            f"{', '.join(map(str, TOKEN_DTYPES))} (uint16, uint32 token ids)"
        )
    dtype = TOKEN_DTYPES[version]
    held = (size - header_bytes) / dtype.itemsize
    if count < 0 or held != count:
        raise ValueError(
            f"{path}: its header says {count} tokens but the file holds {held:g} after the "
            "header: it is truncated or its header lies"
        )
    if count == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=header_bytes, shape=(count,))


def write_nanogpt(path: str | os.PathLike, tokens: Sequence[int] | np.ndarray) -> None:
    """``tokens`` as nanoGPT's ``prepare.py`` writes them."""
    ids = np.asarray(tokens)
    _check_fits(ids, NANOGPT_DTYPE, path)
    ids.astype(NANOGPT_DTYPE).tofile(path)


def write_shard(path: str | os.PathLike, tokens: Sequence[int] | np.ndarray, version: int = 1) -> None:
    """``tokens`` as llm.c's ``write_datafile`` writes them (header, then the ids)."""
    dtype = TOKEN_DTYPES[version]
    ids = np.asarray(tokens)
    _check_fits(ids, dtype, path)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = MAGIC, version, len(ids)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(ids.astype(dtype).tobytes())


def _check_fits(ids: np.ndarray, dtype: np.dtype, path: Any) -> None:
    if len(ids) and (ids.min() < 0 or ids.max() > np.iinfo(dtype).max):
        raise ValueError(f"{path}: token ids must lie in [0, {np.iinfo(dtype).max}] for {dtype}")


READERS = {"nanogpt": read_nanogpt, "llmc": read_shard}


# --------------------------------------------------------------------------- the splits


@dataclass(frozen=True)
class TokenSplits:
    """Each split's token ids as one or more arrays (``pieces``: a window never spans two), the
    vocabulary that decodes them (None: unknown), and which split is the test split's data.
    ``files`` names each piece's file (messages); ``provenance`` is what a run records of where
    its data came from (the manifest's hashes)."""

    pieces: Mapping[str, tuple[np.ndarray, ...]]
    vocab: Any = None
    test_split: str = "test"
    files: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def check(self, vocab_size: int, context_len: int, batch_size: int, steps_per_epoch: int):
        """Refuse what the config cannot train on, naming the file and the key."""
        for split in SPLITS:
            for piece, name in zip(self.pieces[split], self.files[split], strict=True):
                top = largest_id(piece, name)
                if top >= vocab_size:
                    raise ValueError(
                        f"{name} holds token id {top}, not below dataset.shape.vocab_size="
                        f"{vocab_size}: set it to at least {top + 1}"
                    )
        size = getattr(self.vocab, "size", None)
        if size is not None and size > vocab_size:
            raise ValueError(
                f"dataset.shape.vocab_size={vocab_size} is smaller than the tokenizer's "
                f"{size} tokens: set it to at least {size}"
            )
        starts = sum(max(0, len(p) - context_len) for p in self.pieces["train"])
        if starts < 1:
            longest = max(len(p) for p in self.pieces["train"])
            raise ValueError(
                f"dataset.context_len={context_len} does not fit the training files "
                f"({', '.join(self.files['train'])}; the longest holds {longest} tokens, a window "
                f"needs context_len + 1): use at most {longest - 1}"
            )
        check_windows(starts, context_len, batch_size, steps_per_epoch)
        for split in ("val", "test"):
            if sum(len(p) for p in self.pieces[split]) < 2:
                raise ValueError(
                    f"the {split} files ({', '.join(self.files[split])}) hold fewer than 2 "
                    "tokens: too few to score one"
                )


_LARGEST: dict[tuple[str, int, float], int] = {}  # (file, size, mtime) -> its largest id


def largest_id(tokens: np.ndarray, name: str) -> int:
    """The largest token id of ``tokens`` (-1 when empty), read a chunk at a time; remembered per
    file, size and modification time within a process (the check before training and the data
    module both ask)."""
    stat = os.stat(name)
    key = (name, stat.st_size, stat.st_mtime)
    if key not in _LARGEST:
        _LARGEST[key] = max((int(chunk.max()) for chunk in _chunks(tokens)), default=-1)
    return _LARGEST[key]


def _chunks(tokens: np.ndarray):
    for start in range(0, len(tokens), SCAN_TOKENS):
        yield tokens[start : start + SCAN_TOKENS]


def split_files(directory: Path, pattern: str, key: str) -> list[Path]:
    """The files of one split: ``pattern`` (a glob) inside ``directory``, in name order."""
    found = sorted(p for p in directory.glob(pattern) if p.is_file())
    if not found:
        raise ValueError(f"{key}={pattern!r} matches no file in dataset.path={directory}")
    return found


def load_token_files(
    path: str,
    format: str = "nanogpt",
    train: str | None = None,
    val: str | None = None,
    test: str | None = None,
    tokenizer: str | None = None,
    download: bool = False,
) -> TokenSplits:
    """The token files in the folder ``path`` (``dataset.path``) as splits: ``train``, ``val`` and
    ``test`` are globs inside it (null: the format's defaults; ``test`` null: the validation files
    serve as the test split too). ``tokenizer`` (a ``tokenizer.json``; default: the one
    ``scripts/prepare_text.py`` wrote beside the files, if any) decodes them for samples and gives
    the bytes per token (bits per byte)."""
    if format not in FORMATS:
        raise ValueError(f"dataset.source.format must be one of {', '.join(FORMATS)}, got {format!r}")
    if download:
        raise ValueError("dataset.download: token files are never downloaded; set it to false")
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"dataset.path={directory} is not a folder of token files")
    patterns = dict(zip(("train", "val"), DEFAULT_FILES[format], strict=True))
    patterns.update({k: v for k, v in (("train", train), ("val", val)) if v is not None})
    if test is not None:
        patterns["test"] = test
    files = {s: split_files(directory, p, f"dataset.source.{s}") for s, p in patterns.items()}
    test_split = "test" if test is not None else "val"
    files["test"] = files[test_split]
    pieces = {s: tuple(READERS[format](f) for f in paths) for s, paths in files.items()}
    names = {s: tuple(str(f) for f in paths) for s, paths in files.items()}
    manifest = _manifest(directory)
    vocab = _tokenizer(directory, tokenizer)
    provenance = {k: manifest[k] for k in ("source_sha256", "tokenizer_sha256") if k in manifest}
    if vocab is not None:
        provenance["tokenizer_sha256"] = vocab.sha256
    return TokenSplits(pieces, vocab, test_split, names, provenance)


def _manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): rewrite it with scripts/prepare_text.py") from e


def _tokenizer(directory: Path, given: str | None) -> Any:
    path = Path(given) if given is not None else directory / TOKENIZER_FILE
    if given is not None and not path.is_file():
        raise ValueError(f"dataset.source.tokenizer={path} does not exist")
    return Tokenizer.load(path) if path.is_file() else None

