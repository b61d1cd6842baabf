"""Command-line entry points: the only code that talks to Hydra.

``train_main`` and ``eval_main`` resolve the config inside the Hydra job (where ``${hydra:...}``
works) and hand plain configs to ``attnexp.pipeline``; ``sample_main`` hands a run's config to
``attnexp.generate.sample_run``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import MISSING, DictConfig, OmegaConf

from attnexp.config import (
    CONFIG_DIR,
    best_checkpoint,
    find_run_dir,
    load_run_config,
    register_resolvers,
)
from attnexp.provenance import new_results
from attnexp.results import FAILED, atomic_write_text, write_results
from attnexp.resume import plan_start
from attnexp.terminal import quiet_dependencies
from attnexp.validate import validate

register_resolvers()
log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    """Train one configuration; returns the metric named by ``objective`` for sweepers.

    In a multirun a failed job returns NaN instead of raising (its results.json says why), so the
    sweep goes on and ends with ``attnexp.sweep.SweepSummary``, which exits non-zero.
    """
    from attnexp.sweep import available_cores, threads_per_job

    quiet_dependencies()
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    n_jobs = hydra_cfg.launcher.get("n_jobs")  # joblib: jobs share the cores
    if n_jobs is not None:
        import torch

        cores = available_cores()
        torch.set_num_threads(threads_per_job(n_jobs, cores))
        log.info("%d torch threads per job (n_jobs=%d on %d cores)", torch.get_num_threads(), n_jobs, cores)  # fmt: skip
    try:
        # resume=, a job completed before (skipped) or interrupted (continued): attnexp.resume
        start = plan_start(cfg, overrides)
        cfg, overrides, done = start.cfg, start.overrides, start.done
        if done is not None:
            log.info("skipped %s: completed before with the same config (force=true re-runs it)",
                     cfg.paths.output_dir)  # fmt: skip
            return done["metrics"].get(cfg.get("objective"))
        try:
            validate(cfg)  # before the slow Lightning import: a bad value fails in seconds
        except Exception as e:
            refused = new_results(cfg, overrides, Path(cfg.paths.output_dir))
            write_results(
                cfg.paths.output_dir, {**refused, "status": FAILED, "error": f"{type(e).__name__}: {e}"}
            )
            raise
        from attnexp.pipeline import train  # after Hydra parsed the command line: --help stays fast

        results = train(cfg, overrides=overrides, ckpt_path=start.ckpt_path, validated=True)
    except Exception:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            raise
        log.exception("job failed; recorded in %s", Path(cfg.paths.output_dir) / "results.json")
        return math.nan
    log.info("results: %s", Path(cfg.paths.output_dir) / "results.json")
    return results["metrics"].get(cfg.get("objective"))


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def eval_main(cfg: DictConfig) -> dict[str, float]:
    """Re-evaluate a run's checkpoint on its test split with the config saved in its run dir."""
    from attnexp.pipeline import evaluate

    quiet_dependencies()
    run_dir, ckpt = run_and_checkpoint(cfg.ckpt_path)
    run_cfg = load_run_config(run_dir)
    # The run's own trainer settings (e.g. batch limits) keep the numbers comparable; only where
    # to evaluate is this command's choice.
    run_cfg.trainer.accelerator = cfg.accelerator
    run_cfg.trainer.devices = cfg.devices
    OmegaConf.resolve(run_cfg)
    metrics = evaluate(run_cfg, ckpt)
    out = {"ckpt_path": str(ckpt.resolve()), "run_dir": str(run_dir), "metrics": metrics}
    atomic_write_text(
        Path(HydraConfig.get().runtime.output_dir) / "eval.json", json.dumps(out, indent=2) + "\n"
    )
    log.info("test metrics of %s: %s", ckpt, metrics)
    return metrics


def run_and_checkpoint(ckpt_path: str) -> tuple[Path, Path]:
    """``ckpt_path=`` of eval and sample: a .ckpt file, or a run dir (its tested checkpoint)."""
    given = Path(ckpt_path)
    run_dir = find_run_dir(given)
    return run_dir, given if given.is_file() else best_checkpoint(run_dir)


def sample_main() -> list[str]:
    """Print samples from a language model run: ``python sample.py ckpt_path=<run dir or .ckpt>``."""
    quiet_dependencies()
    _register_sample_schema()
    return _sample_job()


def _register_sample_schema() -> None:
    """``sample.py``'s keys: ``SampleSettings``' (their defaults live there), ``ckpt_path`` and
    ``device``. Registered when sampling starts, not at import: ``train.py --help`` needs no torch."""
    from attnexp.generate import SampleSettings

    @dataclass
    class SampleCommand(SampleSettings):
        ckpt_path: str = MISSING
        device: str = "cpu"
        paths: Any = None  # conf/paths: where this command's log and samples.txt go

    ConfigStore.instance().store(name="sample_schema", node=SampleCommand)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="sample")
def _sample_job(cfg: DictConfig) -> list[str]:
    from attnexp.generate import SAMPLES_FILE, SampleSettings, format_samples, sample_run

    settings = SampleSettings(**{f.name: cfg[f.name] for f in fields(SampleSettings)})
    run_dir, ckpt = run_and_checkpoint(cfg.ckpt_path)
    run_cfg = load_run_config(run_dir)
    OmegaConf.resolve(run_cfg)
    samples = sample_run(run_cfg, ckpt, settings, cfg.device)
    text = format_samples(samples)
    print(text, end="")
    atomic_write_text(Path(HydraConfig.get().runtime.output_dir) / SAMPLES_FILE, text)
    return samples
