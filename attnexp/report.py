"""The comparison report: every ``results.json`` under one or more sweep dirs -> one table + plots.

One row per attention x backbone x dataset (x experiment, shown when any run names one): mean and
sample standard deviation over the completed seeds of test accuracy and F1, and the means of the
cost columns. Written as ``comparison.md``, ``comparison.csv`` and PNG plots, and printed as a table.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnexp.plotting import new_figure, safe_filename, save_figure
from attnexp.results import (
    COMPLETED,
    FAILED,
    RESULTS_FILE,
    RUNNING,
    atomic_write_text,
    find_results,
    read_results,
)
from attnexp.terminal import quiet_dependencies

MD_FILE = "comparison.md"
CSV_FILE = "comparison.csv"
MISSING = "–"  # shown for an undefined value: std over one seed, a group with no completed run

# Where the numbers come from in results.json: row name -> key in "metrics", and top-level keys.
_METRICS = {"acc": "test/acc", "f1": "test/f1"}
_COSTS = ("params", "attention_flops", "throughput", "peak_memory_mb", "wall_time_s")


def variant_name(attention: str, experiment: str | None) -> str:
    """The attention name, with the experiment when there is one: the label in plots."""
    return f"{attention} [{experiment}]" if experiment else attention


class ReportError(Exception):
    """Input the report cannot work with; the message says which path and why."""


@dataclass(frozen=True)
class Run:
    """One readable ``results.json``, flattened to what the report needs."""

    path: Path  # the run dir
    status: str
    attention: str
    backbone: str
    dataset: str
    seed: Any
    experiment: str | None
    error: str | None
    values: dict[str, float]  # acc, f1 and the cost columns; NaN where the file has none

    @property
    def variant(self) -> str:
        return variant_name(self.attention, self.experiment)


@dataclass(frozen=True)
class Unreadable:
    path: Path  # the results.json
    reason: str


@dataclass
class Row:
    """One table row: a configuration aggregated over its seeds."""

    dataset: str
    backbone: str
    attention: str
    experiment: str | None
    n_seeds: int  # completed runs
    n_failed: int
    acc_mean: float
    acc_std: float
    f1_mean: float
    f1_std: float
    params: float
    attention_flops: float
    throughput: float  # training samples/s
    peak_memory_mb: float
    wall_time_s: float

    @property
    def variant(self) -> str:
        return variant_name(self.attention, self.experiment)


@dataclass
class Report:
    rows: list[Row]
    failures: list[Run]
    unreadable: list[Unreadable]
    running: list[Run]
    files: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- reading


def load_runs(dirs: Iterable[str | os.PathLike]) -> tuple[list[Run], list[Unreadable]]:
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
                runs.append(_parse_run(f.parent, read_results(f)))
            except (OSError, ValueError, TypeError, KeyError) as e:
                unreadable.append(Unreadable(f, f"{type(e).__name__}: {e}"))
    return runs, unreadable


def _parse_run(run_dir: Path, data: Any) -> Run:
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    status = data.get("status")
    if status not in (COMPLETED, FAILED, RUNNING):
        raise ValueError(f"status must be one of {COMPLETED}/{FAILED}/{RUNNING}, got {status!r}")
    choices = data.get("choices")
    if not isinstance(choices, dict):
        raise ValueError("missing 'choices'")
    for key in ("attention", "backbone", "dataset"):
        if not choices.get(key):
            raise ValueError(f"missing choices.{key}")
    metrics = data.get("metrics") or {}
    if status == COMPLETED and _number(metrics.get("test/acc")) is None:
        raise ValueError("a completed run without a numeric metrics['test/acc']")
    values = {name: _number(metrics.get(key)) for name, key in _METRICS.items()}
    values.update({key: _number(data.get(key)) for key in _COSTS})
    return Run(
        path=run_dir,
        status=status,
        attention=str(choices["attention"]),
        backbone=str(choices["backbone"]),
        dataset=str(choices["dataset"]),
        seed=choices.get("seed"),
        experiment=choices.get("experiment") or None,
        error=data.get("error"),
        values={k: math.nan if v is None else v for k, v in values.items()},
    )


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


# --------------------------------------------------------------------------- aggregating


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.fmean(xs) if xs else math.nan


def _std(xs: list[float]) -> float:
    """Sample standard deviation; NaN (shown "–") below two values."""
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.stdev(xs) if len(xs) >= 2 else math.nan


def summarize(runs: Iterable[Run]) -> list[Row]:
    """Aggregate runs into rows, sorted by dataset, backbone, then test accuracy (best first)."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault((r.dataset, r.backbone, r.attention, r.experiment), []).append(r)
    rows = []
    for (dataset, backbone, attention, experiment), members in groups.items():
        done = [r for r in members if r.status == COMPLETED]

        def col(name, done=done):
            return [r.values[name] for r in done]

        rows.append(
            Row(
                dataset=dataset,
                backbone=backbone,
                attention=attention,
                experiment=experiment,
                n_seeds=len(done),
                n_failed=sum(r.status == FAILED for r in members),
                acc_mean=_mean(col("acc")),
                acc_std=_std(col("acc")),
                f1_mean=_mean(col("f1")),
                f1_std=_std(col("f1")),
                **{key: _mean(col(key)) for key in _COSTS},
            )
        )
    return sorted(rows, key=_sort_key)


def _sort_key(row: Row):
    acc = -row.acc_mean if not math.isnan(row.acc_mean) else math.inf  # no result sorts last
    return (row.dataset, row.backbone, acc, row.attention, row.experiment or "")


# --------------------------------------------------------------------------- formatting


# The table's columns, in order: (header, how to format a row). One list serves Markdown and the
# terminal, so they cannot disagree.
def _pct(mean: float, std: float) -> str:
    if math.isnan(mean):
        return MISSING
    return f"{100 * mean:.2f} ± " + (MISSING if math.isnan(std) else f"{100 * std:.2f}")


def _fmt(x: float, spec: str) -> str:
    return MISSING if math.isnan(x) else format(x, spec)


def _si(x: float) -> str:
    """1234567 -> '1.23M': FLOP counts span many orders of magnitude."""
    if math.isnan(x):
        return MISSING
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


_DISPLAY = [
    ("dataset", lambda r: r.dataset),
    ("backbone", lambda r: r.backbone),
    ("attention", lambda r: r.attention),
    ("experiment", lambda r: r.experiment or MISSING),
    ("test acc (%)", lambda r: _pct(r.acc_mean, r.acc_std)),
    ("test F1 (%)", lambda r: _pct(r.f1_mean, r.f1_std)),
    ("params", lambda r: _fmt(r.params, ",.0f")),
    ("attn FLOPs/sample", lambda r: _si(r.attention_flops)),
    ("train samples/s", lambda r: _fmt(r.throughput, ",.1f")),
    ("peak mem (MB)", lambda r: _fmt(r.peak_memory_mb, ",.1f")),
    ("wall time (s)", lambda r: _fmt(r.wall_time_s, ",.1f")),
    ("seeds", lambda r: str(r.n_seeds)),
    ("failed", lambda r: str(r.n_failed)),
]

CSV_COLUMNS = [
    "dataset", "backbone", "attention", "experiment",
    "test_acc_mean", "test_acc_std", "test_f1_mean", "test_f1_std",
    "params", "attention_flops", "throughput", "peak_memory_mb", "wall_time_s",
    "n_seeds", "n_failed",
]  # fmt: skip


def _display_columns(rows: Sequence[Row]):
    """The display columns, without ``experiment`` when no row has one."""
    with_experiment = any(r.experiment for r in rows)
    return [c for c in _DISPLAY if with_experiment or c[0] != "experiment"]


def table_data(rows: Sequence[Row]) -> tuple[list[str], list[list[Any]]]:
    """Rows as raw values (fractions, not percent; None where undefined): CSV and W&B share this."""

    def raw(x):
        if isinstance(x, float) and math.isnan(x):
            return None
        return int(x) if isinstance(x, float) and x.is_integer() else x  # 4000, not 4000.0

    data = [
        [
            r.dataset, r.backbone, r.attention, r.experiment,
            r.acc_mean, r.acc_std, r.f1_mean, r.f1_std,
            r.params, r.attention_flops, r.throughput, r.peak_memory_mb, r.wall_time_s,
            r.n_seeds, r.n_failed,
        ]
        for r in rows
    ]  # fmt: skip
    return list(CSV_COLUMNS), [[raw(x) for x in line] for line in data]


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
        "Mean ± sample std over completed seeds (– where undefined: one seed, or none completed). "
        "Accuracy and F1 on the test split in percent; params: trainable parameters; "
        "attn FLOPs/sample: analytic forward FLOPs of all attention slots for one sample; "
        "train samples/s: training throughput; peak mem: peak process (CPU) or CUDA memory.",
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
                        r.variant,
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
        left = name in ("dataset", "backbone", "attention", "experiment")
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


def plot_accuracy(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    """One figure per dataset: test accuracy per variant (± std), grouped by backbone."""
    colors = _colors(rows)
    paths = []
    for dataset in sorted({r.dataset for r in rows}):
        sub = [r for r in rows if r.dataset == dataset and r.n_seeds]
        if not sub:
            continue
        backbones = sorted({r.backbone for r in sub})
        variants = sorted({r.variant for r in sub})
        fig, axes = new_figure(
            cell=(max(4.0, 1.2 * len(backbones) * max(1, len(variants)) / 3), 3.6)
        )
        ax = axes[0, 0]
        width = 0.8 / len(variants)
        for i, v in enumerate(variants):
            pts = [(backbones.index(r.backbone), r) for r in sub if r.variant == v]
            xs = [x - 0.4 + width * (i + 0.5) for x, _ in pts]
            ys = [100 * r.acc_mean for _, r in pts]
            errs = [0.0 if math.isnan(r.acc_std) else 100 * r.acc_std for _, r in pts]
            ax.errorbar(xs, ys, yerr=errs, fmt="o", capsize=3, color=colors[v], label=v)
        ax.set_xticks(range(len(backbones)), backbones)
        ax.set_xlim(-0.5, len(backbones) - 0.5)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset}: mean ± std over seeds")
        ax.grid(axis="y", alpha=0.3)
        _legend_beside(fig)
        paths.append(save_figure(fig, out_dir / f"accuracy_{safe_filename(dataset)}.png"))
    return paths


def plot_accuracy_vs(rows: Sequence[Row], out_dir: Path, x: str, xlabel: str) -> Path | None:
    """Test accuracy against ``x`` (a Row field), one subplot per dataset; colour = variant,
    marker = backbone, log x axis (costs span orders of magnitude)."""
    sub = [r for r in rows if r.n_seeds and not math.isnan(getattr(r, x))]
    if not sub:
        return None
    colors = _colors(rows)
    backbones = sorted({r.backbone for r in rows})
    datasets = sorted({r.dataset for r in sub})
    fig, axes = new_figure(1, len(datasets), cell=(4.5, 3.6))
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for r in (r for r in sub if r.dataset == dataset):
            err = 0.0 if math.isnan(r.acc_std) else 100 * r.acc_std
            ax.errorbar(getattr(r, x), 100 * r.acc_mean, yerr=err, capsize=3, color=colors[r.variant],
                        marker=_MARKERS[backbones.index(r.backbone) % len(_MARKERS)], ls="none",
                        label=f"{r.variant} / {r.backbone}")  # fmt: skip
        if all(getattr(r, x) > 0 for r in sub if r.dataset == dataset):
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
    _legend_beside(fig)
    return save_figure(fig, out_dir / f"accuracy_vs_{x}.png")


def plot_all(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    paths = plot_accuracy(rows, out_dir)
    for x, label in (("params", "trainable parameters"), ("throughput", "training samples/s")):
        p = plot_accuracy_vs(rows, out_dir, x, label)
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
    dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None
) -> Report:
    """Read ``dirs``, write the Markdown, CSV and PNGs into ``out_dir`` (default: the first dir)."""
    if not dirs:
        raise ReportError("give at least one sweep dir")
    runs, unreadable = load_runs(dirs)
    out = Path(out_dir if out_dir is not None else dirs[0])
    report = Report(
        rows=summarize(r for r in runs if r.status != RUNNING),
        failures=[r for r in runs if r.status == FAILED],
        unreadable=unreadable,
        running=[r for r in runs if r.status == RUNNING],
    )
    out.mkdir(parents=True, exist_ok=True)
    report.files = plot_all(report.rows, out)
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
    parser.add_argument("--wandb-project", help="also log the table to this W&B project")
    parser.add_argument("--wandb-group", help="W&B group of that run")
    parser.add_argument("--wandb-mode", default="offline", choices=["offline", "online"])
    args = parser.parse_args(argv)
    try:
        report = build_report(args.dirs, args.out)
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
