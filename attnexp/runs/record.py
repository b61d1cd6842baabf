"""``results.json``: the one file per run that comparisons read, and the schema of what it holds.

Every name a run records beside its task's metrics (``attnexp.tasks.spec``) is defined here, once:

- ``STATUSES``: a run is ``running`` from its first line, then ``completed``, ``failed``, or
  ``interrupted`` (a signal stopped it after it saved where it stood; started again, it continues).
- ``COSTS``: top-level numbers measured once per run (``params``, ``attention_flops``,
  ``throughput``, ``peak_memory_mb``, ``wall_time_s``, and the attention diagnostics'
  ``attn_entropy``, ``attn_sink_mass``, ``attn_distance``, ``attn_max_logit``), each with the
  header, description and format the report shows it with. The diagnostics per slot and map are
  in ``attention_diagnostics``.

A run's task travels in its ``results.json`` under ``"task"`` (``Task.to_json``: its name and
metric declarations), so readers know each metric's direction without importing torch or
Lightning and read runs of tasks they were never told about. A file without ``"task"`` (written
before it existed) reads as ``classification``, the only task there was.

``RunLog`` is the one writer: the running pipeline (and the command line, for a refused config)
keeps the record in it and writes it atomically (``attnexp.util.files``), so a crash never leaves a
half-written file. ``load_record`` is the one reader of a finished or failed run: it parses and
validates one file into a ``RunRecord`` for both the sweep summary and the comparison report.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from attnexp.config.cell import CELL_GROUPS, Cell, InCell
from attnexp.runs.layout import RESULTS_FILE, RunDir
from attnexp.runs.provenance import git_commit, versions
from attnexp.tasks.spec import Task, recorded_task, task_of
from attnexp.util.files import DiskFull, atomic_write_text

log = logging.getLogger(__name__)

# Status values a results file may carry.
COMPLETED = "completed"
FAILED = "failed"
RUNNING = "running"
INTERRUPTED = "interrupted"  # stopped by a signal after saving where it stood: it can continue
STATUSES = (COMPLETED, FAILED, RUNNING, INTERRUPTED)

# The signals that stop a run where it stands: Ctrl-C, a polite kill or a pre-emption, and the
# signals SLURM (Lightning's, submitit's) sends before a time limit or a requeue.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Interrupted(Exception):
    """A run stopped by a signal after saving where it stood (``last.ckpt``)."""

    def __init__(
        self, signum: int, step: int, checkpoint: Path | None, then: Any = None
    ) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        # The handler the signal had before the run's (a cluster launcher's requeue, e.g.
        # submitit's on SIGUSR2): called once the run is recorded, so it still does its part.
        self.then = then if callable(then) and then is not signal.default_int_handler else None
        where = f"saved {checkpoint}" if checkpoint else "no checkpoint callback: nothing saved"
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; {where}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process ended by that signal


# --------------------------------------------------------------------------- costs


@dataclass(frozen=True)
class Cost:
    """A top-level number of ``results.json`` measured once per run."""

    name: str  # the key in results.json; ``run/<name>`` in the loggers and the W&B summary
    header: str  # the report's column
    description: str  # the report's legend and plot axis
    format: str  # a format spec, or "si" for 1.23M-style (FLOP counts span orders of magnitude)
    plot: bool = False  # the report plots the primary metric against it
    optional: bool = False  # the report shows its column only where some run has it


COSTS = (
    Cost("params", "params", "trainable parameters", ",.0f", plot=True),
    Cost("attention_flops", "attn FLOPs/sample",
         "analytic forward FLOPs of all attention slots for one sample", "si", plot=True),
    Cost("throughput", "train samples/s", "training samples per second", ",.1f", plot=True),
    Cost("peak_memory_mb", "peak mem (MB)", "peak process (CPU) or CUDA memory", ",.1f"),
    Cost("wall_time_s", "wall time (s)",
         "wall-clock time of the whole run, its segments summed when it was continued", ",.1f"),
    # what one sequence keeps to continue causally (Zoology's state size): mha's keys and values
    # at the run's length, a recurrent mixer's state; null where a slot declares none
    Cost("state_floats", "state (floats)", "floats one sequence keeps across the attention slots",
         "si", plot=True, optional=True),
    # attnexp.attention.diagnostics on a fixed validation batch (null without softmax-style maps)
    Cost("attn_entropy", "attn entropy", "mean attention entropy per head (nats)", ".3f",
         optional=True),
    Cost("attn_sink_mass", "first-key mass", "mean attention weight on the first position",
         ".3f", optional=True),
    Cost("attn_distance", "attn distance", "mean query-key distance in positions", ".2f",
         optional=True),
    Cost("attn_max_logit", "max logit", "largest attention logit", ".2f", optional=True),
)  # fmt: skip
COST_NAMES = tuple(c.name for c in COSTS)
# The attention diagnostics' summary costs are ``attn_<statistic>`` (attnexp.attention.diagnostics
# names the statistics); each statistic's description, for figures drawn per layer.
DIAGNOSTIC_PREFIX = "attn_"
DIAGNOSTIC_LABELS = {
    c.name.removeprefix(DIAGNOSTIC_PREFIX): c.description
    for c in COSTS
    if c.name.startswith(DIAGNOSTIC_PREFIX)
}


def cost_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """The recorded costs as ``run/<name>`` metrics (loggers and the W&B summary)."""
    return {f"run/{k}": results[k] for k in COST_NAMES if results.get(k) is not None}


# --------------------------------------------------------------------------- writing and reading


def write_results(run_dir: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Write ``results`` as ``run_dir/results.json`` atomically; returns the path."""
    path = Path(run_dir) / RESULTS_FILE
    atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    return path


class RunLog:
    """The ``results.json`` of a running run: opened ``running``, updated as the run learns its
    numbers, closed ``completed`` or ``failed``. Each change is written at once (atomically) by
    ``writer``, which data-parallel training makes a no-op on every rank but 0."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        record: dict[str, Any],
        writer: Callable[[Path, dict[str, Any]], Any] = write_results,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.record = record
        self.writer = writer

    @classmethod
    def open(
        cls,
        cfg: DictConfig,
        overrides: Sequence[str],
        run_dir: RunDir,
        config_hash: str,
        writer: Callable[[Path, dict[str, Any]], Any] = write_results,
    ) -> RunLog:
        """The record of a run about to start (status ``running``), written."""
        choices = {g: cfg.choices.get(g) for g in CELL_GROUPS}
        record = {
            "status": RUNNING,
            "error": None,
            "choices": {**choices, "seed": cfg.seed},
            "overrides": list(overrides),
            "config_hash": config_hash,
            "task": task_of(cfg).to_json(),
            "metrics": {},
            **dict.fromkeys(COST_NAMES),
            "run_dir": str(run_dir.path.resolve()),
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
            "git_commit": git_commit(),
        }
        log = cls(run_dir.path, record, writer)
        log.write()
        return log

    def update(self, **fields: Any) -> None:
        """Set ``fields`` and write."""
        self.record.update(fields)
        self.write()

    def complete(self, **fields: Any) -> dict[str, Any]:
        """Set ``fields``, mark the run completed, write; returns the record."""
        self.update(**fields, status=COMPLETED)
        return self.record

    def fail(self, error: BaseException, **fields: Any) -> None:
        """Mark the run failed by ``error`` (its type and message), with ``fields``, and write."""
        try:
            self.update(**fields, status=FAILED, error=f"{type(error).__name__}: {error}")
        except DiskFull as e:  # the failure itself may be the full disk: it is raised, not this
            log.error("could not record the failure in %s: %s", self.run_dir.results_file, e)

    def interrupt(self, reason: str, **fields: Any) -> None:
        """Mark the run interrupted (it saved where it stood), saying why, with ``fields``."""
        self.update(**fields, status=INTERRUPTED, error=reason)

    def write(self) -> None:
        self.writer(self.run_dir, self.record)


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read one ``results.json`` (a path to the file or to its run dir) as it is, unchecked."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    with open(path) as f:
        return json.load(f)


def find_results(root: str | os.PathLike) -> list[Path]:
    """Every ``results.json`` below ``root``, sorted."""
    return sorted(Path(root).rglob(RESULTS_FILE))


class UnreadableRecord(ValueError):
    """A ``results.json`` that is missing, not JSON, or not a run record; the message says why."""


@dataclass(frozen=True)
class RunRecord(InCell):
    """One checked ``results.json``: the run's identity, outcome, metrics and costs."""

    path: Path  # the run dir
    status: str
    cell: Cell
    seed: Any
    error: str | None
    started_at: str | None
    task: Task
    metrics: dict[str, float]  # the numeric entries of "metrics"
    costs: dict[str, float]  # every cost field; NaN where the run has none
    matched: dict[str, Any] | None = None  # the width match=params|flops chose (attnexp.config.budget)

    def value(self, key: str) -> float:
        """A metric (``test/acc``) or cost (``params``); NaN where the run has none."""
        return self.costs[key] if key in self.costs else self.metrics.get(key, math.nan)


def load_record(path: str | os.PathLike) -> RunRecord:
    """Read and check one ``results.json`` (the file or its run dir); ``UnreadableRecord`` says
    why one cannot be used: unreadable, malformed, or completed without its primary test metric."""
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    try:
        return parse_record(run_dir, read_results(path))
    except (OSError, ValueError, TypeError) as e:
        raise UnreadableRecord(f"{type(e).__name__}: {e}") from e


def parse_record(run_dir: Path, data: Any) -> RunRecord:
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    status = data.get("status")
    if status not in STATUSES:
        raise ValueError(f"status must be one of {'/'.join(STATUSES)}, got {status!r}")
    choices = data.get("choices")
    if not isinstance(choices, dict):
        raise ValueError("missing 'choices'")
    cell = Cell.from_choices(choices)
    task = recorded_task(data)
    raw = data.get("metrics") or {}
    metrics = {k: float(v) for k, v in raw.items() if _number(v) is not None}
    primary = f"test/{task.primary.name}"
    if status == COMPLETED and primary not in metrics:
        raise ValueError(f"a completed run without a numeric metrics['{primary}']")
    return RunRecord(
        path=run_dir,
        status=status,
        cell=cell,
        seed=choices.get("seed"),
        error=data.get("error"),
        started_at=data.get("started_at"),
        task=task,
        metrics=metrics,
        costs={k: _number(data.get(k), math.nan) for k in COST_NAMES},
        matched=data.get("matched") if isinstance(data.get("matched"), dict) else None,
    )


def _number(x: Any, default: float | None = None) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return default
    return float(x)
