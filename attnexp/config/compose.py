"""Composing a run's config: the project's OmegaConf resolvers, the run choices, composing in-process
and making a run's saved config whole again; ``resolve_run`` is the one step from a composed config
to the one a run trains (resolved, its width matched).

Run identity (the config hash) and how a job starts live in ``attnexp.runs``.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from attnexp.config.budget import Matched, apply_budget
from attnexp.config.cell import CELL_GROUPS
from attnexp.config.paths import CONFIG_DIR, PROJECT_ROOT
from attnexp.tasks.spec import check_direction, default_objective


def register_resolvers() -> None:
    """``${project_root:}``, ``${if_set:v,a,b}``, ``${run_stamp:}`` (``run_stamp``),
    ``${slurm_tasks:devices,gpus}`` (``slurm_tasks``), ``${uid:}`` (a short random suffix, cached per
    config so a sweep's jobs agree on it, as Hydra's ``${now:}`` is), ``${join:list,sep}``,
    ``${run_group:...}`` and ``${optuna_direction:max}``."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("if_set"):
        # `${if_set:${resume},a,b}`: a when resuming (the resumed run's dir), else b.
        OmegaConf.register_new_resolver(
            "if_set", lambda value, then, otherwise: then if value else otherwise
        )
    if not OmegaConf.has_resolver("uid"):
        OmegaConf.register_new_resolver("uid", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)
    if not OmegaConf.has_resolver("slurm_tasks"):
        OmegaConf.register_new_resolver("slurm_tasks", slurm_tasks)
    if not OmegaConf.has_resolver("join"):  # ${join:${attention.kernel_sizes},_} -> "1_3_5"
        OmegaConf.register_new_resolver("join", lambda xs, sep="_": sep.join(map(str, xs)))
    if not OmegaConf.has_resolver("run_group"):
        OmegaConf.register_new_resolver("run_group", run_group)
    if not OmegaConf.has_resolver("task_objective"):  # ${task_objective:lm} -> val/loss_best
        OmegaConf.register_new_resolver("task_objective", lambda t: default_objective(t)[0])
    if not OmegaConf.has_resolver("task_objective_mode"):  # ${task_objective_mode:lm} -> min
        OmegaConf.register_new_resolver("task_objective_mode", lambda t: default_objective(t)[1])
    if not OmegaConf.has_resolver("optuna_direction"):
        OmegaConf.register_new_resolver("optuna_direction", optuna_direction)


def run_stamp() -> str:
    """The last part of a run dir's name: its start time and a random suffix, cached per config;
    in a SLURM job step of several tasks (``srun --ntasks=2 python train.py trainer=ddp_cpu``),
    ``slurm-<job>.<step>`` instead, which every rank shares: each would otherwise draw its own
    time and suffix and write a run dir of its own."""
    job, step = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID")
    if job and step and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return f"slurm-{job}.{step}"
    return f"{dt.datetime.now():%Y-%m-%d_%H-%M-%S}-{secrets.token_hex(3)}"


def slurm_tasks(devices: Any, gpus_per_node: Any) -> int:
    """SLURM tasks per node for a run on ``trainer.devices`` (one per device under data-parallel
    training): the count itself, or for ``auto`` (``trainer=ddp``) the GPUs asked of each node."""
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    return gpus_per_node if isinstance(gpus_per_node, int) and gpus_per_node > 0 else 1


def optuna_direction(objective_mode: str) -> str:
    """Optuna's name for an ``objective_mode``: ``max`` -> ``maximize``, ``min`` -> ``minimize``."""
    return check_direction("objective_mode", objective_mode) + "imize"


def run_group(mode: Any, sweep_dir: str, cell: str) -> str:
    """The W&B group of a run: its sweep's dir name in a multirun (``mode`` is Hydra's run mode),
    so one sweep is one group; ``cell`` for a single run."""
    return Path(str(sweep_dir)).name if str(mode).endswith("MULTIRUN") else cell


def fill_runtime_choices(cfg: DictConfig, picked: Mapping[str, Any]) -> None:
    """Replace each ``${hydra:runtime.choices.<group>}`` entry of ``cfg.choices`` by the group's
    option in ``picked``, so ``cfg`` resolves without a running Hydra. An entry an experiment set
    to something else (``design_space`` names its runs ``mha-${attention.score}-...``) is kept."""
    raw = OmegaConf.to_container(cfg.choices, resolve=False) if cfg.get("choices") else {}
    with open_dict(cfg):
        for group in CELL_GROUPS:
            value = raw.get(group)
            if value is None or (isinstance(value, str) and value.startswith("${hydra:")):
                cfg.choices[group] = picked.get(group)


def compose_train_config(overrides: Sequence[str], output_dir: str | Path) -> DictConfig:
    """The resolved config ``train.py <overrides>`` would hand to ``train``, run in
    ``output_dir``, composed in-process (benchmarks and tests use it). As a running Hydra does, it
    sets Hydra's global config to this composition, so ``${hydra:...}`` values resolve."""
    register_resolvers()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
        cfg.paths.output_dir = str(output_dir)
    OmegaConf.resolve(cfg)
    return cfg


def saved_run_config(saved: DictConfig, runtime_choices: Mapping[str, Any], run_dir: Path) -> DictConfig:
    """A run's saved config made whole: the Hydra-runtime values it referred to filled in from
    ``runtime_choices`` (its own ``.hydra/hydra.yaml``, so nothing needs repeating on the command
    line) and its output dir the run dir. Not resolved: ``resolve_run`` does that."""
    fill_runtime_choices(saved, runtime_choices)
    saved.paths.output_dir = str(run_dir)
    return saved


def resolve_run(cfg: DictConfig) -> Matched | None:
    """Resolve ``cfg`` in place and match its width (``attnexp.config.budget``): the config a run
    trains, and so the one its hash is taken of. Deterministic: a saved config (which Hydra wrote
    before the width was matched) resolves to the width its run trained at."""
    OmegaConf.resolve(cfg)
    return apply_budget(cfg)


def as_plain(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)
