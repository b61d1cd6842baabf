"""What each task logs, declared once: its metrics, their directions and its objective. No torch.

- ``Metric`` and ``Task``: the metrics a task logs as ``<stage>/<name>`` (``val/acc``, ``test/f1``)
  with their direction (``max``: higher is better, ``min``: lower is better). A task's first
  metric with a test stage is its primary one: reports sort and plot by it.
- ``classification`` and ``language_modelling`` declare the two tasks. Their LightningModules
  (``attnexp.tasks.classifier``, ``attnexp.tasks.lm``) build their torchmetrics from these
  declarations; the report, the W&B summary, the CSV and the objective check read them too. Adding
  a metric to a task is one edit of its tuple here.

A task is named by ``dataset.shape.task`` (``attnexp.data.shape``: ``classification`` or ``lm``);
the same name is the ``Task``'s. A run's task travels in its ``results.json`` under ``"task"``
(``Task.to_json``), so readers know each metric's direction without importing torch or Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from attnexp.data.shape import CLASSIFICATION, LM

# Directions of a metric, and the values of the ``objective_mode`` config key.
MAX = "max"  # higher is better
MIN = "min"  # lower is better
DIRECTIONS = (MAX, MIN)


def check_direction(key: str, value: Any) -> str:
    """``value`` if it is a direction; else a ValueError naming ``key`` and what is allowed."""
    if value not in DIRECTIONS:
        raise ValueError(f"{key} must be one of {', '.join(DIRECTIONS)}, got {value!r}")
    return value




@dataclass(frozen=True)
class Metric:
    """A number a task logs as ``<stage>/<name>`` for each of its stages."""

    name: str
    direction: str  # MAX or MIN
    label: str  # the report's column and plot axis: "test <label>"
    percent: bool = False  # a fraction, shown in percent
    stages: tuple[str, ...] = ("val", "test")
    optional: bool = False  # logged only by the runs it applies to (null in the others' records)

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
        name = str(data.get("name"))
        task = cls(FORMER_NAMES.get(name, name), metrics, data.get("objective"))
        if not task.test_metrics:
            raise ValueError(f"task {task.name!r} declares no metric with a test stage")
        return task


TOP_K = 5  # classification logs top-5 accuracy when there are more classes than this


def classification(num_classes: int | None = None) -> Task:
    """Accuracy, macro F1 (and top-k accuracy above ``TOP_K`` classes; None: declared), the
    loss, and the best validation accuracy so far (the default sweep objective)."""
    top_k = num_classes is None or num_classes > TOP_K
    return Task(
        CLASSIFICATION,
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
    """Next-token prediction (``attnexp.tasks.lm``): the loss in nats per token, bits per token,
    bits per byte and per character (optional: only where the vocabulary gives the unit), the
    perplexity and the accuracy per stage; the best validation loss so far (the LM sweep
    objective); and ``heldout/loss``, the tested checkpoint's loss over val and test together
    (``attnexp.tasks.lm.heldout_loss``: nanoGPT reports its "val loss" over that whole held-out part)."""
    return Task(
        LM,
        (
            Metric("loss", MIN, "loss (nats/token)", stages=("train", "val", "test")),
            Metric("bpt", MIN, "bits/token"),
            Metric("bpb", MIN, "bits/byte", optional=True),
            Metric("bpc", MIN, "bits/char", optional=True),
            Metric("ppl", MIN, "perplexity"),
            Metric("acc", MAX, "next-token acc", percent=True),
            Metric("loss_epoch", MIN, "epoch mean loss", stages=("train",)),
            Metric("loss_best", MIN, "best loss", stages=("val",)),
            Metric("acc_best", MAX, "best next-token acc", percent=True, stages=("val",)),
            Metric("loss", MIN, "held-out loss (val + test)", stages=("heldout",)),
        ),
        objective="val/loss_best",
    )


# A task's declaration by its name, the value of ``dataset.shape.task``.
TASKS = {CLASSIFICATION: classification, LM: language_modelling}
# The name runs recorded before the task took the name of ``dataset.shape.task``.
FORMER_NAMES = {"language_modelling": LM}


def default_objective(shape_task: str) -> tuple[str, str]:
    """``(objective, objective_mode)`` a run of a ``dataset.shape.task`` optimises unless the
    config names another: ``val/acc_best, max`` for classification, ``val/loss_best, min`` for lm."""
    task = TASKS.get(shape_task, classification)()
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
