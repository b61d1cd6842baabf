"""A cell of a comparison: the config groups whose choices name a run, defined once.

``conf/train.yaml``'s ``choices:`` node holds them; they name the run dir and the W&B run,
``results.json`` records them, and the report groups runs into rows by them (one row per cell,
aggregated over seeds). ``experiment`` may be null; the others must be set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, order=True)
class Cell:
    """What a row of the report is: the choices of these groups, in the report's column order."""

    dataset: str
    backbone: str
    attention: str
    experiment: str | None = None

    @classmethod
    def from_choices(cls, choices: Mapping[str, Any]) -> Cell:
        """The cell of a run's recorded ``choices``; a ValueError names a required one missing."""
        for group in REQUIRED_GROUPS:
            if not choices.get(group):
                raise ValueError(f"missing choices.{group}")
        return cls(**{g: str(choices[g]) for g in REQUIRED_GROUPS},
                   experiment=choices.get("experiment") or None)  # fmt: skip


# The groups naming a cell, in the report's column order; every one but ``experiment`` is required.
CELL_GROUPS = tuple(f.name for f in fields(Cell))
REQUIRED_GROUPS = tuple(g for g in CELL_GROUPS if g != "experiment")


class InCell:
    """Reads a ``cell`` attribute's groups as attributes of their own (a run record, a report row)."""

    cell: Cell

    @property
    def dataset(self) -> str:
        return self.cell.dataset

    @property
    def backbone(self) -> str:
        return self.cell.backbone

    @property
    def attention(self) -> str:
        return self.cell.attention

    @property
    def experiment(self) -> str | None:
        return self.cell.experiment
