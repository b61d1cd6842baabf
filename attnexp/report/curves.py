"""Learning curves for the comparison report: each row's validation metric against training step.

For every report row (a cell: its completed seeds), the row's primary metric at the validation
stage (``val/acc``, ``val/loss``) is read from each run's Lightning CSV log, ``<run dir>/csv/
metrics.csv`` (``conf/logger/csv.yaml``: ``save_dir`` the run dir, ``name: csv``, ``version: ""``).
The x axis is ``step`` (the global step at which validation ran), or ``epoch`` in a figure where
some log has no step column. Seeds of one cell validate at the same steps; a curve is drawn on the
steps every seed logged (a note names a cell whose seeds differ), as the mean over seeds and a
min–max band: with the usual two to five seeds the band shows every seed, with no assumption of
normality. One figure per dataset x backbone (``curves_<dataset>_<backbone>.png``), one line per
row, in the colours of the report's other plots.

A run without a CSV log (``logger=none``, W&B only) is left out with a note, not an error; a CSV
that cannot be parsed is listed as unreadable for curves, and the report goes on.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attnexp.report.figures import legend_beside, variant_colors
from attnexp.report.rows import Row
from attnexp.report.table import label_text, metric_scale
from attnexp.runs.layout import METRICS_CSV
from attnexp.util.plotting import new_figure, safe_filename, save_figure

STEP, EPOCH = "step", "epoch"  # the x columns Lightning's CSVLogger writes, preferred first
FILE_PREFIX = "curves_"


class UnreadableLog(ValueError):
    """A metrics CSV that cannot be read as a log; the message says why."""


@dataclass(frozen=True)
class Curve:
    """A row's validation metric over its seeds, on the x values every seed logged."""

    row: Row
    key: str  # the metric plotted, "val/acc"
    x_name: str  # STEP or EPOCH
    x: list[float]
    mean: list[float]
    low: list[float]  # min over seeds
    high: list[float]  # max over seeds
    n_runs: int


@dataclass
class Curves:
    """What ``learning_curves`` drew and what it left out."""

    curves: list[Curve] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    no_log: list[Path] = field(default_factory=list)  # run dirs without a CSV log
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (CSV, reason)
    notes: list[str] = field(default_factory=list)  # per-cell remarks


def val_key(row: Row) -> str | None:
    """The key of the row's primary metric at the validation stage; None if it has none."""
    metric = row.task.primary
    return f"val/{metric.name}" if "val" in metric.stages else None


def read_log(path: Path, key: str) -> dict[str, dict[float, float]]:
    """``{x column: {x: value}}`` of ``key`` in a Lightning CSV log, for each of ``step`` and
    ``epoch`` the file has; a later line for the same x wins (a resumed run logs it again).
    ``UnreadableLog`` when the file cannot be read or parsed, or has neither x column."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            lines, header = list(reader), reader.fieldnames
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UnreadableLog(f"{type(e).__name__}: {e}") from e
    if not header:
        raise UnreadableLog("empty file")
    columns = [c for c in (STEP, EPOCH) if c in header]
    if not columns:
        raise UnreadableLog(f"no {STEP} or {EPOCH} column (header: {', '.join(header)})")
    series: dict[str, dict[float, float]] = {c: {} for c in columns}
    for n, line in enumerate(lines, start=2):  # line 1 is the header
        if None in line:
            raise UnreadableLog(f"line {n} has more fields than the header")
        raw = line.get(key)
        if raw in (None, ""):  # a line of other metrics (train loss, test)
            continue
        try:
            value = float(raw)
            for c in columns:
                series[c][float(line[c])] = value
        except (TypeError, ValueError):
            raise UnreadableLog(f"line {n}: a non-number in {key} or {'/'.join(columns)}") from None
    return series


def aggregate(series: Sequence[dict[float, float]]) -> tuple[list[float], ...]:
    """``(x, mean, low, high)``: on the x values every series has, the mean, min and max over
    series."""
    shared = sorted(set.intersection(*(set(s) for s in series))) if series else []
    ys = [[s[x] for s in series] for x in shared]
    return shared, [statistics.fmean(y) for y in ys], [min(y) for y in ys], [max(y) for y in ys]


def _line_name(row: Row) -> str:
    """The variant, with the row's extra columns (``--by`` values) where it has any."""
    labels = ", ".join(f"{k}={label_text(v)}" for k, v in row.labels.items())
    return f"{row.variant} ({labels})" if labels else row.variant


def learning_curves(rows: Sequence[Row], out_dir: Path) -> Curves:
    """Read every row's run logs and draw one figure per dataset x backbone into ``out_dir``."""
    out = Curves()
    logs: dict[int, list[dict[str, dict[float, float]]]] = {}  # id(row) -> its runs' series
    for row in rows:
        key = val_key(row)
        if key is None or not row.run_dirs:
            continue
        for run_dir in row.run_dirs:
            path = run_dir / METRICS_CSV
            if not path.is_file():
                out.no_log.append(run_dir)
                continue
            try:
                series = read_log(path, key)
            except UnreadableLog as e:
                out.unreadable.append((path, str(e)))
                continue
            if any(series.values()):
                logs.setdefault(id(row), []).append(series)
            else:
                out.unreadable.append((path, f"no {key} logged (did validation run?)"))
    for dataset, backbone in sorted({(r.dataset, r.backbone) for r in rows}):
        here = [r for r in rows if (r.dataset, r.backbone) == (dataset, backbone) and id(r) in logs]
        if not here:
            continue
        # One x axis per figure: step unless some log lacks it (every Lightning log has both).
        x_name = STEP if all(STEP in s for r in here for s in logs[id(r)]) else EPOCH
        curves = []
        for row in here:
            runs = [s[x_name] for s in logs[id(row)] if s.get(x_name)]
            x, mean, low, high = aggregate(runs)
            if any(len(s) != len(x) for s in runs):
                out.notes.append(
                    f"{dataset}/{backbone} {_line_name(row)}: its seeds validated at different "
                    f"{x_name}s; drawn at the {len(x)} they share."
                )
            if x:
                curves.append(Curve(row, val_key(row), x_name, x, mean, low, high, len(runs)))
        if curves:
            out.curves += curves
            out.files.append(plot_curves(curves, rows, out_dir / _file_name(dataset, backbone)))
    return out


def _file_name(dataset: str, backbone: str) -> str:
    return f"{FILE_PREFIX}{safe_filename(dataset)}_{safe_filename(backbone)}.png"


def plot_curves(curves: Sequence[Curve], rows: Sequence[Row], path: Path) -> Path:
    """One figure: each curve's mean as a line and its min–max band; colours by variant over all
    ``rows`` (as the report's other plots)."""
    colors = variant_colors(rows)
    fig, axes = new_figure(cell=(5.0, 3.6))
    ax = axes[0, 0]
    for c in curves:
        metric = c.row.task.primary
        scale, color = metric_scale(metric), colors[c.row.variant]
        ax.plot(c.x, [scale * y for y in c.mean], color=color, marker=".", label=_line_name(c.row))
        if c.n_runs > 1:
            ax.fill_between(c.x, [scale * y for y in c.low], [scale * y for y in c.high],
                            color=color, alpha=0.2, linewidth=0)  # fmt: skip
    first = curves[0]
    metric = first.row.task.primary
    ax.set_xlabel(first.x_name)
    ax.set_ylabel(f"val {metric.label}" + (" (%)" if metric.percent else ""))
    ax.set_title(f"{first.row.dataset} / {first.row.backbone}")  # the band: min–max over seeds
    ax.grid(alpha=0.3)
    legend_beside(fig)
    return save_figure(fig, path)


def to_markdown(curves: Curves, rel) -> list[str]:
    """The report's learning-curve section (its figures are listed with the others); ``rel``
    turns a path into the text shown."""
    parts = ["", "## Learning curves", ""]
    parts.append(
        "Each cell's primary metric on the validation split against the training step at which "
        "validation ran, from each run's CSV log: the mean over seeds (line) and its min–max band, "
        "one figure per dataset and backbone (curves_*.png)."
        if curves.files
        else "None drawn: no run has a CSV log with its validation metric."
    )
    if curves.no_log:
        parts += ["", f"Left out, no CSV log ({len(curves.no_log)} runs; run with logger=csv or "
                  "logger=many to record one): " + ", ".join(rel(p) for p in curves.no_log) + "."]  # fmt: skip
    if curves.notes:
        parts += ["", *(f"- {note}" for note in curves.notes)]
    if curves.unreadable:
        parts += ["", f"Unreadable for curves ({len(curves.unreadable)}):", ""]
        parts += [f"- {rel(p)}: {reason}" for p, reason in curves.unreadable]
    return parts

