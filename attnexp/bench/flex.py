"""Whether PyTorch's FlexAttention (``score_mod``, block masks) serves the forget gate here: it
computes ``s + c_i - c_j`` as a ``score_mod`` under a causal block mask, compiled, against the
fused path with the bias feature (``attnexp.attention.design``), forward only and side by side;
and whether it can train on this device (its backward).

``python -m attnexp.bench.flex`` prints the table. On CPU it compiles (``torch.compile``, about
20 s the first time).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

HEADS, HEAD_DIM = 2, 16


def backward_supported(device: str = "cpu") -> bool:
    """Whether FlexAttention's backward runs on ``device`` (tried eagerly at N = 16)."""
    from torch.nn.attention.flex_attention import flex_attention

    q = torch.randn(1, 1, 16, 8, device=device, requires_grad=True)
    try:
        flex_attention(q, q, q).sum().backward()
    except NotImplementedError:
        return False
    return True


def speed(lengths: Sequence[int] = (1024, 4096), repeats: int = 3) -> list[dict[str, Any]]:
    """Forward seconds of the compiled FlexAttention and of the fused path, interleaved, the
    median of ``repeats``, and the largest difference between their outputs."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from attnexp.attention.design import attend
    from attnexp.bench.position_bias import inputs

    flex = torch.compile(flex_attention)
    rows = []
    for n in lengths:
        q, k, v, forget = inputs(n)

        def score_mod(score, b, h, i, j, c=forget):
            return score + c[b, h, i] - c[b, h, j]

        mask = create_block_mask(lambda b, h, i, j: i >= j, 1, HEADS, n, n, device="cpu")
        forms = {
            "flex": lambda q=q, k=k, v=v, s=score_mod, m=mask: flex(q, k, v, score_mod=s, block_mask=m),
            "fused": lambda q=q, k=k, v=v, c=forget: attend(q, k, v, is_causal=True, forget=c)[0],
        }  # fmt: skip
        outputs = {name: run() for name, run in forms.items()}  # also the compile
        times: dict[str, list[float]] = {name: [] for name in forms}
        for _ in range(repeats):
            for name, run in forms.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        rows.append({"n": n, **{name: statistics.median(t) for name, t in times.items()},
                     "max_difference": float((outputs["flex"] - outputs["fused"]).abs().max())})  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    from attnexp.util.markdown import md_table

    parser = argparse.ArgumentParser(prog="python -m attnexp.bench.flex")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    args = parser.parse_args(argv)
    print(f"FlexAttention backward on CPU: {'yes' if backward_supported() else 'no'}")
    with torch.no_grad():
        rows = speed(args.lengths)
    print(md_table(["N", "flex (s)", "fused (s)", "flex / fused", "max |flex - fused|"],
                   [[f"{r['n']:,}", f"{r['flex']:.4f}", f"{r['fused']:.4f}",
                     f"{r['flex'] / r['fused']:.2f}", f"{r['max_difference']:.1e}"] for r in rows]))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
