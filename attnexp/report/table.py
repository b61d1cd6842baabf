"""The comparison as text: the table's columns (one list for Markdown, the terminal, CSV and W&B,
so they cannot disagree), ``comparison.md`` and ``comparison.csv``.

Runs of different tasks share one table: its metric columns are the union, and a cell a row's
task lacks shows "–". Failed runs are listed with their error, unreadable ``results.json`` files
with the reason.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from attnexp.config.cell import CELL_GROUPS
from attnexp.report import stats
from attnexp.report.rows import (
    MISSING,
    RankRow,
    Report,
    Row,
    Stat,
    rank_across_datasets,
    reported_key,
    variant_name,
)
from attnexp.runs.record import (
    COSTS,
    Cost,
)
from attnexp.tasks.spec import Metric
from attnexp.util.markdown import md_table

# --------------------------------------------------------------------------- formatting


def metric_columns(rows: Sequence[Row]) -> dict[str, Metric]:
    """The test metrics of every row's task, by key, in declaration order (first task first)."""
    columns: dict[str, Metric] = {}
    for r in rows:
        for m in r.task.test_metrics:
            columns.setdefault(reported_key(m), m)
    return columns


def metric_label(metric: Metric) -> str:
    """``test acc (%)``: a metric's column header and plot axis."""
    return f"test {metric.label}" + (" (%)" if metric.percent else "")


def metric_scale(metric: Metric) -> float:
    return 100.0 if metric.percent else 1.0


def _spec(metric: Metric) -> str:
    return ".2f" if metric.percent else ".4g"


def _interval(low: float, high: float, metric: Metric, sign: str = "") -> str:
    """`` [80.12, 82.40]`` in the metric's scale; empty where undefined."""
    if math.isnan(low):
        return ""
    scale, spec = metric_scale(metric), sign + _spec(metric)
    return f" [{format(scale * low, spec)}, {format(scale * high, spec)}]"


def _pm(stat: Stat, metric: Metric) -> str:
    """``mean ± std [95% interval]``."""
    if math.isnan(stat.mean):
        return MISSING
    scale, spec = metric_scale(metric), _spec(metric)
    std = MISSING if math.isnan(stat.std) else format(scale * stat.std, spec)
    return f"{format(scale * stat.mean, spec)} ± {std}{_interval(stat.low, stat.high, metric)}"


def _delta(r: Row) -> str:
    """The difference to the baseline with its 95% interval, in the metric's scale."""
    c = r.versus.comparison if r.versus else None
    if c is None or math.isnan(c.diff):
        return MISSING
    metric = r.primary[1]
    return format(metric_scale(metric) * c.diff, "+" + _spec(metric)) + _interval(
        c.low, c.high, metric, sign="+"
    )


def _p(r: Row) -> str:
    c = r.versus.comparison if r.versus else None
    if c is None or c.test == stats.NO_TEST:
        return MISSING
    return f"{r.versus.p_holm:.3g} ({c.test})"


def label_columns(rows: Sequence[Row]) -> list[str]:
    """Every row's extra columns (``Row.labels``), first seen first."""
    return list(dict.fromkeys(k for r in rows for k in r.labels))


def label_text(value: Any) -> str:
    """A config value as a cell: a float to 4 significant digits (0.0004642), the rest as is."""
    if value is None:
        return MISSING
    return format(value, ".4g") if isinstance(value, float) else str(value)


def _si(x: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def _cost(x: float, cost: Cost) -> str:
    if math.isnan(x):
        return MISSING
    return _si(x) if cost.format == "si" else format(x, cost.format)


# The table's columns, in order: (header, how to format a row). One list serves Markdown and the
# terminal, so they cannot disagree.
Column = tuple[str, Callable[[Row], str]]


def _display_columns(rows: Sequence[Row]) -> list[Column]:
    """Identity (without ``experiment`` when no row has one), metrics, costs and counts."""
    with_experiment = any(r.experiment for r in rows)
    columns: list[Column] = [
        (name, lambda r, name=name: getattr(r, name) or MISSING)
        for name in CELL_GROUPS
        if with_experiment or name != "experiment"
    ]
    columns += [(k, lambda r, k=k: label_text(r.labels.get(k))) for k in label_columns(rows)]
    columns += [
        (metric_label(m), lambda r, key=key, m=m: _pm(r.stat(key), m))
        for key, m in metric_columns(rows).items()
    ]
    if any(r.versus for r in rows):
        columns += [
            ("Δ vs baseline", _delta),
            ("p (Holm)", _p),
            ("verdict", lambda r: r.versus.verdict if r.versus else MISSING),
        ]
    columns += [(c.header, lambda r, c=c: _cost(r.costs[c.name], c)) for c in shown_costs(rows)]
    if any(r.budget for r in rows):
        columns += [("budget", lambda r: r.budget or MISSING)]
    return columns + [("seeds", lambda r: str(r.n_seeds)), ("failed", lambda r: str(r.n_failed))]


def shown_costs(rows: Sequence[Row]) -> list[Cost]:
    """The costs the report shows: all but an ``optional`` one that no row has."""
    return [c for c in COSTS if not c.optional or any(not math.isnan(r.costs[c.name]) for r in rows)]


def table_data(rows: Sequence[Row]) -> tuple[list[str], list[list[Any]]]:
    """Rows as raw values (fractions, not percent; None where undefined): CSV and W&B share this.

    Columns: the identity; ``<stage>_<metric>stats.mean``, ``stats.std``, ``_ci_low`` and ``_ci_high`` (the
    95% t-interval of the mean) for each test metric (e.g. ``test_acc_mean``); with a baseline,
    ``VERSUS_COLUMNS`` (the primary metric's difference to it, unscaled); each cost field;
    ``n_seeds``, ``n_failed``."""

    def raw(x):
        if isinstance(x, float) and math.isnan(x):
            return None
        return int(x) if isinstance(x, float) and x.is_integer() else x  # 4000, not 4000.0

    keys = list(metric_columns(rows))
    labels = label_columns(rows)
    versus = any(r.versus for r in rows)
    columns = [*CELL_GROUPS, *labels]
    for key in keys:
        columns += [f"{key.replace('/', '_')}_{part}" for part in STAT_PARTS]
    columns += [*(VERSUS_COLUMNS if versus else ()), *(c.name for c in COSTS), "n_seeds", "n_failed"]
    data = [
        [
            *(getattr(r, name) for name in CELL_GROUPS),
            *(r.labels.get(k) for k in labels),
            *(getattr(r.stat(key), attr) for key in keys for attr in STAT_ATTRS),
            *(_versus_values(r) if versus else ()),
            *(r.costs[c.name] for c in COSTS),
            r.n_seeds,
            r.n_failed,
        ]
        for r in rows
    ]
    return columns, [[raw(x) for x in line] for line in data]


STAT_PARTS = ("mean", "std", "ci_low", "ci_high")  # CSV suffixes of a metric's Stat fields
STAT_ATTRS = ("mean", "std", "low", "high")
VERSUS_COLUMNS = ("baseline", "baseline_metric", "delta", "delta_ci_low", "delta_ci_high",
                  "test", "p", "p_holm", "verdict")  # fmt: skip


def _versus_values(r: Row) -> list[Any]:
    if r.versus is None:
        return [None] * len(VERSUS_COLUMNS)
    c = r.versus.comparison
    numbers = (c.diff, c.low, c.high, c.test, c.p, r.versus.p_holm) if c else (None,) * 6
    return [r.versus.baseline, r.primary[0], *numbers, r.versus.verdict]


def to_csv(rows: Sequence[Row]) -> str:
    columns, data = table_data(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([["" if x is None else x for x in line] for line in data])
    return buf.getvalue()


def to_markdown(report: Report, out_dir: Path) -> str:
    cols = _display_columns(report.rows)
    parts = [
        "# Comparison",
        "",
        "Mean ± sample std [95% t-interval of the mean] over completed seeds (– where "
        "undefined: one seed, or none completed, or a metric the row's task does not log). "
        "Metrics on the test split, in percent where marked (%); "
        + "; ".join(f"{c.header}: {c.description}" for c in shown_costs(report.rows))
        + "."
        + "".join(f" {note}" for note in report.notes),
    ]
    if any(r.versus for r in report.rows):
        parts += ["", VERSUS_LEGEND]
    parts += ["", md_table([c[0] for c in cols], [[f(r) for _, f in cols] for r in report.rows])]
    ranking = rank_across_datasets(report.rows)
    if ranking:
        parts += ["", "## Ranking across datasets", "", RANKING_LEGEND, ""]
        parts.append(md_table(list(RANKING_HEADER), _ranking_lines(ranking)))
    pngs = [p for p in report.files if p.suffix == ".png"]
    if pngs:
        parts += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
    parts += report.curves_markdown
    parts += ["", f"## Failures ({len(report.failures)})", ""]
    if report.failures:
        parts.append(
            md_table(
                ["run dir", "dataset", "backbone", "attention", "seed", "error"],
                [
                    [
                        _rel(r.path, out_dir),
                        r.dataset,
                        r.backbone,
                        variant_name(r.attention, r.experiment),
                        str(r.seed),
                        r.error or "(no error recorded)",
                    ]
                    for r in report.failures
                ],
            )  # fmt: skip
        )
    else:
        parts.append("None.")
    if report.unreadable:
        parts += ["", f"## Unreadable runs ({len(report.unreadable)})", ""]
        parts.append(
            md_table(
                ["file", "reason"], [[_rel(u.path, out_dir), u.reason] for u in report.unreadable]
            )
        )
    if report.running:
        parts += ["", f"## Not finished ({len(report.running)}, not counted)", ""]
        parts += [f"- {_rel(r.path, out_dir)}: {r.status}" for r in report.running]
    return "\n".join(parts) + "\n"


VERSUS_LEGEND = (
    "Δ vs baseline: the row's primary test metric minus the baseline row's of the same dataset "
    "and backbone [95% interval]; p: two-sided t-test, paired by seed where both rows ran the same "
    "seeds, Welch's otherwise, Holm-adjusted over every tested row of this table; verdict at 5% by "
    "the metric's direction (no test below two seeds)."
)
RANKING_LEGEND = (
    "Each variant's rank by the primary test metric (1 = best) in every dataset, per backbone: "
    "mean, sample std and range over the datasets it ran on; ties share their mean rank."
)
RANKING_HEADER = ("backbone", "variant", "mean rank", "rank std", "best–worst", "datasets")


def _ranking_lines(ranking: Sequence[RankRow]) -> list[list[str]]:
    return [
        [
            rr.backbone,
            rr.variant,
            f"{rr.ranks.mean:.2f}",
            MISSING if math.isnan(rr.ranks.std) else f"{rr.ranks.std:.2f}",
            f"{rr.ranks.best:g}–{rr.ranks.worst:g}",
            str(rr.ranks.n),
        ]
        for rr in ranking
    ]


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path, base)


def print_table(report: Report, file=None) -> None:
    """Print the table (and failure/unreadable counts) with rich."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file)
    cols = _display_columns(report.rows)
    table = Table(title="attnexp comparison (mean ± std [95% interval] over seeds)")
    for name, _ in cols:
        left = name in CELL_GROUPS or name == "verdict"
        table.add_column(name, justify="left" if left else "right", no_wrap=True)
    for r in report.rows:
        table.add_row(*[f(r) for _, f in cols])
    if not console.is_terminal:  # a pipe or file: as wide as the table, never squeezed into 80
        console.width = 10_000
        console.width = max(80, console.measure(table).maximum)
    console.print(table)
    ranking = rank_across_datasets(report.rows)
    if ranking:
        ranks = Table(title="ranking across datasets (1 = best)")
        for name in RANKING_HEADER:
            ranks.add_column(name, justify="left" if name in RANKING_HEADER[:2] else "right")
        for line in _ranking_lines(ranking):
            ranks.add_row(*line)
        console.print(ranks)
    for r in report.failures:
        console.print(f"[red]failed[/red] {r.path}: {r.error or '(no error recorded)'}")
    for u in report.unreadable:
        console.print(f"[yellow]unreadable[/yellow] {u.path}: {u.reason}")
    if report.running:
        console.print(f"{len(report.running)} run(s) not finished (running or interrupted), not counted")


