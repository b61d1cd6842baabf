"""How exactly the fused kernel applies the forget gate's and causal ALiBi's position biases at long
N: the kernel path (one more feature per key, offsets relative to each block's first query,
``attnexp.attention.design``) in float32 and bf16 against the chunked path in float64, beside
the same kernel fed absolute offsets (``-c_j`` and ``m_h j`` as they are), the form whose
precision falls as ``c_j`` and ``j`` grow.

``python -m attnexp.bench.position_bias`` prints the table; ``scripts/benchmark.py
--position-bias`` records it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.nn import functional as F

HEADS, HEAD_DIM = 2, 16
LENGTHS = (1024, 16384)
# log f = logsigmoid(z), z ~ N(3, 1): f ~ 0.95, so c_N is about -0.05 N (-800 at N = 16k)
GATE_MEAN = 3.0


def inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """q, k, v ``(1, HEADS, n, HEAD_DIM)`` and the cumulative log forget gates ``(1, HEADS, n)``."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, HEADS, n, HEAD_DIM, generator=g) for _ in range(3))
    log_f = F.logsigmoid(torch.randn(1, HEADS, n, generator=g) + GATE_MEAN)
    return q, k, v, log_f.cumsum(-1)


def absolute_offsets(q, k, v, forget, slopes) -> torch.Tensor:
    """The kernel with ``-c_j + m_h j`` as the extra key feature, for every block alike."""
    n, scale = q.shape[-2], 1 / math.sqrt(q.shape[-1])
    bias = -forget + slopes.view(-1, 1) * torch.arange(n)
    q1 = torch.cat([q, torch.full_like(q[..., :1], 1 / scale)], -1)
    k1 = torch.cat([k, bias.unsqueeze(-1).to(k.dtype)], -1)
    v1 = F.pad(v, (0, 1))
    return F.scaled_dot_product_attention(q1, k1, v1, is_causal=True, scale=scale)[..., :-1]


def measure(lengths: Sequence[int] = LENGTHS, progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Max and mean absolute error of each form per length and dtype, against float64."""
    from attnexp.attention.design import alibi_slopes, attend

    rows = []
    slopes = alibi_slopes(HEADS)
    for n in lengths:
        q, k, v, forget = inputs(n)
        for dtype in (torch.float32, torch.bfloat16):
            cast = [t.to(dtype) for t in (q, k, v)]
            progress(f"position bias: N = {n}, {dtype}, and its float64 reference")
            exact = [t.double() for t in cast]  # the same (rounded) inputs
            with torch.no_grad():  # the reference computes c_i - c_j and m_h (j - i) as they are
                reference, _ = attend(*exact, is_causal=True, forget=forget.double(),
                                      alibi=slopes.double(), fused=False)  # fmt: skip
                plain_reference, _ = attend(*exact, is_causal=True)
                forms = {
                    "relative (the fused path)": (attend(*cast, is_causal=True, forget=forget, alibi=slopes)[0], reference),
                    "absolute": (absolute_offsets(*cast, forget, slopes), reference),
                    "no bias (the kernel alone)": (attend(*cast, is_causal=True)[0], plain_reference),
                }  # fmt: skip
            for form, (out, exact_out) in forms.items():
                err = (out.double() - exact_out).abs()
                rows.append({"n": n, "dtype": str(dtype).removeprefix("torch."), "offsets": form,
                             "max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()),
                             "c_last": float(forget[..., -1].min())})  # fmt: skip
    return rows


# The changes ``speed`` can time beside plain causal attention.
SPEED_KNOBS = ("forget", "sink")


def speed(lengths: Sequence[int] = (1024, 4096), repeats: int = 3, knob: str = "forget") -> list[dict[str, Any]]:
    """Seconds of one forward and backward of causal attention with a forget gate or a sink
    (float32): the fused path, the chunked path (``fused=False``) and the plain causal kernel
    with neither, interleaved, the median of ``repeats`` each."""
    import statistics
    import time

    from attnexp.attention.design import attend

    if knob not in SPEED_KNOBS:
        raise ValueError(f"knob must be one of {', '.join(SPEED_KNOBS)}; got {knob!r}")
    rows = []
    for n in lengths:
        q, k, v, forget = inputs(n)
        change = {"forget": forget} if knob == "forget" else {"sink": torch.tensor([0.5, -1.0])}
        qkv = [t.requires_grad_() for t in (q, k, v)]
        forms = {"fused": change, "chunked": {**change, "fused": False}, "no bias": {}}
        times: dict[str, list[float]] = {form: [] for form in forms}
        for _ in range(repeats):
            for form, knobs in forms.items():
                start = time.perf_counter()
                attend(*qkv, is_causal=True, **knobs)[0].sum().backward()
                times[form].append(time.perf_counter() - start)
        rows.append({"n": n, "knob": knob, **{form: statistics.median(t) for form, t in times.items()}})
    return rows


def speed_markdown(rows: list[dict[str, Any]]) -> str:
    from attnexp.util.markdown import md_table

    lines = [[f"{r['n']:,}", f"{r['fused']:.3f}", f"{r['chunked']:.3f}", f"{r['no bias']:.3f}",
              f"{r['fused'] / r['chunked']:.2f}", f"{r['fused'] / r['no bias']:.1f}"] for r in rows]  # fmt: skip
    knob = {"forget": "a forget gate", "sink": "a sink"}[rows[0]["knob"]] if rows else "a forget gate"
    return (
        f"One forward and backward of causal attention with {knob} (1 x 2 heads x 16 "
        "features, float32), the median of 3, the three forms interleaved:\n\n"
        + md_table(["N", "fused (s)", "chunked (s)", "no bias (s)", "fused / chunked",
                    "fused / no bias"], lines)  # fmt: skip
    )


def to_markdown(rows: list[dict[str, Any]]) -> str:
    from attnexp.util.markdown import md_table

    lines = [[f"{r['n']:,}", r["dtype"], r["offsets"], f"{r['max_abs_error']:.2e}",
              f"{r['mean_abs_error']:.2e}", f"{r['c_last']:.0f}"] for r in rows]  # fmt: skip
    return (
        f"Causal softmax attention with a forget gate (log f = logsigmoid(z), z ~ N({GATE_MEAN:g}, 1))"
        f" and ALiBi, 1 x {HEADS} heads x {HEAD_DIM} features, random q, k, v ~ N(0, 1): the "
        "kernel's output against the chunked path in float64 on the same (rounded) inputs, which "
        "computes c_i - c_j and m_h (j - i) as they are.\n\n"
        + md_table(["N", "dtype", "offsets", "max |error|", "mean |error|", "c at N (lowest head)"], lines)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnexp.bench.position_bias")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--speed", action="store_true", help="time the three forms instead")
    parser.add_argument("--knob", choices=SPEED_KNOBS, default="forget", help="what --speed times")
    args = parser.parse_args(argv)
    if args.speed:
        print(speed_markdown(speed(args.lengths, knob=args.knob)))
    else:
        print(to_markdown(measure(args.lengths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
