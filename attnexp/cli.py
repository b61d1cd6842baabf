"""Command-line entry points: the only code that talks to Hydra.

``train_main`` prepares the run inside the Hydra job (``attnexp.runs.prepare``: where
``${hydra:...}`` works) and hands the plan to ``attnexp.training.pipeline.run``; ``eval_main`` and
``sample_main`` hand a run's resolved config to ``attnexp.training.pipeline.evaluate`` and
``attnexp.training.generate.sample_run``.

May import: attnexp.config, attnexp.runs, attnexp.training, attnexp.util.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from attnexp.config.compose import register_resolvers, resolve_run
from attnexp.config.paths import CONFIG_DIR
from attnexp.runs.claim import Holder, claim, is_rank_zero
from attnexp.runs.layout import SAMPLES_FILE, RunDir
from attnexp.runs.prepare import SKIP, load_run_config, prepare
from attnexp.runs.record import Interrupted
from attnexp.util.checks import ConfigError
from attnexp.util.files import DiskFull, atomic_write_text, check_writable_dir
from attnexp.util.terminal import quiet_dependencies

register_resolvers()
log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    """Train one configuration; returns the metric named by ``objective`` for sweepers.

    In a multirun a failed job returns NaN instead of raising (its results.json says why), so the
    sweep goes on and ends with ``attnexp.sweep.SweepSummary``, which exits non-zero.
    """
    from attnexp.util.cores import available_cores, threads_per_job

    quiet_dependencies()
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    n_jobs = hydra_cfg.launcher.get("n_jobs")  # joblib: jobs share the cores
    if n_jobs is not None:
        import torch

        cores = available_cores()
        torch.set_num_threads(threads_per_job(n_jobs, cores))
        log.info("%d torch threads per job (n_jobs=%d on %d cores)", torch.get_num_threads(), n_jobs, cores)  # fmt: skip
    run_dir = RunDir(Path(cfg.paths.output_dir))
    held = claim(run_dir.path) if is_rank_zero() else None
    if isinstance(held, Holder):  # another live process trains this job: leave it be
        log.warning("%s is running elsewhere, in %s: not started here", run_dir.path, held)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return math.nan  # the summary lists it as running elsewhere
        raise SystemExit(1)
    try:
        if held is not None and not cfg.get("resume"):  # resume= keeps the run's saved files
            save_job_files(run_dir, cfg, hydra_cfg)
        return _train_job(cfg, overrides, hydra_cfg.mode)
    finally:
        if held is not None:
            held.release()


def save_job_files(run_dir: RunDir, cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """The job's ``.hydra/`` files (config, Hydra's config, overrides), written as Hydra would,
    but only once this process holds the run dir: Hydra writes them before the job can claim it
    (``hydra.output_subdir`` is null in ``conf/hydra/default.yaml`` so it does not), and a second
    sweep into the same dir would rewrite them under the running job and a reader of them."""
    atomic_write_text(run_dir.config_file, OmegaConf.to_yaml(cfg))
    atomic_write_text(run_dir.hydra_file, OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
    atomic_write_text(run_dir.overrides_file, OmegaConf.to_yaml(hydra_cfg.overrides.task))


def _train_job(cfg: DictConfig, overrides: list[str], mode: RunMode) -> float | None:
    try:
        # resume=, a job completed before (skipped) or interrupted (continued): attnexp.runs.prepare
        plan = prepare(cfg, overrides)
    except (ConfigError, FileNotFoundError) as e:  # a refused value; a resume= without its run
        return _refused(e, mode)
    if plan.start == SKIP:
        log.info("skipped %s: completed before with the same config (force=true re-runs it)",
                 plan.run_dir.path)  # fmt: skip
        return plan.done["metrics"].get(plan.cfg.get("objective"))
    try:
        # After Hydra parsed the command line, and the config passed: --help and refusals are fast.
        from attnexp.training.pipeline import run

        results = run(plan)
    except Interrupted as e:  # saved where it stood and recorded: one line, no traceback
        log.warning("%s; continue with `python train.py resume=%s`", e, plan.run_dir.path)
        if e.then is not None:  # e.g. a cluster launcher requeueing the job
            e.then(e.signum, None)
        raise SystemExit(e.exit_code) from None
    except DiskFull as e:
        return _refused(e, mode)
    except Exception:
        if mode != RunMode.MULTIRUN:
            raise
        log.exception("job failed; recorded in %s", plan.run_dir.results_file)
        return math.nan
    log.info("results: %s", plan.run_dir.results_file)
    return results["metrics"].get(plan.cfg.get("objective"))


def _refused(error: Exception, mode: RunMode) -> float:
    """A user's mistake or a full disk (recorded where a record could be written): one line, exit
    status 1; in a multirun NaN, so the sweep goes on and its summary names the job."""
    log.error("%s", error)
    if mode != RunMode.MULTIRUN:
        raise SystemExit(1) from None
    return math.nan


class CheckOutputDirs(Callback):
    """Before Hydra creates the run or sweep dir (``hydra.callbacks`` in
    ``conf/hydra/default.yaml``): a dir that cannot be created or written is refused in one line
    naming the key, not by a traceback from inside Hydra."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        try:
            for name in ("paths.log_dir", key):
                try:
                    value = OmegaConf.select(config, name)
                except OmegaConfBaseException:  # needs the job's Hydra config: checked there
                    continue
                if value is not None:
                    check_writable_dir(name, Path(str(value)))
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def eval_main(cfg: DictConfig) -> dict[str, float]:
    """Re-evaluate a run's checkpoint on its test split with the config saved in its run dir;
    ``dataset.*`` keys of ``conf/eval.yaml`` set change the run's data for this evaluation."""
    from attnexp.training.pipeline import evaluate

    quiet_dependencies()
    run_dir, ckpt = run_and_checkpoint(cfg.ckpt_path)
    run_cfg = load_run_config(run_dir)
    # The run's own trainer settings (e.g. batch limits) keep the numbers comparable; only where
    # to evaluate is this command's choice.
    run_cfg.trainer.accelerator = cfg.accelerator
    run_cfg.trainer.devices = cfg.devices
    changes = {k: v for k, v in cfg.dataset.items() if v is not None}
    try:
        data_cfg = evaluation_data(run_cfg, changes)
    except ValueError as e:
        log.error("%s", e)
        raise SystemExit(1) from None
    metrics = evaluate(run_cfg, ckpt, data_cfg)
    out = {"ckpt_path": str(ckpt.resolve()), "run_dir": str(run_dir.path), "dataset": changes,
           "metrics": metrics}  # fmt: skip
    atomic_write_text(
        Path(HydraConfig.get().runtime.output_dir) / "eval.json", json.dumps(out, indent=2) + "\n"
    )
    log.info("test metrics of %s%s: %s", ckpt, f" with {changes}" if changes else "", metrics)
    return metrics


def evaluation_data(run_cfg: DictConfig, changes: dict[str, Any]) -> DictConfig:
    """The run's config with ``changes`` to its ``dataset`` keys, for the data only (the model is
    built as trained); both resolved in place, the new one validated. A key the run's data lacks,
    a context longer than a model with learned positions was trained for and any value
    ``validate`` refuses raise a ValueError naming the key."""
    from attnexp.config.validate import validate

    data_cfg = copy.deepcopy(run_cfg)
    for key, value in changes.items():
        if key not in data_cfg.dataset:
            raise ValueError(
                f"dataset.{key}={value}: the run's data ({data_cfg.dataset.get('_target_')}) has no "
                f"such key; it applies to language models on token streams"
            )
        data_cfg.dataset[key] = value
    longer = changes.get("context_len", 0) > run_cfg.dataset.get("context_len", 0)
    if longer and run_cfg.backbone.get("positions") == "learned":
        raise ValueError(
            f"dataset.context_len={changes['context_len']} is longer than the "
            f"{run_cfg.dataset.context_len} tokens the run was trained on, and its learned "
            "positions (backbone.positions=learned) have no row past those: evaluate longer "
            "contexts with a model trained with backbone.positions=none and attention.rope=true "
            "or attention.alibi=true"
        )
    resolve_run(run_cfg)
    resolve_run(data_cfg)
    if changes:
        validate(data_cfg)
    return data_cfg


def run_and_checkpoint(ckpt_path: str) -> tuple[RunDir, Path]:
    """``ckpt_path=`` of eval and sample: a .ckpt file, or a run dir (its tested checkpoint)."""
    given = Path(ckpt_path)
    run_dir = RunDir.find(given)
    return run_dir, given if given.is_file() else run_dir.best_checkpoint()


def sample_main() -> list[str]:
    """Print samples from a language model run: ``python sample.py ckpt_path=<run dir or .ckpt>``."""
    quiet_dependencies()
    _register_sample_schema()
    return _sample_job()


def _register_sample_schema() -> None:
    """``sample.py``'s keys: ``SampleSettings``' (their defaults live there), ``ckpt_path`` and
    ``device``. Registered when sampling starts, not at import: ``train.py --help`` needs no torch."""
    from attnexp.training.generate import SampleSettings

    @dataclass
    class SampleCommand(SampleSettings):
        ckpt_path: str = MISSING
        device: str = "cpu"
        paths: Any = None  # conf/paths: where this command's log and samples.txt go

    ConfigStore.instance().store(name="sample_schema", node=SampleCommand)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="sample")
def _sample_job(cfg: DictConfig) -> list[str]:
    from attnexp.training.generate import SampleSettings, format_samples, sample_run

    settings = SampleSettings(**{f.name: cfg[f.name] for f in fields(SampleSettings)})
    run_dir, ckpt = run_and_checkpoint(cfg.ckpt_path)
    run_cfg = load_run_config(run_dir)
    resolve_run(run_cfg)
    start = time.perf_counter()
    try:
        samples = sample_run(run_cfg, ckpt, settings, cfg.device, say=lambda line: print(line, file=sys.stderr))
    except ValueError as e:
        log.error("%s", e)
        raise SystemExit(1) from None
    seconds = time.perf_counter() - start  # the model's set-up included: a rate a user waits for
    text = format_samples(samples)
    print(text, end="")
    new = settings.num_samples * settings.max_new_tokens
    # stderr: stdout holds the samples alone (a pipe gets the text)
    print(f"{new} new tokens in {seconds:.2f} s: {new / max(seconds, 1e-9):.1f} tokens/s",
          file=sys.stderr)  # fmt: skip
    atomic_write_text(Path(HydraConfig.get().runtime.output_dir) / SAMPLES_FILE, text)
    return samples
