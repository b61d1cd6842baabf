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


def model_at(context_len: int) -> torch.nn.Module:
    """The CPU experiment's transformer (mha, learned positions) for ``context_len`` tokens."""
    from attnexp.bench.model_step import lm_config
    from attnexp.models import build_model

    torch.manual_seed(0)
    return build_model(lm_config("mha", "transformer", context_len)).eval()


def tokens_per_second(
    contexts: Sequence[int] = (256, 1024), repeats: int = 3
) -> list[dict[str, Any]]:
    """For each context length: new tokens per second cached and recomputed (medians of
    ``repeats``, interleaved), their ratio, and whether both generated the same tokens."""
    from attnexp.training.generate import generate

    rows = []
    for context in contexts:
        model, prompt = model_at(context), torch.zeros(1, 1, dtype=torch.long)
        times: dict[bool, list[float]] = {True: [], False: []}
        outs = {}
        for _ in range(repeats):
            for cache in (True, False):
                start = time.perf_counter()
                outs[cache] = generate(model, prompt, context, context, temperature=0, cache=cache)
                times[cache].append(time.perf_counter() - start)
        cached, recomputed = (context / statistics.median(times[c]) for c in (True, False))
        rows.append({"context": context, "cached": cached, "recomputed": recomputed,
                     "ratio": cached / recomputed, "same": bool(torch.equal(outs[True], outs[False]))})  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", default="256,1024")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = tokens_per_second([int(c) for c in args.contexts.split(",")], args.repeats)
    threads = os.environ.get("OMP_NUM_THREADS", f"unset ({torch.get_num_threads()} threads)")
    print(f"OMP_NUM_THREADS={threads}, torch {torch.__version__}")
    print("| context | cached tokens/s | recomputed tokens/s | ratio | same tokens |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['context']} | {r['cached']:.1f} | {r['recomputed']:.1f} | {r['ratio']:.1f}x | {r['same']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
