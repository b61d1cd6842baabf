"""Zoology's figure 2: accuracy against model width, one panel per sequence length, one line per
variant (Arora et al., 2023), and below it the same points against the state size (the floats one
sequence keeps to continue, ``state_floats``: Zoology's x-axis for the recall-memory tradeoff)
when the runs recorded it. Drawn from the report's rows when they are split by both
``backbone.dim`` and ``dataset.seq_len`` (``attnexp-compare --by backbone.dim --by dataset.seq_len``,
or an experiment's ``report_by``), usually with ``--best-over optim.optimizer.lr``. Error bars: the
95% interval of the mean over seeds, as the report's other plots (none below two seeds)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from attnexp.report.best_over import value_order
from attnexp.report.figures import half_width, legend_beside, variant_colors
from attnexp.report.rows import ReportError, Row, reported_key
from attnexp.report.table import metric_label, metric_scale
from attnexp.tasks.spec import Metric
from attnexp.util.plotting import new_figure, save_figure

WIDTH_KEY = "backbone.dim"  # the x axis
PANEL_KEY = "dataset.seq_len"  # one panel per value
FIGURE_FILE = "zoology_accuracy.png"
METRIC = "acc"  # plotted when the task logs it (MQAR's accuracy over the queried positions)
STATE_COST = "state_floats"  # the second row's x axis


def figure_metric(row: Row) -> Metric:
    """The test metric the figure plots: accuracy, else the task's primary metric."""
    return next((m for m in row.task.test_metrics if m.name == METRIC), row.task.primary)


def _number(value, row: Row) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ReportError(f"{WIDTH_KEY} of {row.variant} is {value!r}, not a number") from None


def line_names(rows: Sequence[Row]) -> list[str]:
    """Each row's line: its variant, joined by its backbone and/or dataset only where a variant's
    rows would otherwise put two points at one (length, width). Names that carry the width or the
    length themselves (Zoology's ``transformer-d64``, ``zoology_mqar-L64``) so stay out of the
    line's name, and one variant's points make one line."""
    for extra in ((), ("backbone",), ("dataset",), ("backbone", "dataset")):
        names = [" / ".join([r.variant, *(getattr(r, n) for n in extra)]) for r in rows]
        named = zip(names, rows, strict=True)
        points = {(name, r.labels[PANEL_KEY], r.labels[WIDTH_KEY]) for name, r in named}
        if len(points) == len(rows):
            break
    return names  # the last try where not even all four tell rows apart (other --by keys)


def plot_width_figure(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    """``[out_dir/zoology_accuracy.png]`` when the rows carry both keys, else ``[]``: a row of
    panels against the width and, where every row recorded its state size, one against it."""
    rows = [r for r in rows if r.n_seeds and WIDTH_KEY in r.labels and PANEL_KEY in r.labels]
    if not rows:
        return []
    colors = variant_colors(rows)
    named = list(zip(line_names(rows), rows, strict=True))
    panels = sorted({r.labels[PANEL_KEY] for r in rows}, key=value_order)
    states = [r.costs.get(STATE_COST, math.nan) for r in rows]
    with_state = all(math.isfinite(v) and v > 0 for v in states)
    fig, axes = new_figure(2 if with_state else 1, len(panels), cell=(3.6, 3.2), sharey=True)
    for column, panel in enumerate(panels):
        here = [(name, r) for name, r in named if r.labels[PANEL_KEY] == panel]
        widths = sorted({_number(r.labels[WIDTH_KEY], r) for _, r in here})
        ax = axes[0, column]
        draw_lines(ax, here, lambda r: _number(r.labels[WIDTH_KEY], r), colors)
        ax.set_xticks(widths, [f"{w:g}" for w in widths])
        ax.minorticks_off()
        ax.set_xlabel("model width")
        ax.set_title(f"sequence length {panel}")
        if with_state:
            draw_lines(axes[1, column], here, lambda r: r.costs[STATE_COST], colors)
            axes[1, column].set_xlabel("state size (floats per sequence)")
    for ax in axes[:, 0]:
        ax.set_ylabel(metric_label(figure_metric(rows[0])))
    legend_beside(fig)
    return [save_figure(fig, out_dir / FIGURE_FILE)]


def draw_lines(ax, here: Sequence[tuple[str, Row]], x_of: Callable[[Row], float], colors) -> None:
    """One line per name of ``here`` over ``x_of(row)`` on a log-2 axis, with the interval."""
    for line in sorted({name for name, _ in here}):
        pts = sorted(((x_of(r), r) for name, r in here if name == line), key=lambda p: p[0])
        metric = figure_metric(pts[0][1])
        scale = metric_scale(metric)
        stats = [r.stat(reported_key(metric)) for _, r in pts]
        ax.errorbar([x for x, _ in pts], [scale * s.mean for s in stats],
                    yerr=[scale * half_width(s) for s in stats],
                    marker="o", capsize=3, color=colors[pts[0][1].variant], label=line)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
