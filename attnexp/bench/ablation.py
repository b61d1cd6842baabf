"""Wall time of the MNIST-1D ablation as a user runs it: ``train.py -m`` over attention x backbone
with the joblib launcher, timed around the whole command (start-up, every job, the sweep's end).
The variants and backbones are the ones ``experiment=ablation_mnist1d`` sweeps (one seed here)."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from attnexp.config.paths import CONFIG_DIR, PROJECT_ROOT
from attnexp.runs.record import COMPLETED, find_results, read_results

EXPERIMENT = CONFIG_DIR / "experiment" / "ablation_mnist1d.yaml"


def swept(key: str, experiment: Path = EXPERIMENT) -> tuple[str, ...]:
    """The values ``experiment``'s sweeper takes for ``key`` (``attention: none,mha`` -> both)."""
    return tuple(str(OmegaConf.load(experiment).hydra.sweeper.params[key]).split(","))


ATTENTIONS = swept("attention")
BACKBONES = swept("backbone")
TARGET_S = 15 * 60  # target: the full ablation in under 15 minutes on the 2-core machine


def ablation_command(
    attentions: Sequence[str] = ATTENTIONS,
    backbones: Sequence[str] = BACKBONES,
    n_jobs: int = 2,
    overrides: Sequence[str] = (),
) -> list[str]:
    """``python train.py -m attention=... backbone=... hydra/launcher=joblib ... logger=csv``."""
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be >= 1, got {n_jobs}")
    return [
        sys.executable, "train.py", "-m",
        f"attention={','.join(attentions)}", f"backbone={','.join(backbones)}",
        "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}", "logger=csv", *overrides,
    ]  # fmt: skip


def time_ablation(command: Sequence[str], sweep_dir: Path) -> dict:
    """Run ``command`` (an ``ablation_command``) from the project root with its sweep written to
    ``sweep_dir``; its wall time and how many jobs completed."""
    sweep_dir = Path(sweep_dir).resolve()  # the command runs from the project root
    command = [*command, f"hydra.sweep.dir={sweep_dir}"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    results = [read_results(p) for p in find_results(sweep_dir)]
    return {
        "command": shlex.join(["python", *command[1:]]),
        "returncode": done.returncode,
        "stderr_tail": done.stderr[-2000:] if done.returncode else "",
        "wall_time_s": wall,
        "jobs": len(results),
        "completed": sum(r["status"] == COMPLETED for r in results),
        "target_s": TARGET_S,
        "met": done.returncode == 0 and wall < TARGET_S,
    }
