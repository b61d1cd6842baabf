"""What a run is and what produced it: the opening record of its ``results.json``.

Cheap on purpose (no torch or Lightning import): the command line writes a failed record for a
config refused by ``attnexp.validate`` within seconds.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from attnexp.config import CHOICE_GROUPS, PROJECT_ROOT
from attnexp.results import COST_NAMES, RUNNING, task_of
from attnexp.resume import config_hash

PACKAGES = {"torch": "torch", "lightning": "lightning", "hydra": "hydra-core",
            "omegaconf": "omegaconf", "torchmetrics": "torchmetrics"}  # fmt: skip


def new_results(cfg: DictConfig, overrides: Sequence[str], run_dir: Path) -> dict[str, Any]:
    """The record of a run about to start (status ``running``)."""
    choices = {g: cfg.choices.get(g) for g in CHOICE_GROUPS}
    return {
        "status": RUNNING,
        "error": None,
        "choices": {**choices, "seed": cfg.seed},
        "overrides": list(overrides),
        "config_hash": config_hash(cfg),
        "task": task_of(cfg).to_json(),
        "metrics": {},
        **dict.fromkeys(COST_NAMES),
        "run_dir": str(run_dir.resolve()),
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "git_commit": git_commit(),
    }


def versions() -> dict[str, str | None]:
    """Python's and the installed core packages' versions (None for one not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name, dist in PACKAGES.items():
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The commit of the code that runs, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
