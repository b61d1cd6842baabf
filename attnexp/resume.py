"""Run identity and resume: what makes two runs the same, and how a job starts.

- ``config_hash(cfg)``: the identity recorded in ``results.json``; a sweep re-run skips a job whose
  completed results carry the same hash (``previous_result``).
- ``computed_config(cfg)``: what a checkpoint's weights depend on, stamped into every checkpoint
  (``attnexp.checkpoint.ConfigStamp``); ``check_resumable`` refuses a checkpoint of another one.
- ``last_checkpoint(cfg)``: where the run's ``last.ckpt`` is, read from its checkpoint callback.
- ``plan_start(cfg, overrides)``: how a job of the command line starts: skipped (completed before),
  continued (``resume=<run dir>``, or a sweep job that was interrupted and left a ``last.ckpt`` of
  its config), or fresh.

No Lightning import: the command line decides this before the slow import. Loading a checkpoint
(``attnexp.checkpoint``) imports it, and happens only when there is a checkpoint to check.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from attnexp.budget import apply_budget
from attnexp.config import find_run_dir, load_run_config
from attnexp.results import COMPLETED, RESULTS_FILE, RUNNING, read_results

log = logging.getLogger(__name__)

# Keys that say where or how a run is recorded or started, not what it computes: left out of the
# hash (a resumed run computes what the uninterrupted one would have). ``force`` only says whether
# to re-run a completed job, ``figures`` how many test samples to draw after testing.
UNHASHED_KEYS = (
    "paths", "logger", "callbacks", "choices", "run_name", "hydra", "force", "figures", "resume",
    "ckpt_path", "objective", "objective_mode", "report_by", "report_best_over",
    "report_baseline",
)  # fmt: skip
# Keys of the dataset node that say how batches reach the model, not which: both loaders serve the
# same batches in the same order (attnexp/data/datamodule.py).
UNHASHED_DATASET_KEYS = ("loader", "num_workers", "pin_memory")
# Keys that may change between a checkpoint and the run continuing from it: where and how long
# to train, not what is trained.
RESUMABLE_KEYS = (*UNHASHED_KEYS, "trainer")
CONFIG_KEY = "attnexp_config"  # where a checkpoint keeps the config that produced it
# Lightning's ModelCheckpoint.CHECKPOINT_NAME_LAST with its extension (not imported: see above).
LAST_NAME = "last.ckpt"
# How an interrupted run's results.json ends: Lightning turns Ctrl+C during fit into SystemExit;
# a SIGKILL or an out-of-memory kill leaves the status ``running``.
INTERRUPTS = ("KeyboardInterrupt", "SystemExit")


# --------------------------------------------------------------------------- identity


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the resolved config minus the keys that only say where/how it is recorded.

    Paths elsewhere in the config (the trainer's root dir, the data cache) are hashed as
    ``${paths.<key>}``, so a run hashes the same wherever its outputs and checkout live.
    """
    data = OmegaConf.to_container(cfg, resolve=True)
    paths = {f"${{paths.{k}}}": str(v) for k, v in (data.get("paths") or {}).items() if v}
    data = _without(data, UNHASHED_KEYS)
    data = _replace_paths(data, sorted(paths.items(), key=lambda kv: -len(kv[1])))
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _replace_paths(data: Any, paths: list[tuple[str, str]]) -> Any:
    """``data`` with every string that starts with a path value starting with its name instead
    (the longest, most specific path first)."""
    if isinstance(data, dict):
        return {k: _replace_paths(v, paths) for k, v in data.items()}
    if isinstance(data, list):
        return [_replace_paths(v, paths) for v in data]
    if isinstance(data, str):
        for name, value in paths:
            if data == value or data.startswith(value.rstrip("/") + "/"):
                return name + data[len(value) :]
    return data


def computed_config(cfg: DictConfig) -> dict[str, Any]:
    """The part of ``cfg`` that decides what a checkpoint's weights are (not where or how long)."""
    return _without(OmegaConf.to_container(cfg, resolve=True), RESUMABLE_KEYS)


def _without(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The resolved config ``data`` without the top-level ``keys`` and the dataset's loader keys."""
    data = {k: v for k, v in data.items() if k not in keys}
    if isinstance(data.get("dataset"), dict):
        dataset = data["dataset"]
        data["dataset"] = {k: v for k, v in dataset.items() if k not in UNHASHED_DATASET_KEYS}
    return data


def check_resumable(path: str | Path, cfg: DictConfig) -> int:
    """The epoch ``path`` was saved in (Lightning's count from 0); refuses (``CheckpointError``)
    a checkpoint made with another computed config, naming the keys that differ."""
    from attnexp.checkpoint import CheckpointError, load_checkpoint  # see the module's docstring

    checkpoint = load_checkpoint(path)
    saved = checkpoint.get(CONFIG_KEY)
    if saved is None:
        raise CheckpointError(f"checkpoint {path} was not written by attnexp (no {CONFIG_KEY})")
    diffs = config_diff(saved, computed_config(cfg))
    if diffs:
        shown = "; ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, a, b in diffs[:10])
        more = f" (and {len(diffs) - 10} more)" if len(diffs) > 10 else ""
        raise CheckpointError(
            f"checkpoint {path} belongs to another config; keys that differ: {shown}{more}"
        )
    return int(checkpoint.get("epoch", 0))


def config_diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for every leaf where two nested configs differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            out += config_diff(a.get(k, "<absent>"), b.get(k, "<absent>"), key)
        return out
    return [] if a == b else [(prefix, a, b)]


# --------------------------------------------------------------------------- where a run stands


def last_checkpoint(cfg: DictConfig) -> Path | None:
    """Where the run of ``cfg`` keeps its ``last.ckpt`` (``callbacks.model_checkpoint.dirpath``);
    None when the checkpoint callback is switched off or does not keep a last checkpoint."""
    callback = (cfg.get("callbacks") or {}).get("model_checkpoint")
    if not callback or not callback.get("save_last") or not callback.get("dirpath"):
        return None
    return Path(str(callback.dirpath)) / LAST_NAME


def previous_result(cfg: DictConfig) -> dict[str, Any] | None:
    """The completed results in ``cfg.paths.output_dir`` if they came from this very config.

    None when there are none, they failed or are unreadable, the config differs, or ``cfg.force``.
    """
    results = _results_of(cfg)
    if results.get("status") == COMPLETED and results.get("config_hash") == config_hash(cfg):
        return results
    return None


def _results_of(cfg: DictConfig) -> dict[str, Any]:
    """The results.json in the run dir of ``cfg``; empty when none is there, it is unreadable, or
    ``cfg.force`` says to ignore what is there."""
    if cfg.get("force", False):
        return {}
    try:
        results = read_results(Path(cfg.paths.output_dir) / RESULTS_FILE)
    except (OSError, ValueError):
        return {}
    return results if isinstance(results, dict) else {}


def interrupted_checkpoint(cfg: DictConfig) -> Path | None:
    """The ``last.ckpt`` to continue the job of ``cfg`` from, when its run dir records this very
    config interrupted (status ``running``: killed; or failed by an interrupt) and the checkpoint
    is stamped with its computed config (``attnexp.pipeline.train`` logs that it continues).
    Otherwise None, with a log line saying why when a checkpoint is there but not used."""
    results = _results_of(cfg)
    ckpt = last_checkpoint(cfg)
    if not results or ckpt is None or not ckpt.is_file():
        return None
    run_dir = cfg.paths.output_dir
    if results.get("config_hash") != config_hash(cfg):
        log.info("starting %s afresh: its last run had another config", run_dir)
        return None
    error = str(results.get("error") or "")
    if not (results.get("status") == RUNNING or error.startswith(INTERRUPTS)):
        log.info("starting %s afresh: its last run of this config %s (%s)",
                 run_dir, results.get("status"), error)  # fmt: skip
        return None
    from attnexp.checkpoint import CheckpointError  # Lightning: only with a checkpoint to check

    try:
        check_resumable(ckpt, cfg)
    except CheckpointError as e:
        log.info("starting %s afresh: %s", run_dir, e)
        return None
    return ckpt


def prepare_resume(
    resume: str | Path, other_overrides: list[str]
) -> tuple[DictConfig, list[str], Path]:
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
    run_dir = find_run_dir(resume)
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
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    return cfg, overrides, ckpt


# --------------------------------------------------------------------------- how a job starts


@dataclass
class Start:
    """How a job of the command line starts: skipped when ``done`` (its completed results),
    else trained with ``cfg`` and ``overrides``, from ``ckpt_path`` when set."""

    cfg: DictConfig
    overrides: list[str]
    ckpt_path: str | Path | None = None
    done: dict[str, Any] | None = None


def plan_start(cfg: DictConfig, overrides: list[str]) -> Start:
    """Resolve ``cfg`` (inside the Hydra job) and decide how its job starts.

    ``resume=<run dir>``: that run's saved config and overrides, from its ``last.ckpt`` (refused
    when there is none). A run dir with completed results of this config: skipped. A run dir
    whose run of this config was interrupted and left a ``last.ckpt`` stamped with it: continued
    from there (a sweep re-run into its old dir). ``force=true``: from scratch, whatever is there.
    """
    if cfg.get("resume"):
        others = [o for o in overrides if not o.startswith("resume=")]
        cfg, overrides, ckpt = prepare_resume(cfg.resume, others)
        OmegaConf.resolve(cfg)
        return Start(cfg, overrides, ckpt, previous_result(cfg))
    OmegaConf.resolve(cfg)
    apply_budget(cfg)  # the matched width is part of the config the hash is taken of
    done = previous_result(cfg)
    if done is not None:
        return Start(cfg, overrides, done=done)
    return Start(cfg, overrides, interrupted_checkpoint(cfg) or cfg.get("ckpt_path"))
