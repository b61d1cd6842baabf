"""Multi-query associative recall as Zoology defines it (Arora et al. 2023, ``multiquery_ar``).

Each sequence starts with ``num_kv_pairs`` key-value pairs (distinct keys from ``[1, V/2)``,
distinct values from ``[V/2, V)``); then every key comes back once as a query, at a gap drawn from
a power law that favours short gaps (``power_a = 0.01``); every other position is 0. Labels are the
next token of a language model, scored only where it is the value bound to the query key
(``IGNORE_INDEX`` = -100 elsewhere), so accuracy is over the queries alone.

Example: ``make_zoology_mqar(1, seq_len=16, num_kv_pairs=2, vocab_size=12, seed=...)`` can give::

             key  val  key  val            query                         query
    inputs:  2    8    4    7    0    0    4    0    0    0    0    0    2    0    0    0
    labels: -100 -100 -100 -100 -100 -100  7   -100 -100 -100 -100 -100  8   -100 -100 -100

The sequence is built ``seq_len + 1`` long with the value after each query, then shifted as for
any language model: inputs are the sequence without its last token, labels without its first. So
the model reads ``seq_len`` tokens (``dataset.shape.grid == [seq_len]``, Zoology's input length),
and the value itself never appears after a query in the inputs (the slot holds 0): the model must
predict it. Queries sit at even offsets after the pairs: gap ``g`` (0-based, ``P(g) ∝ (g +
1)^(power_a - 1)``, drawn without replacement per sequence) puts a query at ``2 num_kv_pairs + 2 g``.

Zoology samples with numpy's global generator row by row; this draws the same distributions
(uniform ordered tuples of distinct keys and values, power-law gaps without replacement) with a
local generator, vectorised over the rows: the same task, not the same bits.
"""

from __future__ import annotations

import numpy as np

from attnexp.data.cache import cached_arrays
from attnexp.data.shape import IGNORE_INDEX
from attnexp.data.splits import Splits
from attnexp.util.checks import check_positive

CACHE_FORMAT = 1  # bump when the generated arrays change: old cache files are then ignored
TRAIN, TEST = 0, 1  # each split's stream of the source seed: disjoint for every seed


def check_sizes(seq_len: int, num_kv_pairs: int, vocab_size: int) -> None:
    """Zoology's own constraints, refused with the key named."""
    if seq_len < 2 or seq_len % 2:
        raise ValueError(
            f"dataset.seq_len must be even and >= 2 (queries sit at even offsets), got {seq_len}"
        )
    if num_kv_pairs < 1 or 4 * num_kv_pairs > seq_len:
        raise ValueError(
            f"dataset.num_kv_pairs must be in [1, seq_len / 4] (each pair and its query take 2 "
            f"tokens and queries need as many free slots), got {num_kv_pairs} with "
            f"dataset.seq_len={seq_len}"
        )
    if num_kv_pairs > vocab_size // 2 - 1:
        raise ValueError(
            f"dataset.vocab_size={vocab_size} leaves {vocab_size // 2 - 1} keys in [1, "
            f"{vocab_size // 2}), fewer than dataset.num_kv_pairs={num_kv_pairs}"
        )


def power_law(space: int, power_a: float) -> np.ndarray:
    """Zoology's gap distribution over ``0 .. space-1``: ``P(g) ∝ (g + 1)^(power_a - 1)``."""
    p = np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    return p / p.sum()


def make_zoology_mqar(
    num_examples: int,
    seq_len: int,
    num_kv_pairs: int,
    vocab_size: int = 8192,
    power_a: float = 0.01,
    random_non_queries: bool = False,
    seed: int | np.random.SeedSequence = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, labels)``, both int64 ``(num_examples, seq_len)``; see the module docstring."""
    check_sizes(seq_len, num_kv_pairs, vocab_size)
    rng = np.random.default_rng(seed)
    n, k, context = num_examples, num_kv_pairs, 2 * num_kv_pairs
    half = vocab_size // 2
    keys = 1 + _distinct(rng, n, k, half - 1)
    values = half + _distinct(rng, n, k, vocab_size - half)
    # k gaps without replacement from the power law, in draw order (Gumbel top-k: the same law
    # as numpy's choice(p=..., replace=False)); the i-th key is asked at the i-th gap.
    space = (seq_len - context) // 2
    scores = np.log(power_law(space, power_a)) + rng.gumbel(size=(n, space))
    gaps = np.argsort(-scores, axis=1, kind="stable")[:, :k]

    rows = np.arange(n)[:, None]
    sequence = np.zeros((n, seq_len + 1), dtype=np.int64)
    sequence[:, 0:context:2], sequence[:, 1:context:2] = keys, values
    asked = context + 2 * gaps
    sequence[rows, asked] = keys
    targets = np.full((n, seq_len + 1), IGNORE_INDEX, dtype=np.int64)
    targets[rows, asked + 1] = values  # the token that should follow the query
    inputs, labels = sequence[:, :-1], targets[:, 1:]
    if random_non_queries:  # Zoology's option (off in its figure 2): noise instead of 0s
        filler = inputs == 0
        inputs[filler] = rng.integers(0, vocab_size, size=int(filler.sum()))
    return inputs, labels


def _distinct(rng: np.random.Generator, n: int, k: int, high: int) -> np.ndarray:
    """``(n, k)`` rows of distinct integers in ``[0, high)``, each row a uniform ordered draw.

    Floyd's algorithm (a uniform k-subset in O(k^2), not O(high)), vectorised over the rows,
    then a random order within each row.
    """
    chosen = np.empty((n, k), dtype=np.int64)
    for i, top in enumerate(range(high - k, high)):
        t = rng.integers(0, top + 1, size=n)
        taken = (chosen[:, :i] == t[:, None]).any(axis=1)
        chosen[:, i] = np.where(taken, top, t)
    order = np.argsort(rng.random((n, k)), axis=1)
    return np.take_along_axis(chosen, order, axis=1)


def load_zoology_mqar(
    data_dir: str,
    seq_len: int = 64,
    num_kv_pairs: int = 4,
    vocab_size: int = 8192,
    num_train: int = 100_000,
    num_test: int = 3_000,
    power_a: float = 0.01,
    random_non_queries: bool = False,
    seed: int = 0,
) -> Splits:
    """Train and test sets from disjoint streams of ``seed``, cached in ``data_dir`` under every
    argument (Zoology's 100,000 / 3,000 by default)."""
    for key, value in (("num_train", num_train), ("num_test", num_test)):
        check_positive(f"dataset.{key}", value)
    check_sizes(seq_len, num_kv_pairs, vocab_size)
    args = dict(seq_len=seq_len, num_kv_pairs=num_kv_pairs, vocab_size=vocab_size,
                power_a=power_a, random_non_queries=random_non_queries)  # fmt: skip

    def generate() -> dict[str, np.ndarray]:
        x, y = make_zoology_mqar(num_train, **args, seed=np.random.SeedSequence([seed, TRAIN]))
        x_test, y_test = make_zoology_mqar(
            num_test, **args, seed=np.random.SeedSequence([seed, TEST])
        )
        return {"x": x, "y": y, "x_test": x_test, "y_test": y_test}

    key = {
        **args,
        "num_train": num_train,
        "num_test": num_test,
        "seed": seed,
        "format": CACHE_FORMAT,
    }
    f = cached_arrays(data_dir, "zoology_mqar", key, generate)
    return f["x"], f["y"], f["x_test"], f["y_test"]
