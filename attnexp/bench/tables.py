"""What the suite shows: the performance targets, each section's Markdown and the scaling plot."""

from __future__ import annotations

import math
from pathlib import Path

from attnexp.util.markdown import md_table
from attnexp.util.plotting import new_figure, save_figure


def evaluate_targets(rows: list[dict], n: int = 256, dim: int = 128) -> list[dict]:
    """Each module row with a ``target`` (its reference's, ``Reference.target``) measured at ``n``
    positions and ``dim``."""
    found = []
    for r in rows:
        limit = r.get("target")
        if limit is not None and math.prod(r["grid"]) == n and r["dim"] == dim:
            ratio = r["ours_over_ref"]
            found.append(
                {"variant": r["variant"], "reference": r["implementation"], "n": n, "dim": dim,
                 "ours_over_ref": ratio, "limit": limit, "met": ratio <= limit}
            )  # fmt: skip
    return found


def cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def table(header: list[str], rows: list[list]) -> str:
    return md_table(header, [[cell(v) for v in row] for row in rows])


def grid_text(grid: list[int]) -> str:
    return "×".join(map(str, grid))


def modules_report(results: dict) -> str:
    """The suite's module benchmarks, numeric checks and targets."""
    modules = table(
        ["variant", "implementation", "B", "grid", "C", "ms", "peak MB", "GFLOP/s", "ours ÷ ref"],
        [
            [r["variant"], r["implementation"], r["batch"], grid_text(r["grid"]), r["dim"],
             r["ms"], r["peak_mb"], r["gflop_per_s"], r["ours_over_ref"]]
            for r in results["modules"]
        ],
    )  # fmt: skip
    checks = table(
        ["variant", "reference", "B", "grid", "C", "max abs error", "ok"],
        [
            [c["variant"], c["reference"], c["batch"], grid_text(c["grid"]), c["dim"],
             c["max_abs_error"], c["ok"]]
            for c in results["checks"]
        ],
    )  # fmt: skip
    targets = table(
        ["variant", "reference", "N", "C", "ours ÷ ref", "target", "met"],
        [
            [t["variant"], t["reference"], t["n"], t["dim"], t["ours_over_ref"],
             f"≤ {t['limit']:.3g}", t["met"]]
            for t in results["targets"]
        ],
    )  # fmt: skip
    return "\n\n".join([
        "## Module benchmarks (one forward + backward step)",
        modules,
        "## Numeric checks (eval mode, atol = rtol = 1e-5)",
        checks,
        "## Targets (at N=256, C=128)",
        targets if results["targets"] else "(not measured in this run)",
    ])  # fmt: skip


def scaling_table(curve: list[dict]) -> str:
    """N down, time and memory of each variant across; skipped points marked, reasons below."""
    variants = list(dict.fromkeys(r["variant"] for r in curve))
    point = {(r["variant"], r["n"]): r for r in curve}
    rows = []
    for n in sorted({r["n"] for r in curve}):
        row = [n]
        for v in variants:
            r = point[v, n]
            row += ["skipped", "skipped"] if r.get("skipped") else [r["ms"], r["peak_mb"]]
        rows.append(row)
    reasons = {r["variant"]: r["skipped"] for r in curve if r.get("skipped")}
    notes = "".join(f"\n\n{v} skipped at longer N: {why}" for v, why in reasons.items())
    return table(["N"] + [f"{v} {unit}" for v in variants for unit in ("ms", "MB")], rows) + notes


def memory_exponent(curve: list[dict]) -> float | None:
    """p in peak ~ N^p between the shortest and the longest measured N (1: linear memory)."""
    points = sorted((r["n"], r["peak_mb"]) for r in curve if r["peak_mb"])
    if len(points) < 2 or points[0][0] == points[-1][0]:
        return None
    (n0, m0), (n1, m1) = points[0], points[-1]
    return math.log(m1 / m0) / math.log(n1 / n0)


def design_scaling_report(curve: list[dict]) -> str:
    """One row per design cell and N: time and memory, each over dot+softmax's at that N; then
    each cell's memory exponent, and the targets (linear memory; the fused softmax cells, cosine,
    l2 and pearson, within 1.3x of dot+softmax's time at N = 4096; additive has no fused path)."""
    from attnexp.attention.design import FUSED_SCORES
    from attnexp.bench.model_step import (
        DESIGN_BASELINE,
        DESIGN_MEMORY_EXPONENT,
        DESIGN_TIME_LIMIT,
    )

    fused_softmax = {f"{score}+softmax" for score in FUSED_SCORES}
    base = {r["n"]: r for r in curve if r["variant"] == DESIGN_BASELINE}
    rows = [
        [r["variant"], r["n"], r["ms"], r["peak_mb"], r["ms"] / base[r["n"]]["ms"],
         r["peak_mb"] / base[r["n"]]["peak_mb"]]
        for r in curve
    ]  # fmt: skip
    summary = []
    for cell in dict.fromkeys(r["variant"] for r in curve):
        own = [r for r in curve if r["variant"] == cell]
        exponent = memory_exponent(own)
        at_4k = next((r for r in own if r["n"] == 4096), None)
        ratio = at_4k["ms"] / base[4096]["ms"] if at_4k else None
        timed = cell in fused_softmax and cell != DESIGN_BASELINE and ratio is not None
        summary.append(
            [cell, exponent, "met" if exponent is not None and exponent <= DESIGN_MEMORY_EXPONENT
             else "NOT met", ratio, ("met" if ratio <= DESIGN_TIME_LIMIT else "NOT met")
             if timed else "–", max(r["n"] for r in own)]
        )  # fmt: skip
    batch = curve[0]["batch"] if curve else "–"
    return (
        f"## Design-space scaling on MQAR (one training step of mha's cells, B={batch})\n\n"
        + table(["cell", "N", "ms", "peak MB", f"ms ÷ {DESIGN_BASELINE}",
                 f"MB ÷ {DESIGN_BASELINE}"], rows)  # fmt: skip
        + "\n\n"
        + table(["cell", "memory exponent p (peak ~ N^p)", f"p ≤ {DESIGN_MEMORY_EXPONENT}",
                 f"ms ÷ {DESIGN_BASELINE} at N=4096", f"≤ {DESIGN_TIME_LIMIT} (fused softmax)",
                 "longest N run"], summary)  # fmt: skip
    )


def scaling_report(result: list[dict]) -> str:
    batch = f", B={result[0]['batch']}" if result else ""
    return (
        f"## Scaling on MQAR (one training step, transformer backbone{batch})\n\n"
        + scaling_table(result)
    )


def mfu_report(r: dict) -> str:
    c = r["config"]
    mfu = "–" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    lines = [
        f"## Model FLOP utilisation (transformer + mha, dim {c['dim']}, depth {c['depth']}, "
        f"{c['heads']} heads, seq {c['seq_len']}, batch {c['batch']}, "
        f"{'bf16 autocast' if c['bf16'] else 'fp32'}, {c['device']})",
        table(
            ["params", "GFLOP/step", "ms/step", "TFLOP/s", "peak TFLOP/s", "MFU", "tokens/s"],
            [[r["params"], r["flops_per_step"] / 1e9, r["ms"], r["achieved_tflop_per_s"],
              r["peak_tflop_per_s"], mfu, r["tokens_per_s"]]],
        ),  # fmt: skip
    ]
    if r["sdpa"]:
        lines.append("SDPA kernels: " + "; ".join(f"{k}: {v}" for k, v in r["sdpa"].items()))
    if r["note"]:
        lines.append(r["note"])
    return "\n\n".join(lines)


def pipeline_report(r: dict) -> str:
    return "\n\n".join(
        [
            f"## Image input pipeline ({r['device']}, batch {r['batch']}, "
            f"{r['threads']} threads; CIFAR-shaped uint8 on the device)",
            table(
                ["row", "ms/batch", "images/s", "x bare loop"],
                [[x["row"], x["ms"], x["images_per_s"], x["vs_bare"]] for x in r["rows"]],
            ),
            f"augment / bare loop throughput: {r['augment_vs_bare']:.2f} (target >= 0.9: "
            f"{'met' if r['met_bare'] else 'NOT met'}); augment time / ResNet-20 step: "
            f"{r['augment_share_of_step']:.3f} (not the bottleneck: "
            f"{'met' if r['met_not_bottleneck'] else 'NOT met'})",
        ]
    )


def ablation_report(r: dict) -> str:
    return (
        f"## Ablation wall time\n\n`{r['command']}`\n\n{r['wall_time_s']:.1f} s for "
        f"{r['completed']}/{r['jobs']} completed jobs (exit {r['returncode']}; target < "
        f"{r['target_s']} s: {'met' if r['met'] else 'NOT met'})"
        + (f"\n\n```\n{r['stderr_tail']}\n```" if r["stderr_tail"] else "")
    )


def overhead_report(r: dict) -> str:
    """Per round: train.py's and the plain loop's throughput (and tokens/s for a language model,
    a sample being a window of ``context_len`` tokens) and their ratio."""
    lm = "framework_tokens_per_s" in r
    columns = [r["framework_samples_per_s"], r["plain_samples_per_s"]]
    header = ["round", "train.py samples/s", "plain loop samples/s"]
    if lm:
        columns += [r["framework_tokens_per_s"], r["plain_tokens_per_s"]]
        header = ["round", "train.py windows/s", "plain loop windows/s",
                  "train.py tokens/s", "plain loop tokens/s"]  # fmt: skip
    per_round = enumerate(zip(*columns, strict=True))
    rows = [[i + 1, *values, values[0] / values[1]] for i, values in per_round]
    c = r["choices"]
    data = f"{c['dataset']}, context {r['context_len']}" if lm else c["dataset"]
    return (
        f"## Framework overhead ({c['attention']} + {c['backbone']} + {data}, batch "
        f"{r['batch_size']}, {r['length']} {r['unit']}, loggers: {', '.join(r['loggers']) or 'none'};"
        f" callbacks: {', '.join(r['callbacks']) or 'none'})\n\n"
        + table([*header, "ratio"], rows)
        + f"\n\nratio (median over rounds): {r['ratio']:.3f} (target ≥ {r['target']}: "
        f"{'met' if r['met'] else 'NOT met'})"
    )


def causal_report(rows: list[dict]) -> str:
    """One row per backbone and variant: step time, ratio to mha, target and status."""
    if not rows:
        return "## Causal variants in the language models\n\n(no variants)"
    first = rows[0]
    body = table(
        ["backbone", "variant", "ms/step", "÷ mha", "target", "status"],
        [
            [r["backbone"], r["variant"], r["ms"], r["over_baseline"], f"≤ {r['limit']:g}",
             "refused (causal)" if r["refused"] else "met" if r["met"] else "NOT met"]
            for r in rows
        ],
    )  # fmt: skip
    refusals = "".join(
        f"\n\n{r['variant']} on {r['backbone']}: {r['refused']}" for r in rows if r["refused"]
    )
    return (
        f"## Causal variants in the language models (one training step, context "
        f"{first['context_len']}, batch {first['batch']})\n\n" + body + refusals
    )


LINESTYLES = ("-", "--", ":", "-.")


def line_styles(variants: list[str]) -> dict[str, dict]:
    """Matplotlib styles per variant: design cells ``score+normalize`` get a colour per score
    and a line style per normalisation; other names a colour each (solid, then dashed, ...)."""
    parts = [v.split("+") for v in variants]
    if all(len(p) == 2 for p in parts):
        scores = list(dict.fromkeys(p[0] for p in parts))
        norms = list(dict.fromkeys(p[1] for p in parts))
        return {
            v: {"color": f"C{scores.index(a) % 10}", "linestyle": LINESTYLES[norms.index(b) % 4]}
            for v, (a, b) in zip(variants, parts, strict=True)
        }
    return {v: {"color": f"C{i % 10}", "linestyle": LINESTYLES[i // 10 % 4]}
            for i, v in enumerate(variants)}  # fmt: skip


def save_scaling_plot(rows: list[dict], path: Path) -> Path:
    """Time and peak memory of one step against N, one line per variant, log-log; one legend
    beside both panels."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    styles = line_styles(variants)
    fig, axes = new_figure(1, 2, cell=(4.5, 3.5))
    for variant in variants:
        curve = sorted(
            (r for r in rows if r["variant"] == variant and r["ms"] is not None),
            key=lambda r: r["n"],
        )
        for ax, key in zip(axes[0], ("ms", "peak_mb"), strict=True):
            ax.plot([r["n"] for r in curve], [r[key] for r in curve], marker="o", markersize=3,
                    label=variant, **styles[variant])  # fmt: skip
    for ax, label in zip(axes[0], ("time per step (ms)", "peak memory (MB)"), strict=True):
        ax.set(xscale="log", yscale="log", xlabel="sequence length N", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize="small")
    fig.suptitle("one training step, transformer on MQAR")
    return save_figure(fig, path)
