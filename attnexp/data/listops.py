"""ListOps (Nangia & Bowman 2018) as the Long Range Arena sets it (Tay et al. 2021,
``lra_benchmarks/data/listops.py`` and ``listops/input_pipeline.py``): nested lists of the
operators MIN, MAX, MED (the median, truncated to an integer) and SM (the sum mod 10) over the
digits 0-9; the label is the value of the whole expression, one of 10 classes.

LRA's generator draws a tree from the root (depth 1): below ``max_depth`` a node is an operator
with probability ``VALUE_P = 0.25`` (else a digit), at ``max_depth`` always a digit; an operator
takes 2 to ``max_args`` arguments. A tree is kept when ``min_length < length < max_length``
tokens, duplicates are dropped, and the set is split 96,000 / 2,000 / 2,000.

Tokens as LRA's input pipeline reads them: the parentheses of its text dropped, the closing
bracket ``]`` kept as a token of its own. Ids (``vocab_size = 16``):

====  =======================================
id    token
====  =======================================
0     padding (after a sample's end, as LRA)
1-10  the digits 0-9 (id = digit + 1)
11    ``[MIN``
12    ``[MAX``
13    ``[MED``
14    ``[SM``
15    ``]``
====  =======================================

Two sources: ``generate`` (seeded, cached in ``data_dir``) and ``read_tsv``, the LRA release's
``basic_{train,val,test}.tsv`` (columns ``Source`` and ``Target``) from ``dataset.path``.
"""

from __future__ import annotations

import csv
import logging
import random
import statistics
import time
from pathlib import Path

import numpy as np

from attnexp.data.cache import cached_arrays
from attnexp.data.splits import Splits
from attnexp.util.checks import check_int, check_positive

log = logging.getLogger(__name__)

PAD = 0
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
TOKENS = (*(str(d) for d in range(10)), *OPERATORS, END)
TOKEN_IDS = {token: i + 1 for i, token in enumerate(TOKENS)}  # 0 is the padding
VOCAB_SIZE = len(TOKENS) + 1
NUM_CLASSES = 10
VALUE_P = 0.25  # LRA's: the chance a node below max_depth is an operator (its name is LRA's)
DIGIT_IDS = [TOKEN_IDS[str(d)] for d in range(10)]
OPERATOR_IDS = [TOKEN_IDS[op] for op in OPERATORS]
END_ID = TOKEN_IDS[END]
MIN_ID, MAX_ID, MED_ID, SM_ID = OPERATOR_IDS
FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
CACHE_FORMAT = 1  # bump when the arrays' layout or the generator's draws change


def apply(operator_id: int, args: list[int]) -> int:
    """The value of one operator on its argument values, as LRA's ``to_value``."""
    if operator_id == MIN_ID:
        return min(args)
    if operator_id == MAX_ID:
        return max(args)
    if operator_id == MED_ID:
        return int(statistics.median(args))  # LRA: int(np.median): mean of the middle two, cut
    return sum(args) % 10


class _TooLong(Exception):
    """A tree that has passed the length limit: it would be rejected, so stop drawing it."""


def _tree(
    rng: random.Random, depth: int, max_depth: int, max_args: int, out: list[int], limit: int
) -> int:
    """Append one subtree's token ids to ``out`` and return its value. The same distribution as
    LRA's ``generate_tree`` (the operator is drawn before the arguments here, an order that does
    not change it); a tree stops being drawn once it is ``limit`` tokens long."""
    if depth >= max_depth or rng.random() > VALUE_P:
        value = rng.randrange(10)
        out.append(DIGIT_IDS[value])
        return value
    operator = OPERATOR_IDS[rng.randrange(4)]
    out.append(operator)
    args = [
        _tree(rng, depth + 1, max_depth, max_args, out, limit)
        for _ in range(rng.randint(2, max_args))
    ]
    out.append(END_ID)
    if len(out) >= limit:
        raise _TooLong
    return apply(operator, args)


def generate(
    num_samples: int,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    seed: int = 0,
) -> tuple[list[list[int]], list[int]]:
    """``num_samples`` distinct expressions of ``min_length < length < max_length`` tokens, as
    token-id lists, and their values. Logs its progress every ten seconds."""
    check_lengths(min_length, max_length, max_depth, max_args)
    rng = random.Random(seed)
    seen: set[bytes] = set()
    sequences, labels = [], []
    start = last = time.perf_counter()
    while len(sequences) < num_samples:
        out: list[int] = []
        try:
            value = _tree(rng, 1, max_depth, max_args, out, max_length)
        except _TooLong:
            continue
        key = bytes(out)
        if min_length < len(out) and key not in seen:
            seen.add(key)
            sequences.append(out)
            labels.append(value)
        if time.perf_counter() - last > 10:
            last = time.perf_counter()
            log.info(
                "listops: %d / %d expressions (%.0f s)", len(sequences), num_samples, last - start
            )
    return sequences, labels


def check_lengths(min_length: int, max_length: int, max_depth: int, max_args: int) -> None:
    for key, value, least in (
        ("min_length", min_length, 0), ("max_length", max_length, 2),
        ("max_depth", max_depth, 2), ("max_args", max_args, 2),
    ):  # fmt: skip
        check_int(f"dataset.{key}", value, least)
    if min_length + 1 >= max_length:
        raise ValueError(
            f"dataset.min_length must leave room below dataset.max_length (lengths are kept when "
            f"min_length < length < max_length), got {min_length} and {max_length}"
        )


def pad(sequences: list[list[int]], width: int) -> np.ndarray:
    """``(N, width)`` uint8 ids, each row padded with ``PAD`` after its end."""
    x = np.full((len(sequences), width), PAD, dtype=np.uint8)
    for row, ids in zip(x, sequences, strict=True):
        row[: len(ids)] = ids
    return x


def tokenize(source: str) -> list[int]:
    """One LRA ``Source`` string as ids: whitespace-separated, parentheses dropped."""
    ids = []
    for token in source.split():
        if token in "()":
            continue
        if token not in TOKEN_IDS:
            raise ValueError(f"unknown token {token!r} (ListOps has {' '.join(TOKENS)} and ( ))")
        ids.append(TOKEN_IDS[token])
    return ids


def load_listops(
    data_dir: str,
    path: str | None = None,
    num_train: int = 96_000,
    num_val: int = 2_000,
    num_test: int = 2_000,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    seed: int = 0,
) -> Splits:
    """``(x_train, y_train, x_val, y_val, x_test, y_test)``, each ``x`` padded to ``max_length``.

    ``path`` null: generated with LRA's parameters from ``seed`` and cached in ``data_dir``.
    ``path`` set: read from the LRA release's TSV files in that directory (the generator's
    arguments are then unused); a longer expression is cut to ``max_length`` tokens, as LRA's
    input pipeline does (none of the release's is).
    """
    if path is not None:
        return read_tsv(path, data_dir, max_length)
    counts = {"num_train": num_train, "num_val": num_val, "num_test": num_test}
    for key, value in counts.items():
        check_positive(f"dataset.{key}", value)
    check_lengths(min_length, max_length, max_depth, max_args)
    args = dict(min_length=min_length, max_length=max_length, max_depth=max_depth,
                max_args=max_args)  # fmt: skip

    def make() -> dict[str, np.ndarray]:
        sequences, labels = generate(num_train + num_val + num_test, **args, seed=seed)
        x, y = pad(sequences, max_length), np.asarray(labels, dtype=np.int64)
        ends = np.cumsum([num_train, num_val])
        names = ("train", "val", "test")
        return {
            **{f"x_{n}": part for n, part in zip(names, np.split(x, ends), strict=True)},
            **{f"y_{n}": part for n, part in zip(names, np.split(y, ends), strict=True)},
        }

    arrays = cached_arrays(data_dir, "listops", {**counts, **args, "seed": seed,
                                                 "format": CACHE_FORMAT}, make)  # fmt: skip
    return tuple(arrays[f"{xy}_{n}"] for n in ("train", "val", "test") for xy in "xy")


def read_tsv(path: str, data_dir: str, max_length: int) -> Splits:
    """The LRA release's three files in ``path``, encoded once and cached in ``data_dir`` (keyed
    by the files' sizes and modification times, so an edited file is read again)."""
    directory = Path(path).expanduser()
    files = {split: directory / name for split, name in FILES.items()}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise ValueError(
            f"dataset.path={path} must be a directory holding {', '.join(FILES.values())} (the "
            "LRA release's listops files: tab-separated, a header row Source<TAB>Target, then one "
            f"expression and its value 0-9 per line); missing: {', '.join(missing)}"
        )
    stamp = {s: [f.stat().st_size, f.stat().st_mtime_ns] for s, f in files.items()}
    key = {"path": str(directory.resolve()), "files": stamp, "max_length": max_length,
           "format": CACHE_FORMAT}  # fmt: skip

    def make() -> dict[str, np.ndarray]:
        arrays = {}
        for split, file in files.items():
            sequences, labels = _read_file(file, max_length)
            arrays[f"x_{split}"] = pad(sequences, max_length)
            arrays[f"y_{split}"] = np.asarray(labels, dtype=np.int64)
        return arrays

    arrays = cached_arrays(data_dir, "listops_tsv", key, make)
    return tuple(arrays[f"{xy}_{n}"] for n in FILES for xy in "xy")


def _read_file(file: Path, max_length: int) -> tuple[list[list[int]], list[int]]:
    def bad(line: int, why: str) -> ValueError:
        return ValueError(
            f"{file}, line {line}: {why} (dataset.path must hold the LRA release's listops files: "
            "tab-separated, a header row Source<TAB>Target, then an expression and its value 0-9)"
        )

    sequences, labels, cut = [], [], 0
    with open(file, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or "Source" not in header or "Target" not in header:
            raise bad(1, f"the header must name the columns Source and Target, got {header}")
        source, target = header.index("Source"), header.index("Target")
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise bad(line, f"{len(row)} fields, the header has {len(header)}")
            try:
                ids = tokenize(row[source])
            except ValueError as e:
                raise bad(line, str(e)) from None
            if not row[target].strip().isdigit() or int(row[target]) >= NUM_CLASSES:
                raise bad(line, f"Target must be a value 0-9, got {row[target]!r}")
            cut += len(ids) > max_length
            sequences.append(ids[:max_length])
            labels.append(int(row[target]))
    if not sequences:
        raise bad(2, "no expressions after the header")
    if cut:
        log.warning("listops: %d expressions of %s cut to %d tokens", cut, file, max_length)
    return sequences, labels
