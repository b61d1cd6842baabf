"""The comparison's figures: the primary metric per variant with its 95% interval, and against
each cost; the colours, markers and legend every report figure shares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnexp.report.rows import Row, Stat
from attnexp.report.table import metric_label, metric_scale
from attnexp.runs.record import (
    COSTS,
    DIAGNOSTIC_LABELS,
    Cost,
    read_results,
)
from attnexp.util.plotting import new_figure, safe_filename, save_figure

# --------------------------------------------------------------------------- plots


def variant_colors(rows: Sequence[Row]) -> dict[str, Any]:
    """One colour per variant, the same in every figure."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len({r.variant for r in rows}) <= 10 else "tab20"]
    return {v: cmap(i % cmap.N) for i, v in enumerate(sorted({r.variant for r in rows}))}


MARKERS = "osD^vP*Xh<>"


def legend_beside(fig: Any) -> None:
    """One legend for the whole figure, to the right of the axes, widening the figure for it: a
    legend inside the axes hides points once a study has more than a few variants."""
    entries: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    longest = max(map(len, entries), default=0)
    fig.set_figwidth(fig.get_figwidth() + 0.6 + 0.065 * longest)
    fig.legend(entries.values(), entries.keys(), loc="outside right upper", fontsize="small")


def half_width(s: Stat) -> float:
    """The error bar: half the 95% interval (symmetric for a t-interval); none below 2 seeds."""
    return 0.0 if math.isnan(s.low) else (s.high - s.low) / 2


def plot_primary(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    """One figure per dataset: its task's primary test metric per variant (error bars: the 95%
    interval of the mean), grouped by backbone."""
    colors = variant_colors(rows)
    paths = []
    for dataset in sorted({r.dataset for r in rows}):
        sub = [r for r in rows if r.dataset == dataset and r.n_seeds]
        if not sub:
            continue
        key, metric = sub[0].primary
        scale = metric_scale(metric)
        backbones = sorted({r.backbone for r in sub})
        variants = sorted({r.variant for r in sub})
        fig, axes = new_figure(
            cell=(max(4.0, 1.2 * len(backbones) * max(1, len(variants)) / 3), 3.6)
        )
        ax = axes[0, 0]
        width = 0.8 / len(variants)
        for i, v in enumerate(variants):
            pts = [(backbones.index(r.backbone), r.stat(key)) for r in sub if r.variant == v]
            xs = [x - 0.4 + width * (i + 0.5) for x, _ in pts]
            ys = [scale * s.mean for _, s in pts]
            errs = [scale * half_width(s) for _, s in pts]
            ax.errorbar(xs, ys, yerr=errs, fmt="o", capsize=3, color=colors[v], label=v)
        ax.set_xticks(range(len(backbones)), backbones)
        ax.set_xlim(-0.5, len(backbones) - 0.5)
        ax.set_ylabel(metric_label(metric))
        ax.set_title(f"{dataset}: mean and 95% interval over seeds")
        ax.grid(axis="y", alpha=0.3)
        legend_beside(fig)
        paths.append(save_figure(fig, out_dir / f"primary_{safe_filename(dataset)}.png"))
    return paths


def plot_primary_vs(rows: Sequence[Row], out_dir: Path, cost: Cost) -> Path | None:
    """Each dataset's primary test metric against ``cost``, one subplot per dataset; colour =
    variant, marker = backbone, log x axis (costs span orders of magnitude)."""
    sub = [r for r in rows if r.n_seeds and not math.isnan(r.costs[cost.name])]
    if not sub:
        return None
    colors = variant_colors(rows)
    backbones = sorted({r.backbone for r in rows})
    datasets = sorted({r.dataset for r in sub})
    fig, axes = new_figure(1, len(datasets), cell=(4.5, 3.6))
    for ax, dataset in zip(axes[0], datasets, strict=True):
        here = [r for r in sub if r.dataset == dataset]
        key, metric = here[0].primary
        scale = metric_scale(metric)
        for r in here:
            s = r.stat(key)
            err = scale * half_width(s)
            ax.errorbar(r.costs[cost.name], scale * s.mean, yerr=err, capsize=3, color=colors[r.variant],
                        marker=MARKERS[backbones.index(r.backbone) % len(MARKERS)], ls="none",
                        label=f"{r.variant} / {r.backbone}")  # fmt: skip
        if all(r.costs[cost.name] > 0 for r in here):
            ax.set_xscale("log")
        ax.set_xlabel(cost.description)
        ax.set_ylabel(metric_label(metric))
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
    legend_beside(fig)
    return save_figure(fig, out_dir / f"primary_vs_{cost.name}.png")


def plot_all(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    paths = plot_primary(rows, out_dir)
    for cost in COSTS:
        p = plot_primary_vs(rows, out_dir, cost) if cost.plot else None
        if p is not None:
            paths.append(p)
    p = plot_diagnostics_by_layer(rows, out_dir)
    return paths + ([p] if p is not None else [])


def diagnostics_by_layer(run_dirs: Sequence[str]) -> dict[str, list[float]]:
    """Each attention diagnostic per slot (model order), the mean over maps and over the runs
    of ``run_dirs`` (their ``results.json``'s ``attention_diagnostics``); empty without maps."""
    per_layer: dict[str, list[list[float]]] = {}
    for run_dir in run_dirs:
        slots = (read_results(run_dir).get("attention_diagnostics") or {}).values()
        for layer, stats in enumerate(slots):
            for name in DIAGNOSTIC_LABELS:
                values = [v for v in stats.get(name, []) if v is not None]
                if values:
                    rows = per_layer.setdefault(name, [])
                    rows.extend([] for _ in range(layer + 1 - len(rows)))
                    rows[layer].append(sum(values) / len(values))
    return {name: [sum(v) / len(v) if v else math.nan for v in layers] for name, layers in per_layer.items()}


def plot_diagnostics_by_layer(rows: Sequence[Row], out_dir: Path) -> Path | None:
    """The attention diagnostics against the layer, one line per variant (the mean over maps and
    seeds), one panel per diagnostic; per dataset and backbone, the first with diagnostics."""
    measured = [(r, diagnostics_by_layer(r.run_dirs)) for r in rows if r.n_seeds]
    measured = [(r, d) for r, d in measured if d]
    if not measured:
        return None
    first = measured[0][0]
    shown = sorted(((r, d) for r, d in measured if (r.dataset, r.backbone) == (first.dataset, first.backbone)),
                   key=lambda item: item[0].variant)  # fmt: skip
    colors = variant_colors([r for r, _ in shown])
    fig, axes = new_figure(1, len(DIAGNOSTIC_LABELS), cell=(3.0, 2.6))
    for ax, (name, label) in zip(axes[0], DIAGNOSTIC_LABELS.items(), strict=True):
        for i, (r, d) in enumerate(shown):
            if name in d:
                ax.plot(range(len(d[name])), d[name], marker=MARKERS[i % len(MARKERS)],
                        color=colors[r.variant], label=r.variant, markersize=4)  # fmt: skip
        ax.set_xlabel("layer")
        ax.set_title(label, fontsize="small")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{first.dataset}, {first.backbone}", fontsize="small")
    legend_beside(fig)
    return save_figure(fig, out_dir / "diagnostics_by_layer.png")


