"""The run directory: every file name inside one, spelled once, and how to find and read it.

A run dir is ``paths.output_dir`` of one job (``outputs/runs/<run name>/<time>`` or a sweep's
``<sweep dir>/<job number>``). The job writes ``.hydra/`` once it holds the dir
(``attnexp.runs.claim``), then the rest. The checkpoint dir and the CSV log's place are also set in yaml
(``conf/callbacks/default.yaml``, ``conf/logger/csv.yaml``), which these names match.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

HYDRA_DIR = ".hydra"
CONFIG_FILE = f"{HYDRA_DIR}/config.yaml"  # the composed config, unresolved, as Hydra saved it
HYDRA_FILE = f"{HYDRA_DIR}/hydra.yaml"  # Hydra's own config: the runtime choices
OVERRIDES_FILE = f"{HYDRA_DIR}/overrides.yaml"  # the command line's overrides
RESULTS_FILE = "results.json"  # attnexp.runs.record
METRICS_CSV = "csv/metrics.csv"  # every logged metric (conf/logger/csv.yaml)
CHECKPOINT_DIR = "checkpoints"  # conf/callbacks/default.yaml: best.ckpt and last.ckpt
LAST_CHECKPOINT = "last.ckpt"  # Lightning's ModelCheckpoint.CHECKPOINT_NAME_LAST, with its suffix
FIGURES_DIR = "figures"  # the attention figures of the tested model
SAMPLES_FILE = "samples.txt"  # a language model's samples


@dataclass(frozen=True)
class RunDir:
    """One run's directory and the paths of what it holds."""

    path: Path

    @classmethod
    def find(cls, path: str | Path) -> RunDir:
        """The run dir of a run dir or of a file inside it (the one holding ``.hydra/config.yaml``)."""
        path = Path(path).resolve()
        for candidate in (path, *path.parents):
            if (candidate / CONFIG_FILE).is_file():
                return cls(candidate)
        raise FileNotFoundError(f"no {CONFIG_FILE} in {path} or above it: not a training run")

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def hydra_file(self) -> Path:
        return self.path / HYDRA_FILE

    @property
    def overrides_file(self) -> Path:
        return self.path / OVERRIDES_FILE

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def metrics_csv(self) -> Path:
        return self.path / METRICS_CSV

    @property
    def figures_dir(self) -> Path:
        return self.path / FIGURES_DIR

    @property
    def samples_file(self) -> Path:
        return self.path / SAMPLES_FILE

    def saved_config(self) -> DictConfig:
        """The config as Hydra saved it (unresolved; ``attnexp.config.compose.saved_run_config``
        makes it buildable)."""
        return OmegaConf.load(self.config_file)

    def runtime_choices(self) -> DictConfig:
        """The group options Hydra picked for the run (``hydra.runtime.choices``)."""
        return OmegaConf.load(self.hydra_file).hydra.runtime.choices

    def overrides(self) -> list[str]:
        """The run's command-line overrides; none when Hydra saved none."""
        path = self.overrides_file
        return list(OmegaConf.load(path)) if path.is_file() else []

    def results(self) -> dict[str, Any]:
        """The run's ``results.json`` as it is, unchecked (``attnexp.runs.record`` checks it)."""
        with open(self.results_file) as f:
            return json.load(f)

    def relative(self, path: str | Path) -> str:
        """``path`` relative to the run dir when inside it, so a moved run dir stays usable."""
        try:
            return str(Path(path).resolve().relative_to(self.path.resolve()))
        except ValueError:
            return str(path)

    def best_checkpoint(self) -> Path:
        """The checkpoint the run tested (``best_checkpoint`` in its results.json)."""
        rel = self.results().get("best_checkpoint")
        if not rel or not (self.path / rel).is_file():
            raise FileNotFoundError(
                f"ckpt_path={self.path}: its results.json names no existing best checkpoint "
                f"({rel!r}); pass a .ckpt file instead"
            )
        return self.path / rel


def last_checkpoint(cfg: DictConfig) -> Path | None:
    """Where the run of ``cfg`` keeps its ``last.ckpt`` (``callbacks.model_checkpoint.dirpath``);
    None when the checkpoint callback is switched off or does not keep a last checkpoint."""
    callback = (cfg.get("callbacks") or {}).get("model_checkpoint")
    if not callback or not callback.get("save_last") or not callback.get("dirpath"):
        return None
    return Path(str(callback.dirpath)) / LAST_CHECKPOINT
