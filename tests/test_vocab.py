"""Text <-> ids: character and byte vocabularies round-trip, and refuse what they cannot encode."""

import doctest

import pytest

from attnexp.data import vocab as vocab_module
from attnexp.data.vocab import Vocabulary


def test_the_module_example_holds():
    assert doctest.testmod(vocab_module).failed == 0


def test_a_character_vocabulary_is_the_sorted_distinct_characters_and_round_trips():
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    v = Vocabulary.from_text(text)
    assert v.symbols == "".join(sorted(set(text))) and v.size == len(set(text))
    ids = v.encode(text)
    assert ids.dtype.name == "int64" and ids.min() == 0 and ids.max() == v.size - 1
    assert v.decode(ids) == text


def test_bytes_encode_any_text_as_utf8():
    v = Vocabulary.bytes()
    text = "naïve ☃"
    assert v.size == 256
    assert v.encode(text).tolist() == list(text.encode("utf-8"))
    assert v.decode(v.encode(text)) == text


def test_unknown_characters_and_kinds_are_refused_by_name():
    with pytest.raises(ValueError, match=r"characters 'xz' are not in the vocabulary"):
        Vocabulary.from_text("abc").encode("axz")
    with pytest.raises(ValueError, match="dataset.source.vocab must be one of char, bytes"):
        Vocabulary("words")
