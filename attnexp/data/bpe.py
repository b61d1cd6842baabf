"""Text to subword token files: ``prepare_text`` cuts a UTF-8 text into splits, trains a
byte-level BPE on the training split only (``attnexp.data.tokenizer``; or loads a
``tokenizer.json`` a user brings) and writes the token files of ``attnexp.data.tokens`` with the
tokenizer and a manifest beside them. The same command gives byte-identical files
(tests/test_token_files.py runs it twice, in two processes).

``load_bpe_text`` is ``dataset=shakespeare_bpe``'s source: the text's splits cut as
``attnexp.data.text`` cuts them (by characters: the same held-out text as the character-level
runs), a BPE trained on the training split, and the token files cached in ``data_dir`` under a key
of the text's hash and the settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from attnexp.data.text import SPLITS, check_text_file, split_text, text_cache
from attnexp.data.tokenizer import TOKENIZER_FILE, Tokenizer
from attnexp.data.tokens import MANIFEST_FILE, NANOGPT_DTYPE, load_token_files, write_nanogpt

PREPARE_FORMAT = 1  # bump when what prepare_text writes changes: cached copies are then rebuilt


# --------------------------------------------------------------------------- text -> token files


def read_texts(source: str, text_column: str = "text", split: str = "train") -> Iterator[str]:
    """UTF-8 texts from a file, a folder of files (every file under it, in path order), or a
    Hugging Face ``datasets`` dataset (a ``save_to_disk`` folder, or a hub id from the local
    cache) with a ``text_column``."""
    path = Path(source)
    if path.is_file():
        check_text_file(path)
        yield path.read_text(encoding="utf-8")
    elif path.is_dir() and not (path / "dataset_info.json").is_file() and not (
        path / "dataset_dict.json"
    ).is_file():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        if not files:
            raise ValueError(f"--input {path} is a folder with no files")
        for f in files:
            yield f.read_text(encoding="utf-8")
    else:
        yield from _hf_texts(source, text_column, split)


def _hf_texts(source: str, text_column: str, split: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise ValueError(f"--input {source} is neither a file nor a folder, and Hugging Face datasets is not installed") from None  # fmt: skip
    if Path(source).is_dir():
        data = datasets.load_from_disk(source)
    else:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        data = datasets.load_dataset(source)
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise ValueError(f"--split {split} is not one of the dataset's: {', '.join(data)}")
        data = data[split]
    if text_column not in data.column_names:
        raise ValueError(f"--text-column {text_column} is not one of {', '.join(data.column_names)}")
    for row in data:
        yield row[text_column]


def prepare_text(
    text: str,
    out: str | os.PathLike,
    vocab_size: int | None = None,
    tokenizer: str | os.PathLike | None = None,
    train_fraction: float = 0.9,
    val_fraction: float = 0.05,
    source_sha256: str | None = None,
    progress: Callable[[str], None] | None = None,
    replace: bool = False,
) -> Path:
    """Cut ``text`` into train / val / test by characters (``attnexp.data.text.split_text``), train a
    BPE of ``vocab_size`` on the training part (or load ``tokenizer``), and write into the folder
    ``out``: ``train.bin``, ``val.bin``, ``test.bin`` (nanoGPT's format; ``uint16``, so at most
    65,536 tokens), ``tokenizer.json`` and ``manifest.json`` (the source's and tokenizer's hashes,
    each split's tokens and UTF-8 bytes). Written to a temporary folder, then renamed into place:
    an existing ``out`` is replaced when ``replace`` (the script's choice), and otherwise kept as
    another process prepared it (a cache two runs fill at once: a reader of the first never sees
    its files deleted). ``progress`` is told of each step."""
    if (vocab_size is None) == (tokenizer is None):
        raise ValueError("give exactly one of a BPE vocabulary size to train and a tokenizer.json")
    say = progress or (lambda message: None)
    parts = dict(zip(SPLITS, split_text(text, train_fraction, val_fraction), strict=True))
    if tokenizer is not None:
        tok = Tokenizer.load(tokenizer)
    else:
        say(f"training a byte-level BPE of {vocab_size} tokens on {len(parts['train']):,} characters")
        tok = Tokenizer.train([parts["train"]], vocab_size)
    if tok.size > np.iinfo(NANOGPT_DTYPE).max + 1:
        raise ValueError(f"the tokenizer has {tok.size} tokens; uint16 token files hold at most 65,536")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest: dict[str, Any] = {
            "format": "nanogpt", "prepare_format": PREPARE_FORMAT,
            "source_sha256": source_sha256 or hashlib.sha256(text.encode()).hexdigest(),
            "tokenizer_sha256": tok.sha256, "vocab_size": tok.size,
            "train_fraction": train_fraction, "val_fraction": val_fraction, "splits": {},
        }  # fmt: skip
        for split, part in parts.items():
            ids = _encode_long(tok, part)
            write_nanogpt(tmp / f"{split}.bin", ids)
            manifest["splits"][split] = {"tokens": len(ids), "bytes": len(part.encode("utf-8"))}
            say(f"{split}: {len(part):,} characters -> {len(ids):,} tokens")
        tok.save(tmp / TOKENIZER_FILE)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if replace and out.exists():
            shutil.rmtree(out)
        try:
            tmp.rename(out)
        except OSError:  # another process prepared the same folder first: theirs is the same
            if not (out / MANIFEST_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


ENCODE_CHARS = 1 << 20  # text encoded this many characters at a time, cut at a line break


def _encode_long(tok: Tokenizer, text: str) -> np.ndarray:
    """``text``'s ids, encoded a megabyte of characters at a time, each piece ending after a
    newline (the byte-level pre-tokenizer never merges across one), so the ids are those of the
    whole text at a bounded memory cost."""
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + ENCODE_CHARS)
        if end < len(text):
            cut = text.rfind("\n", start, end)
            end = cut + 1 if cut >= start else end
        pieces.append(tok.encode(text[start:end]))
        start = end
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int64)


def load_bpe_text(
    path: str,
    data_dir: str,
    vocab_size: int = 2048,
    train_fraction: float = 0.9,
    val_fraction: float = 0.05,
    download: bool = False,
    url: str | None = None,
    sha256: str | None = None,
) -> Any:
    """The text at ``path`` (``dataset.path``) as BPE token files, prepared once and cached."""
    source = Path(path)
    cache, digest = text_cache(source, data_dir, "bpe", download, url, sha256,
                               [PREPARE_FORMAT, vocab_size, train_fraction, val_fraction])  # fmt: skip
    if not (cache / TOKENIZER_FILE).is_file():
        text = source.read_text(encoding="utf-8")
        prepare_text(text, cache, vocab_size, None, train_fraction, val_fraction, digest)
    return load_token_files(str(cache), "nanogpt", test="test.bin")
