"""The comparison report: every ``results.json`` under one or more sweep dirs -> one table + plots.

One row per attention x backbone x dataset (x experiment, shown when any run names one): mean,
sample standard deviation and 95% t-interval of the mean over the completed seeds of every test
metric the runs' task declares (``attnexp.results``), and the means of the cost columns; rows are
sorted by the task's primary metric, best first.

With a baseline (``--baseline attention=none``), each row is compared with the baseline row of the
same dataset and backbone on the primary test metric (``attnexp.stats``): the difference with its
95% interval, a p-value (paired by seed where the seeds match, Welch's otherwise), Holm-adjusted
over every tested row of the table, and a verdict (better / worse / indistinguishable at 5%, by
the metric's declared direction; "no test" below two seeds). Over several datasets a ranking table
gives each variant's mean rank per backbone. Runs of different tasks share one table: its metric columns are the union, and
a cell a row's task lacks shows "–". Written as ``comparison.md``, ``comparison.csv``, PNG plots and
``comparison.html`` (the Markdown as one page, figures embedded: ``attnexp.report_html``),
and printed as a table.

Standard deviation is the sample one (n - 1); over a single seed it and the interval are undefined
and shown as "–" (empty in the CSV), never as a misleading 0. Failed runs count in ``failed`` and are listed with
their error; a ``results.json`` that cannot be read is listed as unreadable, without stopping the
report.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnexp import stats
from attnexp.budget import budget_flag
from attnexp.plotting import new_figure, safe_filename, save_figure
from attnexp.report_html import HTML_FILE, markdown_to_html
from attnexp.results import (
    COMPLETED,
    COSTS,
    FAILED,
    MAX,
    RESULTS_FILE,
    RUNNING,
    Cost,
    Metric,
    RunRecord,
    Task,
    UnreadableRecord,
    atomic_write_text,
    find_results,
    load_record,
)
from attnexp.terminal import quiet_dependencies

MD_FILE = "comparison.md"
CSV_FILE = "comparison.csv"
MISSING = "–"  # shown for an undefined value: std over one seed, a group with no completed run
IDENTITY = ("dataset", "backbone", "attention", "experiment")  # the columns naming a row


def variant_name(attention: str, experiment: str | None) -> str:
    """The attention name, with the experiment when there is one: the label in plots."""
    return f"{attention} [{experiment}]" if experiment else attention


class ReportError(Exception):
    """Input the report cannot work with; the message says which path and why."""


@dataclass(frozen=True)
class Unreadable:
    path: Path  # the results.json
    reason: str


@dataclass(frozen=True)
class Stat:
    """Mean, sample std and the 95% t-interval of the mean over a row's completed seeds; NaN where
    undefined."""

    mean: float
    std: float
    low: float = math.nan
    high: float = math.nan

    @classmethod
    def of(cls, xs: list[float]) -> Stat:
        return cls(_mean(xs), _std(xs), *stats.t_interval(xs))


UNDEFINED = Stat(math.nan, math.nan)

BASELINE = "baseline"  # the verdict shown on the baseline row itself
BASELINE_KEYS = ("attention", "experiment")  # what --baseline may select by (within a table)


@dataclass(frozen=True)
class Versus:
    """A row against the baseline row of its dataset and backbone, on the primary test metric."""

    baseline: str  # the baseline row's variant
    comparison: stats.Comparison | None  # None on the baseline row itself
    p_holm: float  # NaN without a test
    verdict: str  # stats.BETTER / WORSE / INDISTINGUISHABLE / NO_TEST, or BASELINE


@dataclass
class Row:
    """One table row: a configuration aggregated over its seeds."""

    dataset: str
    backbone: str
    attention: str
    experiment: str | None
    task: Task
    n_seeds: int  # completed runs
    n_failed: int
    stats: dict[str, Stat]  # each test metric of the task ("test/acc") over the seeds
    costs: dict[str, float]  # each cost field's mean
    # Extra columns (attnexp.best_over): config values that split rows, the value a selection kept.
    labels: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[tuple[Any, float]]] = field(default_factory=dict)  # (seed, value)s
    versus: Versus | None = None  # set by compare_to_baseline
    run_dirs: list[Path] = field(default_factory=list)  # the completed runs' dirs
    budget: str | None = None  # match=params|flops: the runs' widest deviation (attnexp.budget)

    @property
    def variant(self) -> str:
        return variant_name(self.attention, self.experiment)

    def stat(self, key: str) -> Stat:
        return self.stats.get(key, UNDEFINED)

    @property
    def primary(self) -> tuple[str, Metric]:
        """The key and declaration of the metric this row is ranked and plotted by."""
        return reported_key(self.task.primary), self.task.primary


@dataclass
class Report:
    rows: list[Row]
    failures: list[RunRecord]
    unreadable: list[Unreadable]
    running: list[RunRecord]
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # sentences under the table's legend
    curves: Any = None  # attnexp.curves.Curves, set by build_report


def reported_key(metric: Metric) -> str:
    """The key a report reads a metric from: its test stage (``test/acc``)."""
    return f"test/{metric.name}"


# --------------------------------------------------------------------------- reading


def load_runs(dirs: Iterable[str | os.PathLike]) -> tuple[list[RunRecord], list[Unreadable]]:
    """Read every ``results.json`` under ``dirs``; unreadable files are returned, not raised."""
    runs, unreadable, seen = [], [], set()
    for d in map(Path, dirs):
        if not d.exists():
            raise ReportError(f"sweep dir {d} does not exist")
        if not d.is_dir():
            raise ReportError(f"{d} is not a directory (expected a sweep dir)")
        files = find_results(d)
        if not files:
            raise ReportError(f"no {RESULTS_FILE} found under {d}")
        for f in files:
            if f.resolve() in seen:  # overlapping dirs (a sweep and one of its runs): count once
                continue
            seen.add(f.resolve())
            try:
                runs.append(load_record(f))
            except UnreadableRecord as e:
                unreadable.append(Unreadable(f, str(e)))
    return runs, unreadable


# --------------------------------------------------------------------------- aggregating


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.fmean(xs) if xs else math.nan


def _std(xs: list[float]) -> float:
    """Sample standard deviation; NaN (shown "–") below two values."""
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.stdev(xs) if len(xs) >= 2 else math.nan


def summarize(runs: Iterable[RunRecord]) -> list[Row]:
    """Aggregate runs into rows, sorted by dataset, backbone, then the primary metric (best
    first)."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault((r.dataset, r.backbone, r.attention, r.experiment), []).append(r)
    rows = []
    for (dataset, backbone, attention, experiment), members in groups.items():
        done = [r for r in members if r.status == COMPLETED]
        task = (done or members)[0].task
        values = {
            key: [r.value(key) for r in done]
            for key in [*map(reported_key, task.test_metrics), *(c.name for c in COSTS)]
        }
        rows.append(
            Row(
                dataset=dataset,
                backbone=backbone,
                attention=attention,
                experiment=experiment,
                task=task,
                n_seeds=len(done),
                n_failed=sum(r.status == FAILED for r in members),
                stats={key: Stat.of(values[key]) for key in map(reported_key, task.test_metrics)},
                costs={c.name: _mean(values[c.name]) for c in COSTS},
                budget=budget_flag([r.matched for r in done if r.matched]),
                samples={
                    key: [(r.seed, r.value(key)) for r in done]
                    for key in map(reported_key, task.test_metrics)
                },
                run_dirs=[r.path for r in done],
            )
        )
    return sorted(rows, key=_sort_key)


def _sort_key(row: Row):
    key, metric = row.primary
    mean = row.stat(key).mean
    # Best first in the metric's direction; no result sorts last.
    rank = math.inf if math.isnan(mean) else -mean if metric.direction == MAX else mean
    return (row.dataset, row.backbone, rank, row.attention, row.experiment or "")


# --------------------------------------------------------------------------- baseline and ranks


def parse_baseline(spec: str) -> dict[str, str]:
    """``"attention=none"`` (or ``"attention=mha,experiment=small"``) -> the choices a baseline
    row has; a ReportError names a bad key and what is allowed."""
    selector = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise ReportError(f"--baseline must be KEY=VALUE (e.g. attention=none), got {spec!r}")
        if key not in BASELINE_KEYS:
            raise ReportError(
                f"--baseline key {key!r} is not allowed: one of {', '.join(BASELINE_KEYS)} (a "
                "row is compared with the baseline of its own dataset and backbone)"
            )
        selector[key] = value
    return selector


def compare_to_baseline(rows: Sequence[Row], baseline: str) -> None:
    """Set each row's ``versus``: the comparison of its primary test metric with the row matching
    ``baseline`` in the same dataset and backbone, Holm-adjusted over every tested row of the
    table. Rows of a dataset and backbone without a baseline row get none. A ReportError when no
    row anywhere matches, or when two rows of one table do."""
    selector = parse_baseline(baseline)

    def is_baseline(r: Row) -> bool:
        return all((getattr(r, k) or "") == v for k, v in selector.items())

    tables: dict[tuple, list[Row]] = {}
    for r in rows:  # rows split by --by values are tables of their own
        tables.setdefault((r.dataset, r.backbone, split_labels(r)), []).append(r)
    pending: list[tuple[Row, Row, stats.Comparison]] = []
    for (dataset, backbone, _), members in tables.items():
        found = [r for r in members if is_baseline(r)]
        if len(found) > 1:
            raise ReportError(
                f"--baseline {baseline} matches {len(found)} rows of {dataset}/{backbone} "
                f"({', '.join(r.variant for r in found)}): add experiment=... to pick one"
            )
        if not found:
            continue
        (base,) = found
        key, _ = base.primary
        for r in members:
            if r is not base and r.primary == base.primary:
                pending.append((r, base, stats.compare(r.samples[key], base.samples[key])))
        base.versus = Versus(base.variant, None, math.nan, BASELINE)
    if not any(r.versus for r in rows):
        seen = {k: sorted({getattr(r, k) or MISSING for r in rows}) for k in selector}
        raise ReportError(
            f"--baseline {baseline} matches no row; "
            + "; ".join(f"{k} values: {', '.join(v)}" for k, v in seen.items())
        )
    adjusted = stats.holm([c.p for _, _, c in pending])
    for (r, base, c), p in zip(pending, adjusted, strict=True):
        verdict = stats.verdict(c, p, r.primary[1].direction)
        r.versus = Versus(base.variant, c, p, verdict)


@dataclass(frozen=True)
class RankRow:
    backbone: str
    variant: str
    ranks: stats.RankSummary


BEST_SUFFIX = " (best)"  # ends the column naming the value a --best-over kept (attnexp.best_over)


def split_labels(row: Row) -> tuple[tuple[str, str], ...]:
    """The ``--by`` values that split ``row`` from its variant's other rows (not the value a
    ``--best-over`` kept, which differs within a comparison by design)."""
    return tuple((k, str(v)) for k, v in sorted(row.labels.items()) if not k.endswith(BEST_SUFFIX))


def rank_across_datasets(rows: Sequence[Row]) -> list[RankRow]:
    """Per backbone, each variant's rank by the primary test metric (1 = best, in its declared
    direction) in each dataset, summarised over datasets; empty below two datasets, and without
    the backbones where no variant is ranked in two of them (rows split by a ``--by`` value that
    also names the dataset, as Zoology's sequence lengths do: nothing to summarise)."""
    done = [r for r in rows if r.n_seeds]
    if len({r.dataset for r in done}) < 2:
        return []
    out = []
    for backbone in sorted({r.backbone for r in done}):
        tables = []
        for dataset in sorted({r.dataset for r in done if r.backbone == backbone}):
            here = [r for r in done if (r.dataset, r.backbone) == (dataset, backbone)]
            key, metric = here[0].primary
            # A variant split by --by values is ranked once per split, not overwritten.
            means = {_ranked_name(r): r.stat(key).mean for r in here}
            tables.append((means, metric.direction))
        if len({v for means, _ in tables for v in means}) == sum(len(m) for m, _ in tables):
            continue  # every variant ranked in one dataset only
        summary = stats.mean_ranks(tables)
        out += [
            RankRow(backbone, v, summary[v])
            for v in sorted(summary, key=lambda v: (summary[v].mean, v))
        ]
    return out


def _ranked_name(row: Row) -> str:
    split = split_labels(row)
    return row.variant + (f" ({', '.join(f'{k}={v}' for k, v in split)})" if split else "")


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


def _scale(metric: Metric) -> float:
    return 100.0 if metric.percent else 1.0


def _spec(metric: Metric) -> str:
    return ".2f" if metric.percent else ".4g"


def _interval(low: float, high: float, metric: Metric, sign: str = "") -> str:
    """`` [80.12, 82.40]`` in the metric's scale; empty where undefined."""
    if math.isnan(low):
        return ""
    scale, spec = _scale(metric), sign + _spec(metric)
    return f" [{format(scale * low, spec)}, {format(scale * high, spec)}]"


def _pm(stat: Stat, metric: Metric) -> str:
    """``mean ± std [95% interval]``."""
    if math.isnan(stat.mean):
        return MISSING
    scale, spec = _scale(metric), _spec(metric)
    std = MISSING if math.isnan(stat.std) else format(scale * stat.std, spec)
    return f"{format(scale * stat.mean, spec)} ± {std}{_interval(stat.low, stat.high, metric)}"


def _delta(r: Row) -> str:
    """The difference to the baseline with its 95% interval, in the metric's scale."""
    c = r.versus.comparison if r.versus else None
    if c is None or math.isnan(c.diff):
        return MISSING
    metric = r.primary[1]
    return format(_scale(metric) * c.diff, "+" + _spec(metric)) + _interval(
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
        for name in IDENTITY
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
    columns += [(c.header, lambda r, c=c: _cost(r.costs[c.name], c)) for c in COSTS]
    if any(r.budget for r in rows):
        columns += [("budget", lambda r: r.budget or MISSING)]
    return columns + [("seeds", lambda r: str(r.n_seeds)), ("failed", lambda r: str(r.n_failed))]


def table_data(rows: Sequence[Row]) -> tuple[list[str], list[list[Any]]]:
    """Rows as raw values (fractions, not percent; None where undefined): CSV and W&B share this.

    Columns: the identity; ``<stage>_<metric>_mean``, ``_std``, ``_ci_low`` and ``_ci_high`` (the
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
    columns = [*IDENTITY, *labels]
    for key in keys:
        columns += [f"{key.replace('/', '_')}_{part}" for part in STAT_PARTS]
    columns += [*(VERSUS_COLUMNS if versus else ()), *(c.name for c in COSTS), "n_seeds", "n_failed"]
    data = [
        [
            *(getattr(r, name) for name in IDENTITY),
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


def _md_table(header: list[str], lines: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def to_markdown(report: Report, out_dir: Path) -> str:
    cols = _display_columns(report.rows)
    parts = [
        "# Comparison",
        "",
        "Mean ± sample std [95% t-interval of the mean] over completed seeds (– where "
        "undefined: one seed, or none completed, or a metric the row's task does not log). "
        "Metrics on the test split, in percent where marked (%); "
        + "; ".join(f"{c.header}: {c.description}" for c in COSTS)
        + "."
        + "".join(f" {note}" for note in report.notes),
    ]
    if any(r.versus for r in report.rows):
        parts += ["", VERSUS_LEGEND]
    parts += ["", _md_table([c[0] for c in cols], [[f(r) for _, f in cols] for r in report.rows])]
    ranking = rank_across_datasets(report.rows)
    if ranking:
        parts += ["", "## Ranking across datasets", "", RANKING_LEGEND, ""]
        parts.append(_md_table(list(RANKING_HEADER), _ranking_lines(ranking)))
    pngs = [p for p in report.files if p.suffix == ".png"]
    if pngs:
        parts += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
    if report.curves is not None:
        from attnexp.curves import to_markdown as curves_markdown

        parts += curves_markdown(report.curves, lambda p: _rel(p, out_dir))
    parts += ["", f"## Failures ({len(report.failures)})", ""]
    if report.failures:
        parts.append(
            _md_table(
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
            _md_table(
                ["file", "reason"], [[_rel(u.path, out_dir), u.reason] for u in report.unreadable]
            )
        )
    if report.running:
        parts += ["", f"## Still running ({len(report.running)}, not counted)", ""]
        parts += [f"- {_rel(r.path, out_dir)}" for r in report.running]
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
        left = name in IDENTITY or name == "verdict"
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
        console.print(f"{len(report.running)} run(s) still running, not counted")


# --------------------------------------------------------------------------- plots


def _colors(rows: Sequence[Row]) -> dict[str, Any]:
    """One colour per variant, the same in every figure."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len({r.variant for r in rows}) <= 10 else "tab20"]
    return {v: cmap(i % cmap.N) for i, v in enumerate(sorted({r.variant for r in rows}))}


_MARKERS = "osD^vP*Xh<>"


def _legend_beside(fig: Any) -> None:
    """One legend for the whole figure, to the right of the axes, widening the figure for it: a
    legend inside the axes hides points once a study has more than a few variants."""
    entries: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    longest = max(map(len, entries), default=0)
    fig.set_figwidth(fig.get_figwidth() + 0.6 + 0.065 * longest)
    fig.legend(entries.values(), entries.keys(), loc="outside right upper", fontsize="small")


def _half_width(s: Stat) -> float:
    """The error bar: half the 95% interval (symmetric for a t-interval); none below 2 seeds."""
    return 0.0 if math.isnan(s.low) else (s.high - s.low) / 2


def plot_primary(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    """One figure per dataset: its task's primary test metric per variant (error bars: the 95%
    interval of the mean), grouped by backbone."""
    colors = _colors(rows)
    paths = []
    for dataset in sorted({r.dataset for r in rows}):
        sub = [r for r in rows if r.dataset == dataset and r.n_seeds]
        if not sub:
            continue
        key, metric = sub[0].primary
        scale = _scale(metric)
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
            errs = [scale * _half_width(s) for _, s in pts]
            ax.errorbar(xs, ys, yerr=errs, fmt="o", capsize=3, color=colors[v], label=v)
        ax.set_xticks(range(len(backbones)), backbones)
        ax.set_xlim(-0.5, len(backbones) - 0.5)
        ax.set_ylabel(metric_label(metric))
        ax.set_title(f"{dataset}: mean and 95% interval over seeds")
        ax.grid(axis="y", alpha=0.3)
        _legend_beside(fig)
        paths.append(save_figure(fig, out_dir / f"primary_{safe_filename(dataset)}.png"))
    return paths


def plot_primary_vs(rows: Sequence[Row], out_dir: Path, cost: Cost) -> Path | None:
    """Each dataset's primary test metric against ``cost``, one subplot per dataset; colour =
    variant, marker = backbone, log x axis (costs span orders of magnitude)."""
    sub = [r for r in rows if r.n_seeds and not math.isnan(r.costs[cost.name])]
    if not sub:
        return None
    colors = _colors(rows)
    backbones = sorted({r.backbone for r in rows})
    datasets = sorted({r.dataset for r in sub})
    fig, axes = new_figure(1, len(datasets), cell=(4.5, 3.6))
    for ax, dataset in zip(axes[0], datasets, strict=True):
        here = [r for r in sub if r.dataset == dataset]
        key, metric = here[0].primary
        scale = _scale(metric)
        for r in here:
            s = r.stat(key)
            err = scale * _half_width(s)
            ax.errorbar(r.costs[cost.name], scale * s.mean, yerr=err, capsize=3, color=colors[r.variant],
                        marker=_MARKERS[backbones.index(r.backbone) % len(_MARKERS)], ls="none",
                        label=f"{r.variant} / {r.backbone}")  # fmt: skip
        if all(r.costs[cost.name] > 0 for r in here):
            ax.set_xscale("log")
        ax.set_xlabel(cost.description)
        ax.set_ylabel(metric_label(metric))
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
    _legend_beside(fig)
    return save_figure(fig, out_dir / f"primary_vs_{cost.name}.png")


def plot_all(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    paths = plot_primary(rows, out_dir)
    for cost in COSTS:
        p = plot_primary_vs(rows, out_dir, cost) if cost.plot else None
        if p is not None:
            paths.append(p)
    return paths


# --------------------------------------------------------------------------- W&B


def log_to_wandb(
    rows: Sequence[Row],
    project: str,
    group: str | None = None,
    *,
    mode: str = "offline",
    dir: str | os.PathLike | None = None,
) -> None:
    """Log the table as a W&B Table in a ``compare`` run (offline by default; never prompts)."""
    import wandb  # lazily: the report works without a W&B set-up

    columns, data = table_data(rows)
    run = wandb.init(project=project, group=group, job_type="compare", mode=mode,
                     dir=None if dir is None else str(dir), settings=wandb.Settings(silent=True))  # fmt: skip
    try:
        run.log({"comparison": wandb.Table(columns=columns, data=data)})
    finally:
        run.finish()


# --------------------------------------------------------------------------- entry points


def build_report(
    dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    *,
    by: Sequence[str] = (),
    best_over: str | None = None,
    baseline: str | None = None,
) -> Report:
    """Read ``dirs``, write the Markdown, CSV and PNGs into ``out_dir`` (default: the first dir).
    ``by`` and ``best_over``: config keys that split rows and that each row is the best over
    (``attnexp.best_over``); with ``baseline`` (``"attention=none"``), compare every row with it
    (``compare_to_baseline``)."""
    from attnexp.best_over import best_over_note, check_keys, summarize_by
    from attnexp.curves import learning_curves
    from attnexp.zoology_figure import plot_width_figure

    if not dirs:
        raise ReportError("give at least one sweep dir")
    check_keys(by, best_over)
    if baseline is not None:
        parse_baseline(baseline)  # a bad key fails before any file is read
    runs, unreadable = load_runs(dirs)
    out = Path(out_dir if out_dir is not None else dirs[0])
    report = Report(
        rows=summarize_by([r for r in runs if r.status != RUNNING], by, best_over),
        failures=[r for r in runs if r.status == FAILED],
        unreadable=unreadable,
        running=[r for r in runs if r.status == RUNNING],
        notes=[best_over_note(best_over)] if best_over else [],
    )
    if baseline is not None:
        compare_to_baseline(report.rows, baseline)
    out.mkdir(parents=True, exist_ok=True)
    report.files = plot_all(report.rows, out) + plot_width_figure(report.rows, out)
    report.curves = learning_curves(report.rows, out)
    report.files += report.curves.files
    atomic_write_text(out / CSV_FILE, to_csv(report.rows))
    markdown = to_markdown(report, out)
    atomic_write_text(out / MD_FILE, markdown)
    atomic_write_text(out / HTML_FILE, markdown_to_html(markdown, out))
    report.files += [out / MD_FILE, out / HTML_FILE, out / CSV_FILE]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    quiet_dependencies()
    parser = argparse.ArgumentParser(
        prog="attnexp-compare",
        description="Compare the runs of one or more sweeps: writes comparison.md, "
        "comparison.csv and PNG plots, and prints the table.",
    )
    parser.add_argument(
        "dirs", nargs="+", help="sweep dirs (searched recursively for results.json)"
    )
    parser.add_argument("--out", help="where to write the report (default: the first sweep dir)")
    parser.add_argument(
        "--by", action="append", default=[], metavar="KEY",
        help="also split rows by this config key of each run's .hydra/config.yaml, shown as a "
        "column (repeatable: --by backbone.dim --by dataset.seq_len)",
    )  # fmt: skip
    parser.add_argument(
        "--best-over", metavar="KEY",
        help="within each row keep only the runs of the value of this swept config key with the "
        "best validation objective, and name it (e.g. optim.optimizer.lr)",
    )  # fmt: skip
    parser.add_argument("--wandb-project", help="also log the table to this W&B project")
    parser.add_argument("--wandb-group", help="W&B group of that run")
    parser.add_argument("--wandb-mode", default="offline", choices=["offline", "online"])
    parser.add_argument(
        "--baseline",
        metavar="KEY=VALUE",
        help="compare every row with this row of its dataset and backbone, e.g. attention=none "
        f"(keys: {', '.join(BASELINE_KEYS)})",
    )
    args = parser.parse_args(argv)
    try:
        report = build_report(
            args.dirs, args.out, by=args.by, best_over=args.best_over, baseline=args.baseline
        )
    except ReportError as e:
        print(f"attnexp-compare: error: {e}", file=sys.stderr)
        return 2
    print_table(report)
    print(f"wrote {', '.join(str(p) for p in report.files)}")
    if args.wandb_project:
        log_to_wandb(report.rows, args.wandb_project, args.wandb_group, mode=args.wandb_mode)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
