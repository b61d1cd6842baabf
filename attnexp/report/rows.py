"""The rows of a comparison: runs grouped by cell (``attnexp.config.cell``) and aggregated over
their completed seeds, sorted by the task's primary metric; each row tested against a baseline row
(``attnexp.report.stats``), and variants ranked across datasets.

One row per dataset x backbone x attention (x experiment, shown when any run names one): mean,
sample standard deviation and 95% t-interval of the mean over the completed seeds of every test
metric the runs' task declares (``attnexp.tasks.spec``), and the means of the cost columns.

With a baseline (``--baseline attention=none``), each row is compared with the baseline row of the
same dataset and backbone on the primary test metric: the difference with its 95% interval, a
p-value (paired by seed where the seeds match, Welch's otherwise), Holm-adjusted over every tested
row of the table, and a verdict (better / worse / indistinguishable at 5%, by the metric's declared
direction; "no test" below two seeds). Over several datasets a ranking gives each variant's mean
rank per backbone.

Standard deviation is the sample one (n - 1); over a single seed it and the interval are undefined
(NaN, shown as "–"), never a misleading 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnexp.config.budget import budget_flag
from attnexp.config.cell import Cell, InCell
from attnexp.report import stats
from attnexp.runs.record import (
    COMPLETED,
    COSTS,
    FAILED,
    RunRecord,
)
from attnexp.tasks.spec import MAX, Metric, Task

MD_FILE = "comparison.md"
CSV_FILE = "comparison.csv"
MISSING = "–"  # shown for an undefined value: std over one seed, a group with no completed run


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
        return cls(stats.mean(xs), stats.std(xs), *stats.t_interval(xs))


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
class Row(InCell):
    """One table row: a cell aggregated over its seeds."""

    cell: Cell
    task: Task
    n_seeds: int  # completed runs
    n_failed: int
    stats: dict[str, Stat]  # each test metric of the task ("test/acc") over the seeds
    costs: dict[str, float]  # each cost field's mean
    # Extra columns (attnexp.report.best_over): config values that split rows, the value a selection kept.
    labels: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[tuple[Any, float]]] = field(default_factory=dict)  # (seed, value)s
    versus: Versus | None = None  # set by compare_to_baseline
    run_dirs: list[Path] = field(default_factory=list)  # the completed runs' dirs
    budget: str | None = None  # match=params|flops: the runs' widest deviation (attnexp.config.budget)

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
    running: list[RunRecord]  # not finished: running, or interrupted (it can continue)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # sentences under the table's legend
    curves: Any = None  # attnexp.report.curves.Curves, set by build_report
    curves_markdown: list[str] = field(default_factory=list)  # their section of comparison.md


def reported_key(metric: Metric) -> str:
    """The key a report reads a metric from: its test stage (``test/acc``)."""
    return f"test/{metric.name}"


# --------------------------------------------------------------------------- aggregating


def summarize(runs: Iterable[RunRecord]) -> list[Row]:
    """Aggregate runs into rows, sorted by dataset, backbone, then the primary metric (best
    first)."""
    groups: dict[Cell, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(r.cell, []).append(r)
    rows = [cell_row(cell, members[0].task, members) for cell, members in groups.items()]
    return sorted(rows, key=sort_key)


def cell_row(cell: Cell, task: Task, members: Sequence[RunRecord]) -> Row:
    """One cell's row from its runs: the completed ones' statistics, the failed ones counted (no
    run at all: a row of no seeds, as a selection that kept nothing leaves)."""
    done = [r for r in members if r.status == COMPLETED]
    task = done[0].task if done else task
    values = {
        key: [r.value(key) for r in done]
        for key in [*map(reported_key, task.test_metrics), *(c.name for c in COSTS)]
    }
    return Row(
        cell=cell,
        task=task,
        n_seeds=len(done),
        n_failed=sum(r.status == FAILED for r in members),
        stats={key: Stat.of(values[key]) for key in map(reported_key, task.test_metrics)},
        costs={c.name: stats.mean(values[c.name]) for c in COSTS},
        budget=budget_flag([r.matched for r in done if r.matched]),
        samples={
            key: [(r.seed, r.value(key)) for r in done] for key in map(reported_key, task.test_metrics)
        },
        run_dirs=[r.path for r in done],
    )


def sort_key(row: Row):
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


BEST_SUFFIX = " (best)"  # ends the column naming the value a --best-over kept (attnexp.report.best_over)


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


