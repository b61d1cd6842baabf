"""What a finished run hands to W&B besides its logged metrics: summary numbers and figures.

The W&B runs table and parallel-coordinates view read a run's summary; setting the headline numbers
there (best, not last, validation accuracy; test metrics; costs) makes a sweep comparable at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# results.json metrics and top-level fields that go into the W&B run summary, under these names.
SUMMARY_METRICS = ("val/acc_best", "test/acc", "test/f1")
SUMMARY_FIELDS = ("params", "attention_flops", "throughput", "peak_memory_mb", "wall_time_s")


def summary_of(results: dict[str, Any]) -> dict[str, float]:
    metrics = results.get("metrics") or {}
    out = {k: metrics[k] for k in SUMMARY_METRICS if metrics.get(k) is not None}
    out.update({f"run/{k}": results[k] for k in SUMMARY_FIELDS if results.get(k) is not None})
    return out


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
