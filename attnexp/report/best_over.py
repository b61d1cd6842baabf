"""Report rows split by config values, and the best run per cell over a swept key.

Zoology (Arora et al., 2023) reports each (mixer, width, sequence length) cell as the best run over
its learning rates. Here that is two report options, both naming dotted keys of each run's saved
``.hydra/config.yaml`` (``attnexp-compare --by KEY --best-over KEY``, or a sweep's ``report_by`` and
``report_best_over``):

- ``by``: rows also differ by these config values (``backbone.dim``, ``dataset.seq_len``), shown
  as columns. A cell is a row: dataset, backbone, attention, experiment and the ``by`` values.
- ``best_over``: within each cell, only the runs of the value of this key (``optim.optimizer.lr``)
  whose completed runs have the best mean *validation* objective (the objective each run's record
  declares, in its direction: the config's ``objective``, by default the task's own, ``val/acc_best``
  or ``val/loss_best``) make the row; their test metrics are
  reported and the value is named in the column ``<key> (best)``. The cell's failed runs, whatever
  their value, still count in its ``failed`` column. Ties go to the smallest value.
- ``select_seeds`` (with ``best_over``; ``--select-seeds 0``): the value is picked by the runs of
  these seeds only, and the row reports the runs of the other seeds at that value. The winner of a
  noisy maximum is partly luck, and reporting the runs that won keeps that luck; fresh seeds at the
  chosen value do not (modded-nanogpt's records warn of the same). A cell without fresh seeds at
  its value has no completed run to report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from attnexp.config.cell import CELL_GROUPS
from attnexp.report import stats
from attnexp.report.rows import BEST_SUFFIX, ReportError, Row, cell_row, sort_key, summarize
from attnexp.runs.layout import CONFIG_FILE
from attnexp.runs.record import COMPLETED, FAILED, RunRecord
from attnexp.tasks.spec import MAX

_ABSENT = object()


def best_column(key: str) -> str:
    """The column naming the value a ``best_over`` selection kept."""
    return f"{key}{BEST_SUFFIX}"


def best_over_note(key: str, select_seeds: Sequence[int] | None = None) -> str:
    """The report's sentence on what a ``best_over`` row holds."""
    if select_seeds is not None:
        seeds = ", ".join(str(s) for s in select_seeds)
        return (
            f"Each row's `{key}` value is the one whose completed runs of seeds {seeds} have the best "
            f"mean validation objective (each run's own), named in the column `{best_column(key)}`; "
            "the metrics are the test metrics of the other seeds' runs at that value (fresh seeds: "
            "the selection's luck stays out)."
        )
    return (
        f"Each row keeps only the runs of the `{key}` value whose completed runs have the best "
        f"mean validation objective (each run's own: by default val/acc_best max for classification, "
        f"val/loss_best min for language models), named in the column `{best_column(key)}`; the metrics are those runs' test metrics."
    )


def check_keys(
    by: Sequence[str], best_over: str | None, select_seeds: Sequence[int] | None = None
) -> None:
    """A ReportError naming the option unless ``by`` is a list of dotted keys, ``best_over``
    one key (or None) that is not also a ``by`` key, and ``select_seeds`` (or None) a non-empty
    list of seeds given with ``best_over``."""
    if select_seeds is not None:
        if best_over is None:
            raise ReportError("--select-seeds picks the --best-over value: give --best-over too")
        if not select_seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in select_seeds):
            raise ReportError(f"--select-seeds must be a non-empty list of seeds (integers), got {select_seeds!r}")
    if isinstance(by, str) or not all(isinstance(k, str) and k for k in by):
        raise ReportError(f"--by / report_by must be a list of config keys, got {by!r}")
    if best_over is not None and (not isinstance(best_over, str) or not best_over):
        raise ReportError(
            f"--best-over / report_best_over must be one config key, got {best_over!r}"
        )
    if best_over is not None and best_over in by:
        raise ReportError(f"{best_over!r} is both a --by and the --best-over key: pick one")


@lru_cache(maxsize=4096)
def _load(path: Path, mtime_ns: int) -> DictConfig:  # the mtime: a rewritten file is read again
    from attnexp.config.compose import register_resolvers  # the project's own ${...} resolvers

    register_resolvers()
    return OmegaConf.load(path)


def config_value(run_dir: str | Path, key: str, option: str = "--by") -> Any:
    """The value of dotted ``key`` in a run's saved config, resolved where it can be (a value that
    refers to Hydra's runtime, unknown outside it, is returned as written). ``option`` names the
    setting that asked, for the error on a missing file or key."""
    path = Path(run_dir) / CONFIG_FILE  # the config as Hydra saved it
    if not path.is_file():
        raise ReportError(f"{option} {key}: {path} does not exist (a run without its saved config)")
    cfg = _load(path.resolve(), path.stat().st_mtime_ns)
    raw = _unresolved(cfg, key)
    if isinstance(raw, str) and "${hydra:" in raw:
        # Only the run's own Hydra knew it; a Hydra running now (a sweep's summary) would answer
        # with its own runtime instead.
        return raw
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
    except Exception:  # an interpolation only a running Hydra resolves: keep its text
        value = _unresolved(cfg, key)
    if value is _ABSENT:
        raise ReportError(f"{option} {key}: no such key in {path} (a dotted key like backbone.dim)")
    if isinstance(value, (DictConfig, ListConfig)):
        value = str(OmegaConf.to_container(value, resolve=False))  # hashable, shown as written
    return value


def _unresolved(cfg: DictConfig, key: str) -> Any:
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def value_order(value: Any) -> tuple:
    """A sort key for config values: numbers in numeric order before anything else in text order."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value, "") if number else (1, 0, str(value))


def select_best(
    cell: Sequence[RunRecord], key: str, select_seeds: Sequence[int] | None = None
) -> tuple[Any, list[RunRecord]]:
    """The value of ``key`` whose completed runs of ``cell`` (of ``select_seeds`` only, when
    given) have the best mean validation objective, and the runs a row keeps: those runs (the
    other seeds' runs at that value, when ``select_seeds`` is given) and the cell's failed ones.
    ``(None, cell)`` when no run that could select completed."""
    chosen, fresh = list(cell), []
    if select_seeds is not None:
        chosen = [r for r in cell if r.seed in select_seeds]
        fresh = [r for r in cell if r.seed not in select_seeds and r.status == COMPLETED]
    done = [r for r in chosen if r.status == COMPLETED]
    if not done:
        return None, list(cell) if select_seeds is None else [r for r in cell if r.status == FAILED]
    task = done[0].task
    objective = task.objective
    direction = task.direction_of(objective) if objective else None
    if direction is None:
        raise ReportError(f"--best-over {key}: task {task.name!r} declares no objective to pick by")
    by_value: dict[Any, list[RunRecord]] = {}
    for r in done:
        by_value.setdefault(config_value(r.path, key, "--best-over"), []).append(r)
    scores = {v: stats.mean([r.value(objective) for r in runs]) for v, runs in by_value.items()}
    candidates = sorted((v for v, s in scores.items() if not math.isnan(s)), key=value_order)
    if not candidates:
        raise ReportError(
            f"--best-over {key}: no completed run in {done[0].path.parent} of "
            f"{', '.join(str(getattr(done[0], n)) for n in CELL_GROUPS if getattr(done[0], n))} "
            f"recorded {objective}"
        )
    pick = max if direction == MAX else min
    best = pick(candidates, key=lambda v: scores[v])  # the first of equals: the smallest value
    kept = by_value[best] if select_seeds is None else [
        r for r in fresh if config_value(r.path, key, "--best-over") == best
    ]  # fmt: skip
    return best, kept + [r for r in cell if r.status == FAILED]


def summarize_by(
    runs: Sequence[RunRecord], by: Sequence[str] = (), best_over: str | None = None,
    select_seeds: Sequence[int] | None = None,
) -> list[Row]:  # fmt: skip
    """The report's rows (``attnexp.report.summarize``) with cells also split by the ``by`` config
    values and, with ``best_over``, reduced to the winning value's runs, or to the fresh seeds'
    runs at the value ``select_seeds`` chose (module docstring)."""
    check_keys(by, best_over, select_seeds)
    if not by and best_over is None:
        return summarize(runs)
    cells: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        values = tuple(config_value(r.path, k) for k in by)
        cells.setdefault((r.cell, values), []).append(r)
    rows = []
    for (identity, values), runs_of_cell in cells.items():
        labels, kept = dict(zip(by, values, strict=True)), runs_of_cell
        if best_over is not None:
            labels[best_column(best_over)], kept = select_best(runs_of_cell, best_over, select_seeds)
        # kept may be empty (no fresh seed ran at the chosen value): a row of no seeds says so
        row = cell_row(identity, runs_of_cell[0].task, kept)
        row.labels = labels
        rows.append(row)

    def order(row: Row) -> tuple:
        dataset, backbone, *rank = sort_key(row)
        return (dataset, backbone, *(value_order(row.labels[k]) for k in by), *rank)

    return sorted(rows, key=order)
