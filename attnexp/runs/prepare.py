"""The one start step: ``prepare`` turns a composed config into a frozen ``RunPlan``.

A job of the command line (or a Python caller of ``attnexp.training.pipeline.train``) starts in one
of three ways, decided here once:

- ``skip``: its run dir holds completed results of this very config (a sweep re-run);
- ``continue``: ``resume=<run dir>`` (that run's saved config and overrides, from its
  ``last.ckpt``), ``ckpt_path=<file>``, or a run dir whose run of this config was interrupted and
  left a ``last.ckpt`` stamped with it;
- ``fresh``: anything else, and always with ``force=true``.

The plan holds the resolved, budget-matched, validated config, its hash, its task, how it starts
and the already-checked checkpoint; the pipeline takes it and recomputes none of it. A config that
``attnexp.config.validate`` refuses gets a failed ``results.json`` here, before Lightning is
imported (a checkpoint to check imports it, and only then).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from attnexp.config.budget import Matched
from attnexp.config.compose import resolve_run, saved_run_config
from attnexp.config.validate import validate
from attnexp.runs.identity import config_hash, current_targets
from attnexp.runs.layout import RunDir, last_checkpoint
from attnexp.runs.record import COMPLETED, INTERRUPTED, RUNNING, RunLog
from attnexp.tasks.spec import Task, task_of

log = logging.getLogger(__name__)

FRESH, CONTINUE, SKIP = "fresh", "continue", "skip"
# How a run stopped midway leaves its results.json: ``interrupted`` after a signal (it saved where
# it stood), ``running`` after a SIGKILL or an out-of-memory kill (nothing could be written), and,
# from before the signals were handled, failed by KeyboardInterrupt or SystemExit (Ctrl-C).
STOPPED = (INTERRUPTED, RUNNING)
INTERRUPTS = ("KeyboardInterrupt", "SystemExit")


@dataclass(frozen=True)
class RunPlan:
    """One run, resolved once: what it trains, where, and how it starts."""

    cfg: DictConfig  # resolved, width matched, validated; read-only
    overrides: tuple[str, ...]
    run_dir: RunDir
    config_hash: str
    task: Task
    matched: Matched | None
    start: str  # FRESH, CONTINUE or SKIP
    checkpoint: Path | None = None  # CONTINUE: checked against the computed config
    epoch: int | None = None  # the epoch the checkpoint was saved in
    step: int | None = None  # the training step it was saved at
    done: dict[str, Any] | None = None  # SKIP: the completed results
    previous: dict[str, Any] | None = None  # CONTINUE: the interrupted run's record, if any


def load_run_config(run_dir: RunDir) -> DictConfig:
    """The config a run was trained with, buildable with today's modules, not yet resolved."""
    saved = OmegaConf.create(current_targets(OmegaConf.to_container(run_dir.saved_config())))
    return saved_run_config(saved, run_dir.runtime_choices(), run_dir.path)


def prepare(
    cfg: DictConfig, overrides: Sequence[str] = (), ckpt_path: str | Path | None = None
) -> RunPlan:
    """Resolve ``cfg`` (inside the Hydra job, where ``${hydra:...}`` works) and plan its start.

    ``ckpt_path`` (or ``cfg.ckpt_path``) continues from a checkpoint of the same computed config,
    refused otherwise. A bad config raises ``validate``'s error after its failed record is written.
    """
    overrides = list(overrides)
    explicit = ckpt_path or cfg.get("ckpt_path")
    if cfg.get("resume"):
        others = [o for o in overrides if not o.startswith("resume=")]
        cfg, overrides, explicit = resumed_config(cfg.resume, others)
    matched = resolve_run(cfg)
    run_dir = RunDir(Path(cfg.paths.output_dir))
    digest = config_hash(cfg)
    OmegaConf.set_readonly(cfg, True)
    known = {"cfg": cfg, "overrides": tuple(overrides), "run_dir": run_dir, "config_hash": digest,
             "task": task_of(cfg), "matched": matched}  # fmt: skip
    previous = {} if cfg.get("force", False) else _results(run_dir)
    if previous.get("status") == COMPLETED and previous.get("config_hash") == digest:
        return RunPlan(**known, start=SKIP, done=previous)
    try:
        validate(cfg)  # before the slow Lightning import: a bad value fails in seconds
    except Exception as e:
        RunLog.open(cfg, overrides, run_dir, digest).fail(e)
        raise
    checkpoint = explicit or _interrupted(cfg, run_dir, previous, digest)
    if checkpoint is None:
        return RunPlan(**known, start=FRESH)
    from attnexp.runs.checkpoint import CheckpointError, check_resumable  # imports Lightning

    try:
        epoch, step = check_resumable(checkpoint, cfg)
    except Exception as e:
        if explicit:  # asked for: refused, and recorded so
            RunLog.open(cfg, overrides, run_dir, digest).fail(e)
            raise
        if not isinstance(e, CheckpointError):
            raise
        log.info("starting %s afresh: %s", run_dir.path, e)
        return RunPlan(**known, start=FRESH)
    return RunPlan(**known, start=CONTINUE, checkpoint=Path(checkpoint), epoch=epoch, step=step,
                   previous=previous if previous.get("config_hash") == digest else None)  # fmt: skip


def resumed_config(resume: str, other_overrides: list[str]) -> tuple[DictConfig, list[str], Path]:
    """``(saved config, its overrides, last checkpoint)`` to continue the run in ``resume``.

    The run continues in its own dir with its own saved config, so nothing may be overridden.
    """
    if other_overrides:
        raise ValueError(
            f"resume=<run dir> continues that run with its saved config; drop the other overrides "
            f"{other_overrides}, or start a new run from a checkpoint with ckpt_path=<file>"
        )
    if not Path(resume).exists():
        raise FileNotFoundError(f"resume={resume}: no such directory")
    run_dir = RunDir.find(resume)
    cfg = load_run_config(run_dir)
    ckpt = last_checkpoint(cfg)
    if ckpt is None:
        raise FileNotFoundError(
            f"resume={resume}: the run kept no last checkpoint (its callbacks.model_checkpoint "
            "is null or has save_last=false): start it again instead"
        )
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"resume={resume}: no {ckpt} yet (the run stopped before its first epoch ended): "
            "start it again instead"
        )
    return cfg, run_dir.overrides(), ckpt


def _results(run_dir: RunDir) -> dict[str, Any]:
    """The results.json in ``run_dir``; empty when none is there or it is unreadable (said in the
    log: the job runs again)."""
    if not run_dir.results_file.exists():
        return {}
    try:
        results = run_dir.results()
    except (OSError, ValueError) as e:
        results = f"{type(e).__name__}: {e}"
    if not isinstance(results, dict):
        log.warning("running %s again: its %s is unreadable (%s)", run_dir.path,
                    run_dir.results_file.name, results if isinstance(results, str) else "not an object")  # fmt: skip
        return {}
    return results


def _interrupted(
    cfg: DictConfig, run_dir: RunDir, previous: dict[str, Any], digest: str
) -> Path | None:
    """The ``last.ckpt`` to continue the job of ``cfg`` from, when its run dir records this very
    config stopped midway (``STOPPED``, or failed by an interrupt before signals were handled);
    ``prepare`` then
    checks that the checkpoint is stamped with its computed config. Otherwise None, with a log line
    saying why when a checkpoint is there but not used."""
    ckpt = last_checkpoint(cfg)
    if not previous or ckpt is None or not ckpt.is_file():
        return None
    if previous.get("config_hash") != digest:
        log.info("starting %s afresh: its last run had another config", run_dir.path)
        return None
    error = str(previous.get("error") or "")
    if not (previous.get("status") in STOPPED or error.startswith(INTERRUPTS)):
        log.info("starting %s afresh: its last run of this config %s (%s)",
                 run_dir.path, previous.get("status"), error)  # fmt: skip
        return None
    return ckpt
