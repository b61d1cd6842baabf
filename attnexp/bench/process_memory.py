"""Process memory of one training step of ``mha``, per score x normalisation, each in a fresh
process: how much the process grows (peak RSS) at a long N over a short one, with large
allocations mmapped as the chunked path arranges (``attnexp.util.memory``) and without, and the
step time of each, side by side. ``--variants`` does the same for whole variants at several
lengths (``scaling``): the memory figure for mixers whose many small ops are too many for the
profiler's allocation replay (``bench.measure``).

The tensors an attention step holds are linear in N on every path (``docs/design_space.md``); the
process need not be: glibc may keep freed score blocks in its heap, split by the small allocations
autograd makes between them. This measures the process, as the out-of-memory killer sees it.

``python -m attnexp.bench.process_memory`` prints the table; ``scripts/benchmark.py
--process-memory`` records it. A child (``--child``) measures one cell and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import yaml

DIM, HEADS, BATCH = 64, 4, 1
SHORT, LONG = 256, 8192
TIMED_STEPS = 2


def child(n: int, mmap: bool, variant: str = "mha", **knobs: Any) -> dict[str, Any]:
    """One forward and backward of ``variant`` (with ``knobs``) at ``n`` (peak RSS after it),
    then ``TIMED_STEPS`` timed steps."""
    import torch

    from attnexp.attention import factory
    from attnexp.config.attention import attention_config
    from attnexp.util import memory

    torch.manual_seed(0)
    if not mmap:
        memory.AUTO_MMAP = False
    heads = {"num_heads": HEADS} if variant == "mha" else {}
    layer = knobs.pop("layer", 0)  # a block-dependent variant (based, base_conv): that block
    build = factory(attention_config(variant))
    module = build(dim=DIM, **heads, **knobs, **({"layer": layer} if layer else {}))
    x = torch.randn(BATCH, n, DIM, requires_grad=True)

    def step() -> None:
        module(x).square().mean().backward()

    step()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    start = time.perf_counter()
    for _ in range(TIMED_STEPS):
        step()
    return {
        "variant": variant, **knobs, "layer": layer, "n": n, "mmap": memory.mmapped(),
        "peak_rss_mb": peak_mb, "step_s": (time.perf_counter() - start) / TIMED_STEPS,
    }  # fmt: skip


# How a child runs: the chunked path's own setting (``mmap``), glibc left as it is (``heap``), or
# the setting with transparent huge pages for the mapped blocks (``mmap-thp``: a glibc tunable,
# read only when a process starts, so the command must be started with it).
MODES = {
    "mmap": {},
    "heap": {},
    "mmap-thp": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
}


def run_cell(
    n: int, mode: str, threads: int, variant: str = "mha", **knobs: str
) -> dict[str, Any]:  # fmt: skip
    """``child`` in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **MODES[mode]}
    args = [sys.executable, "-m", "attnexp.bench.process_memory", "--child", str(n), mode,
            "--variant", variant, *(f"--knob={k}={v}" for k, v in knobs.items())]  # fmt: skip
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def scaling(
    variants: Sequence[str], lengths: Sequence[int], short: int = SHORT, threads: int = 1,
    progress: Any = print,
) -> list[dict[str, Any]]:  # fmt: skip
    """Per variant and length: the process's growth at that length over ``short`` (MB, the
    chunked path's mmap setting) and the step time, each from a fresh process."""
    rows = []
    for spec in variants:  # "name" or "name:key=value:key=value" (based:layer=1)
        variant, *pairs = spec.split(":")
        knobs = dict(pair.split("=", 1) for pair in pairs)
        base = run_cell(short, "mmap", threads, variant, **knobs)["peak_rss_mb"]
        for n in lengths:
            at = run_cell(n, "mmap", threads, variant, **knobs)
            rows.append({"variant": spec, "n": n, "growth_mb": at["peak_rss_mb"] - base,
                         "step_s": at["step_s"]})  # fmt: skip
            progress(f"{variant:>15} N={n}: +{rows[-1]['growth_mb']:.0f} MB, {at['step_s']:.3f} s")
    return rows


def scaling_markdown(rows: list[dict[str, Any]], short: int = SHORT) -> str:
    """One row per variant: growth and step time at each length, and the ratios of the last two."""
    from attnexp.util.markdown import md_table

    lengths = sorted({r["n"] for r in rows})
    by = {(r["variant"], r["n"]): r for r in rows}
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    header = ["variant", *(f"growth (MB), N = {n:,}" for n in lengths),
              *(f"step (s), N = {n:,}" for n in lengths)]  # fmt: skip
    if len(lengths) > 1:
        header += [f"growth ratio {lengths[-1]:,} / {lengths[-2]:,}", f"time ratio {lengths[-1]:,} / {lengths[-2]:,}"]
    lines = []
    for v in variants:
        line = [v, *(f"{by[v, n]['growth_mb']:.0f}" for n in lengths), *(f"{by[v, n]['step_s']:.3f}" for n in lengths)]
        if len(lengths) > 1:
            last, before = by[v, lengths[-1]], by[v, lengths[-2]]
            line += [f"{last['growth_mb'] / max(before['growth_mb'], 1):.2f}", f"{last['step_s'] / before['step_s']:.2f}"]
        lines.append(line)
    return (
        f"Peak RSS of one forward and backward of each variant (batch {BATCH}, dim {DIM}, its yaml's "
        f"defaults) at N minus that at N = {short}, each in a fresh process, and the step time.\n\n"
        + md_table(header, lines)
    )


def measure(
    cells: Sequence[tuple[str, str]] | None = None, short: int = SHORT, long: int = LONG,
    threads: int = 1, progress: Any = print, modes: Sequence[str] = ("mmap", "heap"),
) -> list[dict[str, Any]]:  # fmt: skip
    """Per cell and mode (``MODES``): the growth at ``long`` over ``short`` (MB) and the step time
    at ``long``; each figure from its own fresh process."""
    from attnexp.attention.design import NORMALIZATIONS, SCORES

    cells = cells or [(s, n) for s in SCORES for n in NORMALIZATIONS]
    rows = []
    for score, normalize in cells:
        row: dict[str, Any] = {"score": score, "normalize": normalize}
        for mode in modes:
            base = run_cell(short, mode, threads, score=score, normalize=normalize)
            at = run_cell(long, mode, threads, score=score, normalize=normalize)
            row[f"growth_mb_{mode}"] = at["peak_rss_mb"] - base["peak_rss_mb"]
            row[f"step_s_{mode}"] = at["step_s"]
            row[f"mmapped_{mode}"] = at["mmap"]
        rows.append(row)
        progress(f"{score:>8} {normalize:>7}: " + "; ".join(
            f"{mode} +{row[f'growth_mb_{mode}']:.0f} MB, {row[f'step_s_{mode}']:.3f} s" for mode in modes
        ))  # fmt: skip
    return rows


def to_markdown(rows: list[dict[str, Any]], short: int = SHORT, long: int = LONG) -> str:
    """One row per cell: the growth of each mode measured and the step time of each mode over
    the step time of ``heap`` (glibc left alone)."""
    from attnexp.util.markdown import md_table

    modes = [m for m in MODES if f"step_s_{m}" in rows[0]]
    header = ["score", "normalize", *(f"growth, {m} (MB)" for m in modes),
              *(f"step time, {m} / heap" for m in modes if m != "heap"), "mmapped"]  # fmt: skip
    lines = [
        [r["score"], r["normalize"], *(f"{r[f'growth_mb_{m}']:.0f}" for m in modes),
         *(f"{r[f'step_s_{m}'] / r['step_s_heap']:.2f}×" for m in modes if m != "heap"),
         "yes" if any(r[f"mmapped_{m}"] for m in modes if m != "heap") else "no"]
        for r in rows
    ]  # fmt: skip
    return (
        f"Peak RSS of one forward and backward of `mha` (batch {BATCH}, dim {DIM}, {HEADS} heads) "
        f"at N = {long:,} minus that at N = {short}, each in a fresh process.\n\n"
        + md_table(header, lines)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnexp.bench.process_memory")
    parser.add_argument("--child", nargs=2, metavar=("N", "MODE"))
    parser.add_argument("--variant", default="mha", help="with --child: the variant it builds")
    parser.add_argument("--knob", action="append", default=[], help="with --child: KEY=VALUE")
    parser.add_argument("--variants", help="variant[:key=value...],... : growth and time at --lengths instead")
    parser.add_argument("--lengths", default="1024,4096,16384", help="with --variants")
    parser.add_argument("--long", type=int, default=LONG)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", default="mmap,heap", help=f"of {', '.join(MODES)}")
    parser.add_argument("--cells", help="score:normalize,... (default: every one)")
    args = parser.parse_args(argv)
    if args.child:
        n, mode = args.child
        knobs = {k: yaml.safe_load(v) for k, v in (pair.split("=", 1) for pair in args.knob)}
        print(json.dumps(child(int(n), mode != "heap", args.variant, **knobs)))
        return 0
    if args.variants:
        rows = scaling(args.variants.split(","), [int(n) for n in args.lengths.split(",")], threads=args.threads)
        print(json.dumps(rows))
        print(scaling_markdown(rows))
        return 0
    cells = [tuple(c.split(":")) for c in args.cells.split(",")] if args.cells else None
    rows = measure(cells, long=args.long, threads=args.threads, modes=args.modes.split(","))
    print(json.dumps(rows))
    print(to_markdown(rows, long=args.long))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
