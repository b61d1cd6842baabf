"""Text <-> token ids: a character vocabulary built from a training text, or raw bytes.

``Vocabulary.from_text(text)`` keeps the sorted distinct characters (nanoGPT's shakespeare_char
does the same: 65 symbols for tinyshakespeare); ``Vocabulary.bytes()`` is the 256 byte values of
UTF-8. Both encode to int64 NumPy arrays and decode back to ``str``.

>>> v = Vocabulary.from_text("hello")
>>> v.symbols, v.size, v.encode("hole").tolist(), v.decode([2, 1])
('ehlo', 4, [1, 3, 2, 0], 'lh')
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

KINDS = ("char", "bytes")


@dataclass(frozen=True)
class Vocabulary:
    """``kind`` ``char``: ids index ``symbols``; ``bytes``: ids are UTF-8 byte values.
    ``bytes_as_characters``: a raw byte stream whose field calls its bytes characters (enwik8's
    "bits per character" are bits per byte), so ``bpc`` is logged for it too."""

    kind: str
    symbols: str = ""  # the characters, in id order (char only)
    bytes_as_characters: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"dataset.source.vocab must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "char" and (not self.symbols or len(set(self.symbols)) != len(self.symbols)):
            raise ValueError("a character vocabulary needs distinct symbols")

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        return cls("char", "".join(sorted(set(text))))

    @classmethod
    def bytes(cls) -> Vocabulary:
        return cls("bytes")

    @property
    def size(self) -> int:
        return 256 if self.kind == "bytes" else len(self.symbols)

    @property
    def per_character(self) -> bool:
        """Whether a token is what the field counts as a character (``bpc`` is bits per token)."""
        return self.kind == "char" or self.bytes_as_characters

    @property
    def byte_lengths(self) -> np.ndarray:
        """The UTF-8 bytes each id stands for (bits per byte divide by their sum)."""
        if self.kind == "bytes":
            return np.ones(256, dtype=np.int64)
        return np.array([len(c.encode("utf-8")) for c in self.symbols], dtype=np.int64)

    def encode(self, text: str) -> np.ndarray:
        """int64 ids; a character outside a char vocabulary is a ValueError naming it."""
        if self.kind == "bytes":
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
        index = {c: i for i, c in enumerate(self.symbols)}
        unknown = sorted(set(text) - index.keys())
        if unknown:
            raise ValueError(
                f"characters {''.join(unknown)!r} are not in the vocabulary (built from the "
                "training split); use dataset.source.vocab=bytes to encode any text"
            )
        return np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self.kind == "bytes":
            return bytes(ids).decode("utf-8", errors="replace")
        return "".join(self.symbols[i] for i in ids)
