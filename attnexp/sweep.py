"""Sweeps: the end-of-sweep summary.

Re-running a sweep into its old ``hydra.sweep.dir`` skips its completed jobs and continues its
interrupted ones from their ``last.ckpt`` (``attnexp.runs.prepare.prepare``); ``force=true`` re-runs
them all from scratch.

- ``SweepSummary`` (a Hydra callback, ``hydra.callbacks`` in ``conf/hydra/default.yaml``): at the
  end of a multirun, reads every job's ``results.json``, prints what completed and what failed,
  writes the comparison report into the sweep dir (rows split by the config keys ``report_by``,
  each the best over ``report_best_over``: ``attnexp.report.best_over``; each compared with the row
  ``report_baseline`` selects, e.g. ``attention=none``), logs the table to W&B when
  the sweep used it, and exits non-zero when any job failed. A job another live process holds (a
  second sweep into the same dir: ``attnexp.runs.claim``) is listed as running elsewhere, which
  is not a failure.

Jobs never raise into Hydra in a multirun (``attnexp.cli`` records the failure instead): Hydra's
sweepers re-raise the first failed job before ``on_multirun_end``, which would skip this summary.

May import: attnexp.report, attnexp.runs, attnexp.util.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from attnexp.runs.claim import LOCK_FILE, Holder, exclusively, live_holder
from attnexp.runs.layout import HYDRA_DIR, RESULTS_FILE
from attnexp.runs.record import COMPLETED, FAILED, INTERRUPTED, UnreadableRecord, load_record

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the summary


@dataclass
class Outcome:
    """What the jobs of one sweep dir ended as."""

    completed: list[Path] = field(default_factory=list)  # run dirs
    reused: list[Path] = field(default_factory=list)  # completed before this sweep started
    failed: list[tuple[Path, str]] = field(default_factory=list)  # run dir, error
    elsewhere: list[tuple[Path, Holder]] = field(default_factory=list)  # running in another process

    @property
    def ok(self) -> bool:
        return not self.failed


def sweep_outcome(sweep_dir: Path, started: dt.datetime | None = None) -> Outcome:
    """Every job dir of ``sweep_dir`` (a dir holding Hydra's ``.hydra/``) and how it ended.

    A job dir a live process holds (``attnexp.runs.claim``: another sweep into the same dir) is
    running elsewhere, whatever its record says so far. Otherwise a job dir without a usable
    ``results.json`` (``attnexp.runs.record.load_record``, the report's reader too), or one still
    ``running``, counts as failed: the job died before recording. An
    ``interrupted`` one counts as failed too, with its reason: re-running the sweep continues it.
    Runs started before ``started`` count as reused.
    """
    out = Outcome()
    for run_dir in job_dirs(sweep_dir):
        holder = live_holder(run_dir)
        if holder is not None:
            out.elsewhere.append((run_dir, holder))
            continue
        try:
            record = load_record(run_dir / RESULTS_FILE)
        except UnreadableRecord as e:
            out.failed.append((run_dir, f"no readable {RESULTS_FILE}: {e}"))
            continue
        if record.status == COMPLETED:
            out.completed.append(run_dir)
            if started is not None and _started_before(record.started_at, started):
                out.reused.append(run_dir)
        elif record.status == FAILED:
            out.failed.append((run_dir, record.error or "(no error recorded)"))
        elif record.status == INTERRUPTED:  # not finished: the same command continues it
            out.failed.append((run_dir, f"interrupted: {record.error}"))
        else:
            ended = f"status {record.status!r}: the job ended without recording"
            out.failed.append((run_dir, ended))
    return out


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job dirs of a sweep: those with Hydra's files, or a claim (a job just started)."""
    marked = [*sweep_dir.glob(f"*/{HYDRA_DIR}"), *sweep_dir.glob(f"*/{LOCK_FILE}")]
    return sorted({p.parent for p in marked})


def _started_before(started_at: Any, t: dt.datetime) -> bool:
    try:
        return dt.datetime.fromisoformat(str(started_at)) < t
    except ValueError:
        return False


def print_outcome(sweep_dir: Path, outcome: Outcome) -> None:
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    done = len(outcome.completed)
    reused = f" ({len(outcome.reused)} skipped: completed before)" if outcome.reused else ""
    elsewhere = f", {len(outcome.elsewhere)} running elsewhere" if outcome.elsewhere else ""
    console.print(
        f"sweep {sweep_dir}: {done} completed{reused}{elsewhere}, {len(outcome.failed)} failed",
        soft_wrap=True,
    )
    for run_dir, holder in outcome.elsewhere:
        console.print(f"[yellow]running elsewhere[/yellow] {run_dir.name}: {holder}", soft_wrap=True)
    for run_dir, error in outcome.failed:
        console.print(
            f"[red]failed[/red] {run_dir.name}: {' '.join(error.split())}", soft_wrap=True
        )


def _as_list(value: Any) -> Any:
    """A config list as a list (anything else as it is: the report refuses it by name)."""
    if value is None:
        return []
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


class SweepSummary(Callback):
    """End of a multirun: summary, comparison report (and W&B table), non-zero exit on failure."""

    def __init__(self, report: bool = True) -> None:
        self.report = report
        self.started: dt.datetime | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Seconds, as results.json's started_at: a job started in this second is not "reused".
        self.started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        # Another sweep into this dir may write the report too: one at a time, each from the
        # records as they are then, so the last report written is from the latest records.
        with exclusively(sweep_dir / LOCK_FILE):
            outcome = sweep_outcome(sweep_dir, self.started)
            if self.report and outcome.completed + outcome.failed + outcome.elsewhere:
                try:
                    self._write_report(sweep_dir, config)
                except Exception:  # a broken report must not hide the outcome and exit status
                    log.exception("the comparison report of %s failed", sweep_dir)
        print_outcome(sweep_dir, outcome)
        if not outcome.ok:
            # Hydra turns a callback's Exception into a warning; SystemExit passes through it.
            raise SystemExit(1)

    @staticmethod
    def _write_report(sweep_dir: Path, config: DictConfig) -> None:
        from attnexp.report.build import build_report, log_to_wandb
        from attnexp.report.rows import ReportError

        try:
            report = build_report(
                [sweep_dir],
                by=_as_list(config.get("report_by")),
                best_over=config.get("report_best_over"),
                baseline=config.get("report_baseline"),
            )
        except ReportError as e:  # e.g. every job died before writing results.json
            log.warning("no comparison report: %s", e)
            return
        log.info("comparison report: %s", sweep_dir / "comparison.md")
        wandb_cfg = (config.get("logger") or {}).get("wandb")
        if wandb_cfg is not None:
            log_to_wandb(
                report.rows,
                project=wandb_cfg.project,
                group=sweep_dir.name,
                mode="offline" if wandb_cfg.get("offline", False) else "online",
                dir=sweep_dir,
            )
