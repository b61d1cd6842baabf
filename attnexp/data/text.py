"""A UTF-8 text file as a token stream, split as nanoGPT's shakespeare_char: the first
``train_fraction`` of the characters train, the next ``val_fraction`` validate, the rest test
(0.9 / 0.05 / 0.05: nanoGPT's held-out 10% halved).

The vocabulary (``char``: the sorted distinct characters of the training split; ``bytes``: the
256 UTF-8 byte values) and the encoded splits are cached once in ``data_dir`` as ``.npy`` files and
a ``vocab.json`` (no pickle), under a key of the file's sha256, the vocabulary kind and the split
fractions. A missing file is downloaded when ``download`` is set and a ``url`` is known.
Lightning-free, so ``validate`` can check a config against the real split sizes in a second.

>>> split_text("abcdefghijklmnopqrst", train_fraction=0.5, val_fraction=0.25)
('abcdefghij', 'klmno', 'pqrst')
"""

from __future__ import annotations

import codecs
import hashlib
import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnexp.data.download import fetch, sha256_of
from attnexp.data.vocab import KINDS, Vocabulary
from attnexp.util.checks import check_positive

SPLITS = ("train", "val", "test")
CACHE_FORMAT = 1  # bump when the cached layout changes: old caches are then ignored


@dataclass(frozen=True)
class TextSplits:
    """The encoded ``train``, ``val`` and ``test`` token ids (int64) and their vocabulary."""

    vocab: Vocabulary
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    test_split = "test"  # the split whose data the final test scores (token files: "val")

    @property
    def provenance(self) -> dict[str, Any]:
        """What a run records of its data beyond its config: nothing (the config names the text)."""
        return {}

    @property
    def pieces(self) -> dict[str, tuple[np.ndarray]]:
        """Each split as one piece (``attnexp.data.tokens.TokenSplits`` may have several)."""
        return {s: (getattr(self, s),) for s in SPLITS}

    def check(self, vocab_size: int, context_len: int, batch_size: int, steps_per_epoch: int):
        """Refuse a config the data cannot serve, naming the key (see ``check_stream``)."""
        check_stream(
            {s: len(getattr(self, s)) for s in SPLITS}, self.vocab.size, vocab_size,
            context_len, batch_size, steps_per_epoch,
        )  # fmt: skip


def check_stream(
    lengths: Mapping[str, int], data_vocab_size: int, vocab_size: int, context_len: int,
    batch_size: int, steps_per_epoch: int,
) -> None:  # fmt: skip
    """A training window is ``context_len + 1`` tokens (inputs and their next tokens); an
    evaluation split scores ``len - 1`` tokens, so it needs two."""
    if vocab_size != data_vocab_size:
        raise ValueError(
            f"dataset.shape.vocab_size={vocab_size}, but the data's vocabulary has "
            f"{data_vocab_size} symbols: set dataset.shape.vocab_size={data_vocab_size}"
        )
    check_positive("dataset.context_len", context_len)
    if lengths["train"] - context_len < 1:
        raise ValueError(
            f"dataset.context_len={context_len} does not fit the training split "
            f"({lengths['train']} tokens; a window needs context_len + 1): use at most "
            f"{lengths['train'] - 1}"
        )
    check_windows(lengths["train"] - context_len, context_len, batch_size, steps_per_epoch)
    for split in ("val", "test"):
        if lengths[split] < 2:
            raise ValueError(
                f"the {split} split has {lengths[split]} tokens, too few to score one: raise "
                "dataset.source.val_fraction / lower dataset.source.train_fraction, or use a "
                "longer text"
            )


def check_windows(starts: int, context_len: int, batch_size: int, steps_per_epoch: int) -> None:
    """Refuse a batch larger than the ``starts`` distinct training windows, and sizes that are
    not positive, naming the key."""
    for key, value in (
        ("dataset.context_len", context_len),
        ("dataset.batch_size", batch_size),
        ("dataset.steps_per_epoch", steps_per_epoch),
    ):
        check_positive(key, value)
    if batch_size > starts:
        raise ValueError(
            f"dataset.batch_size={batch_size} is larger than the {starts} distinct windows of "
            f"the training split (context_len={context_len}): use at most {starts}"
        )


def check_eval_stride(stride: int | None, context_len: int) -> None:
    """``dataset.eval_stride``: null, or 1 .. ``context_len``."""
    if stride is None:
        return
    check_positive("dataset.eval_stride", stride)
    if stride > context_len:
        raise ValueError(
            f"dataset.eval_stride={stride} is larger than dataset.context_len={context_len}: "
            "tokens between windows would go unscored; use at most the context length (or null)"
        )


def split_text(text: str, train_fraction: float, val_fraction: float) -> tuple[str, str, str]:
    """nanoGPT's cut: ``int(n * train_fraction)``, then ``int(n * (train + val fraction))``."""
    if not (0 < train_fraction < 1 and 0 < val_fraction and train_fraction + val_fraction < 1):
        raise ValueError(
            "dataset.source.train_fraction and val_fraction must be positive with a sum below 1 "
            f"(the rest is the test split), got {train_fraction} and {val_fraction}"
        )
    n = len(text)
    a, b = int(n * train_fraction), int(n * (train_fraction + val_fraction))
    return text[:a], text[a:b], text[b:]


SNIFF_BYTES = 1 << 20  # how much of a text file the check before training decodes


def check_text_file(path: Path, download: bool = False, url: str | None = None) -> bool:
    """Refuse, naming ``dataset.path``, what cannot be a text to model: a directory, a missing file
    (unless ``download`` from ``url``: then True), a file that does not start as UTF-8 text (a binary),
    or one with fewer than two distinct characters (an empty file). Reads at most a megabyte."""
    if path.is_dir():
        raise ValueError(f"dataset.path={path} is a directory: set it to a UTF-8 text file")
    if not path.is_file():
        if download and url:
            return True
        why = "dataset.download is false" if url else "no download URL is known for it"
        raise ValueError(
            f"dataset.path={path} does not exist ({why}): put a UTF-8 text file there or set "
            "dataset.path to one"
        )
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < SNIFF_BYTES)
    except UnicodeDecodeError as e:
        raise ValueError(f"dataset.path={path} is not UTF-8 text (byte {e.start}): is it a binary?") from None  # fmt: skip
    if "\x00" in text:
        raise ValueError(f"dataset.path={path} holds NUL bytes: it is a binary, not a text")
    if len(set(text)) < 2:
        raise ValueError(
            f"dataset.path={path} holds {len(head)} bytes and {len(set(text))} distinct "
            "characters: a language model needs a text with at least two"
        )
    return False


def text_cache(
    path: Path, data_dir: str, kind: str, download: bool, url: str | None, sha256: str | None,
    settings: list[Any],
) -> tuple[Path, str]:  # fmt: skip
    """The cache folder in ``data_dir`` of what is made of the text at ``path`` with ``settings``
    (a ``kind`` of encoding), keyed by the text's sha256, and that sha256. The text is checked
    first (``check_text_file``), and downloaded from ``url`` when missing and ``download``."""
    if check_text_file(path, download, url):
        fetch(url, path, sha256)
    digest = sha256_of(path)
    key = hashlib.sha256(json.dumps([digest, *settings]).encode()).hexdigest()[:12]
    return Path(data_dir) / f"{kind}-{path.stem}-{key}", digest


def load_text(
    path: str,
    data_dir: str,
    vocab: str = "char",
    train_fraction: float = 0.9,
    val_fraction: float = 0.05,
    download: bool = False,
    url: str | None = None,
    sha256: str | None = None,
) -> TextSplits:
    """The encoded splits of the text at ``path`` (``dataset.path``), from the cache when there."""
    if vocab not in KINDS:  # refused before any work (a download, hashing the file)
        raise ValueError(f"dataset.source.vocab must be one of {', '.join(KINDS)}, got {vocab!r}")
    path = Path(path)
    cache, _ = text_cache(path, data_dir, "text", download, url, sha256,
                          [CACHE_FORMAT, vocab, train_fraction, val_fraction])  # fmt: skip
    if not (cache / "vocab.json").is_file():
        _write_cache(cache, _encode(path, vocab, train_fraction, val_fraction))
    return _read_cache(cache)


def load_bytes(
    path: str,
    train_bytes: int = 90_000_000,
    val_bytes: int = 5_000_000,
    test_bytes: int = 5_000_000,
    download: bool = False,
) -> TextSplits:
    """A raw byte file as a token stream (enwik8: ids are byte values, never decoded), split by
    byte counts: the first ``train_bytes`` train, the next ``val_bytes`` validate, the next
    ``test_bytes`` test (enwik8's standard 90M / 5M / 5M). Memory-mapped; bits per byte are
    reported as bits per character, as the field does for enwik8."""
    if download:
        raise ValueError("dataset.download: a raw byte file is read from dataset.path, never downloaded")
    for key, value in (("train_bytes", train_bytes), ("val_bytes", val_bytes), ("test_bytes", test_bytes)):
        check_positive(f"dataset.source.{key}", value)
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"dataset.path={file} is not a file: put the raw byte file (e.g. enwik8, unzipped) there")
    size, needed = file.stat().st_size, train_bytes + val_bytes + test_bytes
    if size < needed:
        raise ValueError(
            f"dataset.path={file} holds {size:,} bytes, fewer than dataset.source.train_bytes + "
            f"val_bytes + test_bytes = {needed:,}"
        )
    data = np.memmap(file, dtype=np.uint8, mode="r")
    cuts = np.cumsum([0, train_bytes, val_bytes, test_bytes])
    parts = {s: data[cuts[i] : cuts[i + 1]] for i, s in enumerate(SPLITS)}
    return TextSplits(Vocabulary("bytes", bytes_as_characters=True), **parts)


def _encode(path: Path, vocab: str, train_fraction: float, val_fraction: float) -> TextSplits:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"dataset.path={path} is not UTF-8 text: {e}") from e
    parts = split_text(text, train_fraction, val_fraction)
    vocabulary = Vocabulary.from_text(parts[0]) if vocab == "char" else Vocabulary.bytes()
    encoded = {}
    for split, part in zip(SPLITS, parts, strict=True):
        try:
            encoded[split] = vocabulary.encode(part)
        except ValueError as e:
            raise ValueError(f"the {split} split of dataset.path={path}: {e}") from e
    return TextSplits(vocabulary, **encoded)


def _write_cache(cache: Path, splits: TextSplits) -> None:
    """Written to a temporary dir, then renamed: two runs caching at once never read half."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        for split in SPLITS:
            np.save(tmp / f"{split}.npy", getattr(splits, split))
        vocab = {"kind": splits.vocab.kind, "symbols": splits.vocab.symbols}
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        try:
            tmp.rename(cache)
        except OSError:  # another run cached it first: theirs is the same
            if not (cache / "vocab.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(cache: Path) -> TextSplits:
    try:
        vocab = Vocabulary(**json.loads((cache / "vocab.json").read_text()))
        arrays: dict[str, Any] = {s: np.load(cache / f"{s}.npy") for s in SPLITS}
    except Exception as e:
        raise ValueError(
            f"cached text dataset {cache} is unreadable ({type(e).__name__}: {e}); delete it and "
            "the next run rebuilds it"
        ) from e
    return TextSplits(vocab, **arrays)
