"""Time and memory of one causal training step of ``mha`` with each preset of
``conf/attention_knob/`` (experiment=modern_attention's knobs) at growing N: the memory a step
holds must grow linearly in N on every path (fused, fused with position biases, chunked).

One module (not a whole model), batch 1, float32: forward and backward of ``sum(out)``, its time
and the peak tensor bytes the step allocates (``measure.timed_peak_memory``: on CPU, the
profiler's allocation events). ``python -m attnexp.bench.knob_scaling`` prints the table;
``scripts/benchmark.py --knob-scaling`` records it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import torch

DIM, HEADS = 64, 4
LENGTHS = (1024, 4096, 16384)


def presets() -> dict[str, dict[str, Any]]:
    """Each preset's ``attention`` keys, read from its yaml (``mha``: none)."""
    from omegaconf import OmegaConf

    from attnexp.config.paths import CONFIG_DIR

    found = {}
    for path in sorted((CONFIG_DIR / "attention_knob").glob("*.yaml")):
        node = OmegaConf.load(path).get("attention")
        found[path.stem] = {} if node is None else OmegaConf.to_container(node)
    return {"mha": found.pop("mha"), **found}


def measure(
    lengths: Sequence[int] = LENGTHS, progress: Callable[[str], None] = print,
    knobs: Sequence[str] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Each preset's row per length (``knobs``: only these presets, in their order)."""
    from attnexp.attention.mha import MultiHeadAttention
    from attnexp.bench.measure import timed_peak_memory
    from attnexp.util.memory import mmap_large_blocks

    device = torch.device("cpu")
    mmap_large_blocks(4 << 20)  # the process stays near its tensors (docs/benchmarks.md)
    found = presets()
    unknown = sorted(set(knobs or ()) - set(found))
    if unknown:
        raise ValueError(f"unknown knob presets {unknown}; the presets are {', '.join(found)}")
    chosen = {name: found[name] for name in knobs} if knobs else found
    rows = []
    for n in lengths:
        for name, preset in chosen.items():
            torch.manual_seed(0)
            module = MultiHeadAttention(DIM, causal=True, num_heads=HEADS, **preset)
            x = torch.randn(1, n, DIM, requires_grad=True)

            def step(module=module, x=x) -> None:
                module(x).sum().backward()

            progress(f"knob scaling: {name} at N = {n}")
            step()  # warm-up
            seconds, peak = timed_peak_memory(step, device)
            rows.append({"knob": name, "n": n, "step_s": seconds, "peak_mb": peak / 2**20})
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    from attnexp.util.markdown import md_table

    lengths = sorted({r["n"] for r in rows})
    by = {(r["knob"], r["n"]): r for r in rows}
    knobs = list(dict.fromkeys(r["knob"] for r in rows))
    header = ["knob", *(f"step (s), N = {n:,}" for n in lengths),
              *(f"peak (MB), N = {n:,}" for n in lengths)]  # fmt: skip
    if len(lengths) > 1:
        header.append(f"peak ratio {lengths[-1]:,} / {lengths[-2]:,}")
    lines = []
    for knob in knobs:
        line = [knob, *(f"{by[knob, n]['step_s']:.3f}" for n in lengths),
                *(f"{by[knob, n]['peak_mb']:.1f}" for n in lengths)]  # fmt: skip
        if len(lengths) > 1:
            line.append(f"{by[knob, lengths[-1]]['peak_mb'] / by[knob, lengths[-2]]['peak_mb']:.2f}")
        lines.append(line)
    return (
        f"One causal training step (forward and backward) of `mha` (dim {DIM}, {HEADS} heads, batch "
        "1, float32) with each preset of conf/attention_knob: seconds (one step after a warm-up, "
        "timed while profiled) and the peak tensor memory the step allocates. Linear memory: the "
        f"last column near {lengths[-1] / lengths[-2]:.0f} (quadratic would be "
        f"{(lengths[-1] / lengths[-2]) ** 2:.0f}).\n\n" + md_table(header, lines)
        if len(lengths) > 1 else md_table(header, lines)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnexp.bench.knob_scaling")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--knobs", nargs="+", help="only these presets (default: all)")
    args = parser.parse_args(argv)
    try:
        rows = measure(args.lengths, knobs=args.knobs)
    except ValueError as err:
        parser.error(str(err))
    print(to_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
