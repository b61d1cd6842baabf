"""Tokens per second of generation with a KV cache against recomputation, side by side in one
process: the transformer of ``experiment=shakespeare_char_cpu`` (4 layers, width 128, 4 heads;
vocabulary 65), untrained, at context lengths 256 and 1024, batch 1, a one-token prompt and as many
new tokens as the context holds (so the last steps read a full context), greedy. Each pair is
interleaved and repeated; the median of the repeats is printed.

``python -m attnexp.bench.decoding`` prints the table (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch


def model_at(context_len: int, attention: str = "mha") -> torch.nn.Module:
    """The CPU experiment's transformer (learned positions) with ``attention`` for
    ``context_len`` tokens."""
    from attnexp.bench.model_step import lm_config
    from attnexp.models import build_model

    torch.manual_seed(0)
    return build_model(lm_config(attention, "transformer", context_len)).eval()


def tokens_per_second(
    contexts: Sequence[int] = (256, 1024), repeats: int = 3, attention: str = "mha",
    new_tokens: int | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """For each context length: new tokens per second cached and recomputed (medians of
    ``repeats``, interleaved), their ratio, and whether both generated the same tokens. The
    prompt fills the context but ``new_tokens`` (None: a one-token prompt and a whole context of
    new tokens), so the last steps read a full context. A rate is of the tokens after the first:
    ``(new - 1) / (T(new) - T(1))``, so the prompt's own pass (the same for both) stays out."""
    from attnexp.training.generate import generate

    rows = []
    for context in contexts:
        new = context if new_tokens is None else min(new_tokens, context)
        model = model_at(context, attention)
        prompt = torch.zeros(1, max(1, context - new), dtype=torch.long)
        times: dict[tuple[bool, int], list[float]] = {(c, k): [] for c in (True, False) for k in (1, new)}
        outs = {}
        for _ in range(repeats):
            for cache, count in times:
                start = time.perf_counter()
                outs[cache] = generate(model, prompt, count, context, temperature=0, cache=cache)
                times[cache, count].append(time.perf_counter() - start)
        cached, recomputed = (
            (new - 1) / (statistics.median(times[c, new]) - statistics.median(times[c, 1])) for c in (True, False)
        )
        rows.append({"attention": attention, "context": context, "new": new, "cached": cached,
                     "recomputed": recomputed, "ratio": cached / recomputed,
                     "same": bool(torch.equal(outs[True], outs[False]))})  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", default="256,1024")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--attention", default="mha", help="variants, comma-separated (each must decode)")
    parser.add_argument("--new-tokens", type=int, help="new tokens per generation (default: the context)")
    args = parser.parse_args(argv)
    contexts = [int(c) for c in args.contexts.split(",")]
    rows = [row for name in args.attention.split(",")
            for row in tokens_per_second(contexts, args.repeats, name, args.new_tokens)]  # fmt: skip
    threads = os.environ.get("OMP_NUM_THREADS", f"unset ({torch.get_num_threads()} threads)")
    print(f"OMP_NUM_THREADS={threads}, torch {torch.__version__}")
    print("| attention | context | new tokens | cached tokens/s | recomputed tokens/s | ratio | same tokens |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['attention']} | {r['context']} | {r['new']} | {r['cached']:.1f} | {r['recomputed']:.1f} "
              f"| {r['ratio']:.1f}x | {r['same']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
