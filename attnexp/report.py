"""The comparison report: every ``results.json`` under one or more sweep dirs -> one table + plots.

One row per attention x backbone x dataset (x experiment, shown when any run names one): mean and
sample standard deviation over the completed seeds of every test metric the runs' task declares
(``attnexp.results``), and the means of the cost columns; rows are sorted by the task's primary
metric, best first. Runs of different tasks share one table: its metric columns are the union, and
a cell a row's task lacks shows "–". Written as ``comparison.md``, ``comparison.csv`` and PNG plots,
and printed as a table.

Standard deviation is the sample one (n - 1); over a single seed it is undefined and shown as "–"
(empty in the CSV), never as a misleading 0. Failed runs count in ``failed`` and are listed with
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

from attnexp.plotting import new_figure, safe_filename, save_figure
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
    """Mean and sample std over a row's completed seeds; NaN where undefined."""

    mean: float
    std: float


UNDEFINED = Stat(math.nan, math.nan)


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
                stats={
                    key: Stat(_mean(values[key]), _std(values[key]))
                    for key in map(reported_key, task.test_metrics)
                },
                costs={c.name: _mean(values[c.name]) for c in COSTS},
            )
        )
    return sorted(rows, key=_sort_key)


def _sort_key(row: Row):
    key, metric = row.primary
    mean = row.stat(key).mean
    # Best first in the metric's direction; no result sorts last.
    rank = math.inf if math.isnan(mean) else -mean if metric.direction == MAX else mean
    return (row.dataset, row.backbone, rank, row.attention, row.experiment or "")


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


def _pm(stat: Stat, metric: Metric) -> str:
    if math.isnan(stat.mean):
        return MISSING
    scale, spec = (100.0, ".2f") if metric.percent else (1.0, ".4g")
    std = MISSING if math.isnan(stat.std) else format(scale * stat.std, spec)
    return f"{format(scale * stat.mean, spec)} ± {std}"


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
    columns += [(c.header, lambda r, c=c: _cost(r.costs[c.name], c)) for c in COSTS]
    return columns + [("seeds", lambda r: str(r.n_seeds)), ("failed", lambda r: str(r.n_failed))]


def table_data(rows: Sequence[Row]) -> tuple[list[str], list[list[Any]]]:
    """Rows as raw values (fractions, not percent; None where undefined): CSV and W&B share this.

    Columns: the identity, ``<stage>_<metric>_mean`` and ``_std`` for each test metric (e.g.
    ``test_acc_mean``), each cost field, ``n_seeds``, ``n_failed``."""

    def raw(x):
        if isinstance(x, float) and math.isnan(x):
            return None
        return int(x) if isinstance(x, float) and x.is_integer() else x  # 4000, not 4000.0

    keys = list(metric_columns(rows))
    labels = label_columns(rows)
    columns = [*IDENTITY, *labels]
    for key in keys:
        columns += [f"{key.replace('/', '_')}_mean", f"{key.replace('/', '_')}_std"]
    columns += [*(c.name for c in COSTS), "n_seeds", "n_failed"]
    data = [
        [
            *(getattr(r, name) for name in IDENTITY),
            *(r.labels.get(k) for k in labels),
            *(x for key in keys for x in (r.stat(key).mean, r.stat(key).std)),
            *(r.costs[c.name] for c in COSTS),
            r.n_seeds,
            r.n_failed,
        ]
        for r in rows
    ]
    return columns, [[raw(x) for x in line] for line in data]


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
        "Mean ± sample std over completed seeds (– where undefined: one seed, or none completed, "
        "or a metric the row's task does not log). Metrics on the test split, in percent where "
        "marked (%); " + "; ".join(f"{c.header}: {c.description}" for c in COSTS) + "."
        + "".join(f" {note}" for note in report.notes),
        "",
        _md_table([c[0] for c in cols], [[f(r) for _, f in cols] for r in report.rows]),
    ]
    pngs = [p for p in report.files if p.suffix == ".png"]
    if pngs:
        parts += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
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


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path, base)


def print_table(report: Report, file=None) -> None:
    """Print the table (and failure/unreadable counts) with rich."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file)
    if not console.is_terminal:  # a pipe or file: do not squeeze 13 columns into 80 characters
        console.width = 200
    cols = _display_columns(report.rows)
    table = Table(title="attnexp comparison (mean ± std over seeds)")
    for name, _ in cols:
        left = name in IDENTITY
        table.add_column(name, justify="left" if left else "right", no_wrap=True)
    for r in report.rows:
        table.add_row(*[f(r) for _, f in cols])
    console.print(table)
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


def plot_primary(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    """One figure per dataset: its task's primary test metric per variant (± std), grouped by
    backbone."""
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
            errs = [0.0 if math.isnan(s.std) else scale * s.std for _, s in pts]
            ax.errorbar(xs, ys, yerr=errs, fmt="o", capsize=3, color=colors[v], label=v)
        ax.set_xticks(range(len(backbones)), backbones)
        ax.set_xlim(-0.5, len(backbones) - 0.5)
        ax.set_ylabel(metric_label(metric))
        ax.set_title(f"{dataset}: mean ± std over seeds")
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
            err = 0.0 if math.isnan(s.std) else scale * s.std
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
) -> Report:
    """Read ``dirs``, write the Markdown, CSV and PNGs into ``out_dir`` (default: the first dir).
    ``by`` and ``best_over``: config keys that split rows and that each row is the best over
    (``attnexp.best_over``)."""
    from attnexp.best_over import best_over_note, check_keys, summarize_by
    from attnexp.zoology_figure import plot_width_figure

    if not dirs:
        raise ReportError("give at least one sweep dir")
    check_keys(by, best_over)
    runs, unreadable = load_runs(dirs)
    out = Path(out_dir if out_dir is not None else dirs[0])
    report = Report(
        rows=summarize_by([r for r in runs if r.status != RUNNING], by, best_over),
        failures=[r for r in runs if r.status == FAILED],
        unreadable=unreadable,
        running=[r for r in runs if r.status == RUNNING],
        notes=[best_over_note(best_over)] if best_over else [],
    )
    out.mkdir(parents=True, exist_ok=True)
    report.files = plot_all(report.rows, out) + plot_width_figure(report.rows, out)
    atomic_write_text(out / CSV_FILE, to_csv(report.rows))
    atomic_write_text(out / MD_FILE, to_markdown(report, out))
    report.files += [out / MD_FILE, out / CSV_FILE]
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
    args = parser.parse_args(argv)
    try:
        report = build_report(args.dirs, args.out, by=args.by, best_over=args.best_over)
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
