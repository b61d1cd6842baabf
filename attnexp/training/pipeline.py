"""``run(plan)`` and ``evaluate(cfg, ckpt)``: plain functions from a prepared run to results.

``run`` takes the ``RunPlan`` of ``attnexp.runs.prepare`` and trains, tests and records it;
``train(cfg)`` prepares and runs in one call. Neither reads the command line or Hydra's global
state; ``attnexp.cli`` does that and calls them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from attnexp.attention.diagnostics import measure, summary
from attnexp.config.compose import as_plain
from attnexp.data.augment import BatchAugment
from attnexp.data.datamodule import ArrayDataModule
from attnexp.models import build_model
from attnexp.models.common import Backbone
from attnexp.runs.checkpoint import AtomicCheckpointIO, ConfigStamp
from attnexp.runs.layout import RunDir
from attnexp.runs.prepare import CONTINUE, SKIP, RunPlan, prepare
from attnexp.runs.record import (
    COMPLETED,
    DIAGNOSTIC_PREFIX,
    Interrupted,
    RunLog,
    cost_metrics,
    write_results,
)
from attnexp.tasks.classifier import Classifier
from attnexp.tasks.lm import LanguageModel, heldout_loss
from attnexp.training.callbacks import (
    EpochSeed,
    FiniteLoss,
    MetricsProgressBar,
    RunStats,
    StopOnSignal,
    TrainingPosition,
)
from attnexp.training.generate import record_samples
from attnexp.training.history import continue_csv, rows_before, wandb_id
from attnexp.training.tracking import publish_to_wandb
from attnexp.training.viz import save_diagnostics_figure, save_model_figures
from attnexp.util.terminal import print_lightning_logs_once

print_lightning_logs_once()  # under Hydra, not once by Lightning and again by Hydra

log = logging.getLogger(__name__)
# Under data-parallel training every rank runs train(); only rank 0 writes the results file.
WRITER = rank_zero_only(write_results)


def build_data(cfg: DictConfig) -> ArrayDataModule:
    return instantiate(cfg.dataset)


def build_module(
    cfg: DictConfig, model: Backbone, vocab: Any = None
) -> Classifier | LanguageModel:
    """The LightningModule of the run's task (``dataset.shape.task``); a language model's
    ``vocab`` (the data module's) gives the units of bits per byte and per character."""
    optim = {
        "optimizer": instantiate(cfg.optim.optimizer),
        "scheduler": instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        # A config saved before the key existed trained with weight decay on every parameter.
        "decay_matrices_only": cfg.optim.get("decay_matrices_only", False),
    }
    if model.shape.is_lm:
        return LanguageModel(model, vocab=vocab, **optim)
    return Classifier(model, num_classes=model.shape.num_classes, augment=build_augment(cfg), **optim)


def build_augment(cfg: DictConfig) -> BatchAugment:
    """The run's batch transform (``augment=...``); without the group (the default, so older
    configs and their hashes are unchanged) ``BatchAugment()``: a float batch passes untouched,
    a uint8 one becomes [0, 1] floats, as ``augment=none`` does."""
    node = cfg.get("augment")
    return instantiate(node) if node is not None else BatchAugment()


def instantiate_each(
    group: DictConfig | None, key: str, extra: dict[str, dict[str, Any]] | None = None
) -> list[Any]:
    """Objects for every entry of a dict-of-configs group; ``null`` entries switch one off;
    ``extra[name]``: keyword arguments for entry ``name`` beside its config.

    An entry without ``_target_`` is an error (a typo must not silently drop a callback).
    """
    objects = []
    for name, entry in (group or {}).items():
        if entry is None:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise ValueError(
                f"{key}.{name} must be a config with a _target_ (or null), got {entry}"
            )
        objects.append(instantiate(entry, **(extra or {}).get(name, {})))
    return objects


def build_loggers(cfg: DictConfig, wandb_run: str | None = None) -> list[Any]:
    """The run's loggers; ``wandb_run``: the id of a W&B run to continue (an interrupted run's)."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is not None and not wandb_cfg.get("offline", False):
        _require_wandb_login()
    extra = {"wandb": {"id": wandb_run, "resume": "allow"}} if wandb_run else {}
    return instantiate_each(cfg.get("logger"), "logger", extra)


def _require_wandb_login() -> None:
    """Online W&B without a key would prompt (or hang without network): refuse up front."""
    import wandb

    if not wandb.login(prompt=False, verify=False):
        raise RuntimeError(
            "logger.wandb.offline=false needs a W&B API key (`wandb login` or WANDB_API_KEY); "
            "or keep offline mode and upload later with `wandb sync`"
        )


def build_trainer(cfg: DictConfig, callbacks: list[Any], loggers: list[Any]) -> L.Trainer:
    overrides: dict[str, Any] = {}
    if cfg.trainer.get("enable_progress_bar") is None:
        # A progress bar helps at a terminal and floods a log file.
        overrides["enable_progress_bar"] = sys.stdout.isatty()
    progress_bar = overrides.get("enable_progress_bar", cfg.trainer.get("enable_progress_bar"))
    if progress_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks = [*callbacks, MetricsProgressBar()]  # train loss and val metric, no run id
    # Checkpoints are written atomically and loaded weights-only (attnexp.runs.checkpoint).
    trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        **overrides,
    )
    set_matmul_precision(isinstance(trainer.accelerator, CUDAAccelerator), str(trainer.precision))
    return trainer


FULL_PRECISION = ("32-true", "32", "64-true", "64")  # trainer.precision asking for fp32 (or fp64)


def matmul_precision(on_gpu: bool, precision: str) -> str | None:
    """The float32 matmul precision for a run: on a GPU TF32 (``high``: about 3x faster matmuls on
    Ampere and later, float32's range with a 10-bit mantissa) unless ``trainer.precision`` asks
    for full precision (``32-true``), then ``highest``; elsewhere None (left as it is)."""
    if not on_gpu:
        return None
    return "highest" if precision in FULL_PRECISION else "high"


def set_matmul_precision(on_gpu: bool, precision: str) -> None:
    """Applied once the trainer knows its accelerator; also undoes a previous run's setting when
    a sweep's runs share one process."""
    value = matmul_precision(on_gpu, precision)
    if value is not None:
        torch.set_float32_matmul_precision(value)
        log.info("float32 matmul precision: %s (trainer.precision=%s)", value, precision)


def train(
    cfg: DictConfig, overrides: Sequence[str] = (), ckpt_path: str | Path | None = None
) -> dict[str, Any]:
    """``run(prepare(cfg, overrides, ckpt_path))``: a Python caller's way to train one config, as
    the command line does (``cfg`` must resolve without Hydra: ``compose_train_config`` does that).
    A bad config raises the validation error after its failed record is written."""
    return run(prepare(cfg, overrides, ckpt_path))


def run(plan: RunPlan) -> dict[str, Any]:
    """Fit, test the best checkpoint, and write ``results.json`` in the plan's run dir.

    The plan (``attnexp.runs.prepare``) was resolved, matched, validated and its checkpoint
    checked; nothing of that is done again here. A skipped plan returns its completed results.
    Returns the results dict; on an exception writes it with status "failed" and re-raises.
    """
    if plan.start == SKIP:
        return plan.done
    stats = RunStats()  # started now: the run's wall time, its earlier segments added on restore
    cfg, run_dir = plan.cfg, plan.run_dir
    results = RunLog.open(cfg, plan.overrides, run_dir, plan.config_hash, writer=WRITER)
    results.update(matched=None if plan.matched is None else asdict(plan.matched))
    try:
        if plan.checkpoint is not None:
            log.info("continuing %s from %s (epoch %d)", run_dir.path, plan.checkpoint, plan.epoch)
            results.update(resumed_from=run_dir.relative(plan.checkpoint))
        L.seed_everything(cfg.seed, workers=True)
        datamodule = build_data(cfg)
        datamodule.load()  # generate/check the data before building anything that trains
        if hasattr(datamodule, "facts"):  # a token stream's test split and provenance
            results.update(**datamodule.facts())
        model = build_model(cfg)
        if cfg.get("compile"):
            # In place: parameter names (and so checkpoints) stay those of the plain model.
            model.compile(fullgraph=True, backend=cfg.compile_backend)
        module = build_module(cfg, model, getattr(datamodule, "vocab", None))
        loggers = build_loggers(cfg, (plan.previous or {}).get("wandb_id"))
        callbacks = instantiate_each(cfg.get("callbacks"), "callbacks")
        callbacks += [stats, EpochSeed(cfg.seed), TrainingPosition(), FiniteLoss(), ConfigStamp(cfg),
                      StopOnSignal()]  # fmt: skip
        trainer = build_trainer(cfg, callbacks, loggers)
        results.update(params=model.trainable_params(), attention_flops=model.attention_flops(),
                       state_floats=model.state_floats(),
                       wandb_id=wandb_id(loggers) if trainer.is_global_zero else None)  # fmt: skip
        _open_logs(cfg, plan, loggers)
        set_aside_hpc_checkpoints(Path(trainer.default_root_dir))
        checkpoint = None if plan.checkpoint is None else str(plan.checkpoint)
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
        fit_metrics = _float_metrics(trainer.callback_metrics)  # test() replaces them
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        # Without a best checkpoint (fast_dev_run, no validation) test the weights in memory.
        test_metrics = _test(trainer, module, datamodule, best or None)
        results.record.update(
            status=COMPLETED,
            metrics={**fit_metrics, **test_metrics},
            throughput=stats.throughput,
            peak_memory_mb=stats.peak_memory_mb(),
            wall_time_s=stats.wall_time(),
            best_checkpoint=run_dir.relative(best) if best else None,
        )
        diagnostics = _diagnose(model, module, datamodule)
        results.record.update(attention_diagnostics=diagnostics,
                              **{DIAGNOSTIC_PREFIX + k: v for k, v in summary(diagnostics).items()})  # fmt: skip
        for logger in loggers:
            logger.log_metrics(cost_metrics(results.record))
        if trainer.is_global_zero:
            _look_inside(cfg, run_dir, model, module, datamodule, loggers, results.record)
    except Interrupted as e:
        resume = f"python train.py resume={run_dir.path}"
        results.interrupt(f"{e}; continue with `{resume}` (or re-run the same command)",
                          wall_time_s=stats.wall_time())  # fmt: skip
        raise
    except BaseException as e:
        results.fail(e, wall_time_s=stats.wall_time())
        raise
    finally:
        _finish_wandb()
    return results.complete()


HPC_CHECKPOINTS = "hpc_ckpt_*.ckpt"  # Lightning's SLURM requeue checkpoints


def set_aside_hpc_checkpoints(root: Path) -> list[Path]:
    """Rename the ``hpc_ckpt_*.ckpt`` files in the trainer's root dir to ``*.unused``: Lightning
    restores the newest of them unasked, behind the run's start step (``attnexp.runs.prepare``),
    which alone decides where a run starts. This project never writes them (its SIGUSR1 handler
    replaces Lightning's); older runs may have."""
    moved = []
    for path in sorted(root.glob(HPC_CHECKPOINTS)):
        moved.append(path.rename(path.with_name(path.name + ".unused")))
        log.warning("set aside %s: Lightning would restore it behind the run's back", path)
    return moved


def _open_logs(cfg: DictConfig, plan: RunPlan, loggers: list[Any]) -> None:
    """Log the config to every logger; a continued run first gets the interrupted run's CSV rows
    from before its checkpoint back (``attnexp.training.history``)."""
    if plan.start == CONTINUE and plan.step is not None:
        header, rows = rows_before(plan.run_dir.metrics_csv, plan.step)
        for logger in loggers:
            if isinstance(logger, CSVLogger) and Path(logger.log_dir) == plan.run_dir.metrics_csv.parent:
                continue_csv(logger, header, rows)
    for logger in loggers:
        logger.log_hyperparams(as_plain(cfg))


def _look_inside(
    cfg: DictConfig,
    run_dir: RunDir,
    model: Backbone,
    module: Classifier | LanguageModel,
    datamodule: Any,
    loggers: list[Any],
    results: dict[str, Any],
) -> None:
    """What the attention does on a few test samples (figures, also to W&B), and what a text
    model writes: samples.txt and a W&B table (MQAR's ids spell nothing)."""
    n = cfg.get("figures", 4)
    examples = module.prepare(datamodule.example_batch(n))
    figures = save_model_figures(model, examples, run_dir.figures_dir, n)
    if n > 0:
        diagnostics = save_diagnostics_figure(results["attention_diagnostics"], run_dir.figures_dir)
        figures += [diagnostics] if diagnostics is not None else []
    publish_to_wandb(loggers, results, figures)
    vocab = getattr(datamodule, "vocab", None)
    if model.shape.is_lm and vocab is not None:
        record_samples(model, vocab, run_dir.samples_file, cfg.seed, loggers)


DIAGNOSTIC_SAMPLES = 16  # the first validation inputs the attention diagnostics are measured on


def _diagnose(model: Backbone, module: Classifier | LanguageModel, datamodule: Any) -> dict[str, Any]:
    """``attnexp.attention.diagnostics`` per slot on the first ``DIAGNOSTIC_SAMPLES`` validation
    inputs, with the weights the run ends with (after testing: its best checkpoint's)."""
    x = module.prepare(datamodule.example_batch(DIAGNOSTIC_SAMPLES, split="val"))
    return measure(model, x.to(next(model.parameters()).device))


def _test(
    trainer: L.Trainer, module: Classifier | LanguageModel, datamodule: Any, ckpt: str | None
) -> dict[str, float]:
    """Test metrics of ``ckpt`` (None: the weights in memory). A language model also gets
    ``heldout/loss``: that checkpoint validated once more, and its val and test losses combined
    by their token counts (``attnexp.tasks.lm.heldout_loss``)."""
    trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    metrics = _float_metrics(trainer.callback_metrics)  # test() replaced fit's metrics
    if isinstance(module, LanguageModel):
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        losses = {"val": float(trainer.callback_metrics["val/loss"]), "test": metrics["test/loss"]}
        metrics["heldout/loss"] = heldout_loss(losses, module.scored_tokens)
    return metrics


def evaluate(
    cfg: DictConfig, ckpt_path: str | Path, data_cfg: DictConfig | None = None
) -> dict[str, float]:
    """Test metrics of ``ckpt_path`` on the test split described by ``cfg`` (the run's config), or
    by ``data_cfg`` (the run's with other data keys: ``eval.py dataset.context_len=...``); the
    model is built as ``cfg`` trained it."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_data(data_cfg if data_cfg is not None else cfg)
    datamodule.load()
    module = build_module(cfg, build_model(cfg), getattr(datamodule, "vocab", None))
    trainer = build_trainer(cfg, callbacks=[], loggers=[])
    trainer.test(module, datamodule=datamodule, ckpt_path=str(ckpt_path), weights_only=True)
    return _float_metrics(trainer.callback_metrics, prefix="test/")


def _float_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items()) if k.startswith(prefix)}


def _finish_wandb() -> None:
    """Close a W&B run inside the task function, so the next job of a sweep starts clean."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
