"""``results.json``: the one file per run that comparisons read, and the schema of what it holds.

Every name a run records is defined here, once, and read everywhere else:

- ``STATUSES``: a run is ``running`` from its first line, then ``completed`` or ``failed``.
- ``COSTS``: top-level cost fields (``params``, ``attention_flops``, ``throughput``,
  ``peak_memory_mb``, ``wall_time_s``), each with the header, description and format the report
  shows it with.
- ``Metric`` and ``Task``: the metrics a task logs as ``<stage>/<name>`` (``val/acc``, ``test/f1``)
  with their direction (``max``: higher is better, ``min``: lower is better). A task's first
  metric with a test stage is its primary one: reports sort and plot by it. Adding a metric to a
  task is one edit of its tuple here; the report, the W&B summary and the objective check follow.

A run's task travels in its ``results.json`` under ``"task"`` (``Task.to_json``: its name and
metric declarations), so readers know each metric's direction without importing torch or
Lightning and read runs of tasks they were never told about. A file without ``"task"`` (written
before it existed) reads as ``classification``, the only task there was.

``load_record`` is the one reader of a finished or failed run: it parses and validates one file
into a ``RunRecord`` for both the sweep summary and the comparison report. The running pipeline
keeps the record as a plain dict (``attnexp.provenance.new_results``) and writes it with
``write_results`` atomically (temp file + rename), so a crash never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any

from attnexp.data.shape import LM

RESULTS_FILE = "results.json"

# Status values a results file may carry.
COMPLETED = "completed"
FAILED = "failed"
RUNNING = "running"
STATUSES = (COMPLETED, FAILED, RUNNING)

# Directions of a metric, and the values of the ``objective_mode`` config key.
MAX = "max"  # higher is better
MIN = "min"  # lower is better
DIRECTIONS = (MAX, MIN)


def check_direction(key: str, value: Any) -> str:
    """``value`` if it is a direction; else a ValueError naming ``key`` and what is allowed."""
    if value not in DIRECTIONS:
        raise ValueError(f"{key} must be one of {', '.join(DIRECTIONS)}, got {value!r}")
    return value


# --------------------------------------------------------------------------- costs


@dataclass(frozen=True)
class Cost:
    """A top-level number of ``results.json`` measured once per run."""

    name: str  # the key in results.json; ``run/<name>`` in the loggers and the W&B summary
    header: str  # the report's column
    description: str  # the report's legend and plot axis
    format: str  # a format spec, or "si" for 1.23M-style (FLOP counts span orders of magnitude)
    plot: bool = False  # the report plots the primary metric against it


COSTS = (
    Cost("params", "params", "trainable parameters", ",.0f", plot=True),
    Cost("attention_flops", "attn FLOPs/sample",
         "analytic forward FLOPs of all attention slots for one sample", "si", plot=True),
    Cost("throughput", "train samples/s", "training samples per second", ",.1f", plot=True),
    Cost("peak_memory_mb", "peak mem (MB)", "peak process (CPU) or CUDA memory", ",.1f"),
    Cost("wall_time_s", "wall time (s)", "wall-clock time of the whole run", ",.1f"),
)  # fmt: skip
COST_NAMES = tuple(c.name for c in COSTS)


def cost_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """The recorded costs as ``run/<name>`` metrics (loggers and the W&B summary)."""
    return {f"run/{k}": results[k] for k in COST_NAMES if results.get(k) is not None}


# --------------------------------------------------------------------------- metrics and tasks


@dataclass(frozen=True)
class Metric:
    """A number a task logs as ``<stage>/<name>`` for each of its stages."""

    name: str
    direction: str  # MAX or MIN
    label: str  # the report's column and plot axis: "test <label>"
    percent: bool = False  # a fraction, shown in percent
    stages: tuple[str, ...] = ("val", "test")

    def __post_init__(self) -> None:
        check_direction(f"metric {self.name}: direction", self.direction)
        object.__setattr__(self, "stages", tuple(self.stages))  # a JSON list reads as a tuple

    def keys(self) -> tuple[str, ...]:
        return tuple(f"{stage}/{self.name}" for stage in self.stages)


@dataclass(frozen=True)
class Task:
    """What a kind of run logs; its first metric with a test stage is its primary one."""

    name: str
    metrics: tuple[Metric, ...]
    objective: str | None = None  # the key a run optimises (a declared key: its direction known)

    def keys(self) -> tuple[str, ...]:
        """Every metric key a run of this task logs."""
        return tuple(k for m in self.metrics for k in m.keys())

    def direction_of(self, key: str) -> str | None:
        """The direction of a logged key (``val/loss`` -> ``min``); None for an unknown key."""
        return next((m.direction for m in self.metrics if key in m.keys()), None)

    @property
    def test_metrics(self) -> tuple[Metric, ...]:
        return tuple(m for m in self.metrics if "test" in m.stages)

    @property
    def primary(self) -> Metric:
        return self.test_metrics[0]

    def to_json(self) -> dict[str, Any]:
        """JSON-native (lists, not tuples): the record ``train`` returns equals the file's."""
        return {"name": self.name, "objective": self.objective,
                "metrics": [{**asdict(m), "stages": list(m.stages)} for m in self.metrics]}  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> Task:
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), list):
            raise ValueError(f"'task' must be an object with a 'metrics' list, got {data!r}")
        metrics = tuple(Metric(**m) for m in data["metrics"])
        task = cls(str(data.get("name")), metrics, data.get("objective"))
        if not task.test_metrics:
            raise ValueError(f"task {task.name!r} declares no metric with a test stage")
        return task


TOP_K = 5  # classification logs top-5 accuracy when there are more classes than this


def classification(num_classes: int | None = None) -> Task:
    """Accuracy, macro F1 (and top-k accuracy above ``TOP_K`` classes; None: declared), the
    loss, and the best validation accuracy so far (the default sweep objective)."""
    top_k = num_classes is None or num_classes > TOP_K
    return Task(
        "classification",
        (
            Metric("acc", MAX, "acc", percent=True),
            Metric("f1", MAX, "F1", percent=True),
            *([Metric(f"acc_top{TOP_K}", MAX, f"top-{TOP_K} acc", percent=True)] if top_k else []),
            Metric("loss", MIN, "loss", stages=("train", "val")),
            Metric("loss_epoch", MIN, "epoch mean loss", stages=("train",)),
            Metric("acc_best", MAX, "best acc", percent=True, stages=("val",)),
        ),
        objective="val/acc_best",
    )


def language_modelling() -> Task:
    """Next-token prediction (``attnexp.lm``): the loss in nats per token, bits per token, the
    perplexity and the accuracy per stage; the best validation loss so far (the LM sweep
    objective); and ``heldout/loss``, the tested checkpoint's loss over val and test together
    (``attnexp.lm.heldout_loss``: nanoGPT reports its "val loss" over that whole held-out part)."""
    return Task(
        "language_modelling",
        (
            Metric("loss", MIN, "loss (nats/token)", stages=("train", "val", "test")),
            Metric("bpc", MIN, "bits/token"),
            Metric("ppl", MIN, "perplexity"),
            Metric("acc", MAX, "next-token acc", percent=True),
            Metric("loss_epoch", MIN, "epoch mean loss", stages=("train",)),
            Metric("loss_best", MIN, "best loss", stages=("val",)),
            Metric("acc_best", MAX, "best next-token acc", percent=True, stages=("val",)),
            Metric("loss", MIN, "held-out loss (val + test)", stages=("heldout",)),
        ),
        objective="val/loss_best",
    )


def default_objective(shape_task: str) -> tuple[str, str]:
    """``(objective, objective_mode)`` a run of a ``dataset.shape.task`` optimises unless the
    config names another: ``val/acc_best, max`` for classification, ``val/loss_best, min`` for lm."""
    task = language_modelling() if shape_task == LM else classification()
    return task.objective, task.direction_of(task.objective)


def task_of(cfg: Any) -> Task:
    """The task a run of ``cfg`` trains, by ``dataset.shape.task`` (``attnexp.data.shape``), with
    the run's own ``objective`` when it is one of the task's keys (Zoology's runs optimise
    ``val/acc_best``, not the LM default ``val/loss_best``), so a record says what its run was picked
    by. Reads the config unchecked (a refused run's record names its task too)."""
    shape = cfg.dataset.get("shape") or {}
    if shape.get("task") == LM:
        task = language_modelling()
    else:
        num_classes = shape.get("num_classes")
        task = classification(num_classes if isinstance(num_classes, int) else None)
    try:
        objective = cfg.get("objective")
    except Exception:  # an interpolation that does not resolve: validate names it
        return task
    if isinstance(objective, str) and task.direction_of(objective) is not None:
        task = replace(task, objective=objective)
    return task


def recorded_task(results: Mapping[str, Any]) -> Task:
    """The task of a results record; one without ``"task"`` was written when classification was
    the only task."""
    return Task.from_json(results["task"]) if "task" in results else classification()


# --------------------------------------------------------------------------- writing and reading


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """A file object whose contents appear at ``path`` only once complete: written to a temp file
    in the same directory, flushed to disk, then renamed over ``path`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # as a plain open() would (mkstemp makes it private)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see ``atomic_open``)."""
    with atomic_open(path) as f:
        f.write(text)


def write_results(run_dir: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Write ``results`` as ``run_dir/results.json`` atomically; returns the path."""
    path = Path(run_dir) / RESULTS_FILE
    atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    return path


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
class RunRecord:
    """One checked ``results.json``: the run's identity, outcome, metrics and costs."""

    path: Path  # the run dir
    status: str
    attention: str
    backbone: str
    dataset: str
    seed: Any
    experiment: str | None
    error: str | None
    started_at: str | None
    task: Task
    metrics: dict[str, float]  # the numeric entries of "metrics"
    costs: dict[str, float]  # every cost field; NaN where the run has none
    matched: dict[str, Any] | None = None  # the width match=params|flops chose (attnexp.budget)

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
    for key in ("attention", "backbone", "dataset"):
        if not choices.get(key):
            raise ValueError(f"missing choices.{key}")
    task = recorded_task(data)
    raw = data.get("metrics") or {}
    metrics = {k: float(v) for k, v in raw.items() if _number(v) is not None}
    primary = f"test/{task.primary.name}"
    if status == COMPLETED and primary not in metrics:
        raise ValueError(f"a completed run without a numeric metrics['{primary}']")
    return RunRecord(
        path=run_dir,
        status=status,
        attention=str(choices["attention"]),
        backbone=str(choices["backbone"]),
        dataset=str(choices["dataset"]),
        seed=choices.get("seed"),
        experiment=choices.get("experiment") or None,
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
