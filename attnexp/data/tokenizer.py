"""A trained tokenizer as attnexp uses one: a byte-level BPE learnt with Hugging Face
``tokenizers`` (offline, single-threaded, so the merges never depend on thread timing: its issue
1794), or a ``tokenizer.json`` a user brings. ``attnexp.data.bpe`` prepares token files with it;
``attnexp.data.tokens`` loads the one beside them."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

TOKENIZER_FILE = "tokenizer.json"
MIN_VOCAB = 257  # the 256 bytes and one merge


def _library() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise ValueError(
            "BPE tokens need Hugging Face tokenizers: pip install -e '.[hf]' (make install does)"
        ) from None
    return tokenizers


class Tokenizer:
    """A ``tokenizers.Tokenizer`` with what attnexp asks of a vocabulary: ``size``, ``encode`` (to
    int64 ids), ``decode``, ``byte_lengths`` (the UTF-8 bytes each id stands for; None when the
    tokenizer is not byte-level, so bytes per token are unknown) and ``sha256`` (of its JSON)."""

    kind = "bpe"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.json = tokenizer.to_str()
        self.sha256 = hashlib.sha256(self.json.encode()).hexdigest()

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        try:
            return cls(_library().Tokenizer.from_file(str(path)))
        except Exception as e:  # the library's own error for a broken file
            if isinstance(e, ValueError) and "tokenizers" in str(e) and "pip" in str(e):
                raise
            raise ValueError(f"{path} is not a tokenizers JSON file: {e}") from e

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> Tokenizer:
        """A byte-level BPE of ``vocab_size`` tokens (the 256 bytes, then merges) learnt from
        ``texts``, single-threaded so that the merges never depend on thread timing."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
            raise ValueError(f"the BPE vocabulary size must be an integer >= {MIN_VOCAB}, got {vocab_size!r}")
        lib = _library()
        tokenizer = lib.Tokenizer(lib.models.BPE())
        tokenizer.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = lib.decoders.ByteLevel()
        trainer = lib.trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=lib.pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        before = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            tokenizer.train_from_iterator(texts, trainer)
        finally:
            if before is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = before
        return cls(tokenizer)

    @property
    def size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    @property
    def byte_lengths(self) -> np.ndarray | None:
        """Bytes per id for a byte-level tokenizer (each character of a token's string stands for
        one byte); None for any other, whose tokens' bytes the vocabulary does not say."""
        config = json.loads(self.json)
        if (config.get("decoder") or {}).get("type") != "ByteLevel":
            return None
        lengths = np.zeros(self.size, dtype=np.int64)
        added = {t["id"] for t in config.get("added_tokens") or []}
        for token, i in self.tokenizer.get_vocab().items():
            lengths[i] = 0 if i in added else len(token)
        return lengths

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.json)
