"""A continued run's logs continue the interrupted run's: one CSV history and one W&B run.

Lightning's CSV logger deletes ``metrics.csv`` when it opens a run dir that holds one, and a new
W&B logger opens a new run. A run continued from a checkpoint taken at training step ``S`` keeps
the rows the interrupted run logged before ``S`` (the ones after it are logged again, the same)
and writes into the W&B run whose id the interrupted run recorded.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, WandbLogger

from attnexp.util.files import atomic_write_text

STEP = "step"  # the CSV logger's step column


def rows_before(path: Path, step: int) -> tuple[list[str], list[dict[str, str]]]:
    """The header of the CSV log at ``path`` and its rows logged before training step ``step``
    (none when there is no log)."""
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [row for row in reader if row.get(STEP) and float(row[STEP]) < step]
        return list(reader.fieldnames or []), rows


def continue_csv(logger: CSVLogger, header: list[str], rows: list[dict[str, str]]) -> None:
    """Put the interrupted run's ``rows`` back into ``logger``'s ``metrics.csv`` (which opening
    the logger deleted) and have it append after them under the same header."""
    if not rows:
        return
    writer = logger.experiment  # opens the writer, which deletes the old file
    buffer = io.StringIO()
    out = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    out.writeheader()
    out.writerows(rows)
    atomic_write_text(writer.metrics_file_path, buffer.getvalue())
    writer.metrics_keys = list(header)


def wandb_id(loggers: list[Any]) -> str | None:
    """The id of the W&B run the loggers write to (None without a W&B logger)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            return logger.experiment.id
    return None
