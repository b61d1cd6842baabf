"""What a finished run hands to W&B besides its logged metrics: summary numbers and figures.

The W&B runs table and parallel-coordinates view read a run's summary; setting the headline numbers
there (best, not last, validation accuracy; test metrics; costs) makes a sweep comparable at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from attnexp.runs.record import cost_metrics
from attnexp.tasks.spec import recorded_task


def summary_of(results: dict[str, Any]) -> dict[str, float]:
    """Every metric the run's task declares (``val/acc_best``: the best, not the last, epoch),
    and the costs as ``run/<name>``."""
    metrics = results.get("metrics") or {}
    out = {k: metrics[k] for k in recorded_task(results).keys() if metrics.get(k) is not None}
    return {**out, **cost_metrics(results)}


def publish_to_wandb(
    loggers: Iterable[Any], results: dict[str, Any], figures: Sequence[Path] = ()
) -> None:
    """Set the summary and log the attention figures as images on every W&B logger."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        logger.experiment.summary.update(summary_of(results))
        for path in figures:
            logger.log_image(key=f"attention/{path.stem}", images=[str(path)])


def publish_samples(loggers: Iterable[Any], prompt: str, samples: Sequence[str]) -> None:
    """Log generated text as a ``samples`` table (columns prompt, sample) on every W&B logger."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_text(key="samples", columns=["prompt", "sample"],
                            data=[[prompt, s] for s in samples])  # fmt: skip
