"""The comparison report, end to end: every ``results.json`` under one or more sweep dirs -> one table + plots.

One row per attention x backbone x dataset (x experiment, shown when any run names one): mean,
sample standard deviation and 95% t-interval of the mean over the completed seeds of every test
metric the runs' task declares (``attnexp.runs.record``), and the means of the cost columns; rows are
sorted by the task's primary metric, best first.

With a baseline (``--baseline attention=none``), each row is compared with the baseline row of the
same dataset and backbone on the primary test metric (``attnexp.report.stats``): the difference with its
95% interval, a p-value (paired by seed where the seeds match, Welch's otherwise), Holm-adjusted
over every tested row of the table, and a verdict (better / worse / indistinguishable at 5%, by
the metric's declared direction; "no test" below two seeds). Over several datasets a ranking table
gives each variant's mean rank per backbone. Runs of different tasks share one table: its metric columns are the union, and
a cell a row's task lacks shows "–". Written as ``comparison.md``, ``comparison.csv``, PNG plots and
``comparison.html`` (the Markdown as one page, figures embedded: ``attnexp.report.html``),
and printed as a table.

Standard deviation is the sample one (n - 1); over a single seed it and the interval are undefined
and shown as "–" (empty in the CSV), never as a misleading 0. Failed runs count in ``failed`` and are listed with
their error; a ``results.json`` that cannot be read is listed as unreadable, without stopping the
report; ``attnexp-compare`` then exits 1 (``--skip-unreadable``: 0).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from attnexp.report.figures import plot_all
from attnexp.report.html import HTML_FILE, markdown_to_html
from attnexp.report.rows import (
    BASELINE_KEYS,
    CSV_FILE,
    MD_FILE,
    Report,
    ReportError,
    Row,
    Unreadable,
    compare_to_baseline,
    parse_baseline,
)
from attnexp.report.table import print_table, table_data, to_csv, to_markdown
from attnexp.runs.layout import RESULTS_FILE
from attnexp.runs.record import (
    FAILED,
    INTERRUPTED,
    RUNNING,
    RunRecord,
    UnreadableRecord,
    find_results,
    load_record,
)
from attnexp.util.files import atomic_write_text
from attnexp.util.terminal import quiet_dependencies

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


UNFINISHED = (RUNNING, INTERRUPTED)  # not counted, listed


def build_report(
    dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    *,
    by: Sequence[str] = (),
    best_over: str | None = None,
    baseline: str | None = None,
    select_seeds: Sequence[int] | None = None,
) -> Report:
    """Read ``dirs``, write the Markdown, CSV and PNGs into ``out_dir`` (default: the first dir).
    ``by`` and ``best_over``: config keys that split rows and that each row is the best over
    (``attnexp.report.best_over``), picked on the runs of ``select_seeds`` and reported on the
    other seeds when given; with ``baseline`` (``"attention=none"``), compare every row with it
    (``compare_to_baseline``)."""
    from attnexp.report.best_over import best_over_note, check_keys, summarize_by
    from attnexp.report.curves import learning_curves
    from attnexp.report.curves import to_markdown as curves_markdown
    from attnexp.report.zoology_figure import plot_width_figure

    if not dirs:
        raise ReportError("give at least one sweep dir")
    check_keys(by, best_over, select_seeds)
    if baseline is not None:
        parse_baseline(baseline)  # a bad key fails before any file is read
    runs, unreadable = load_runs(dirs)
    out = Path(out_dir if out_dir is not None else dirs[0])
    report = Report(
        rows=summarize_by([r for r in runs if r.status not in UNFINISHED], by, best_over, select_seeds),
        failures=[r for r in runs if r.status == FAILED],
        unreadable=unreadable,
        running=[r for r in runs if r.status in UNFINISHED],
        notes=[best_over_note(best_over, select_seeds)] if best_over else [],
    )
    if baseline is not None:
        compare_to_baseline(report.rows, baseline)
    out.mkdir(parents=True, exist_ok=True)
    report.files = plot_all(report.rows, out) + plot_width_figure(report.rows, out)
    report.curves = learning_curves(report.rows, out)
    report.curves_markdown = curves_markdown(report.curves, lambda p: os.path.relpath(p, out))
    report.files += report.curves.files
    atomic_write_text(out / CSV_FILE, to_csv(report.rows))
    markdown = to_markdown(report, out)
    atomic_write_text(out / MD_FILE, markdown)
    atomic_write_text(out / HTML_FILE, markdown_to_html(markdown, out))
    report.files += [out / MD_FILE, out / HTML_FILE, out / CSV_FILE]
    return report


def seed_list(text: str) -> list[int]:
    """``--select-seeds``'s value: comma-separated integer seeds."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integer seeds, got {text!r}") from None


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
    parser.add_argument(
        "--select-seeds", metavar="SEEDS", type=seed_list,
        help="with --best-over: pick the value on these seeds' runs (e.g. 0 or 0,1) and report "
        "the other seeds' runs at that value, so the selection's luck stays out",
    )  # fmt: skip
    parser.add_argument(
        "--skip-unreadable", action="store_true",
        help="write the report even when a results.json cannot be read (it is listed as "
        "unreadable); without it, such a file ends the command with exit status 1",
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
            args.dirs, args.out, by=args.by, best_over=args.best_over, baseline=args.baseline,
            select_seeds=args.select_seeds,
        )
    except ReportError as e:
        print(f"attnexp-compare: error: {e}", file=sys.stderr)
        return 2
    print_table(report)
    print(f"wrote {', '.join(str(p) for p in report.files)}")
    if args.wandb_project:
        log_to_wandb(report.rows, args.wandb_project, args.wandb_group, mode=args.wandb_mode)
    if report.unreadable and not args.skip_unreadable:
        for bad in report.unreadable:
            print(f"attnexp-compare: error: cannot read {bad.path}: {bad.reason}", file=sys.stderr)
        print("attnexp-compare: the report leaves these runs out; --skip-unreadable accepts that",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
