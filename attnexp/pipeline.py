"""``train(cfg)`` and ``evaluate(cfg, ckpt)``: plain functions from a resolved config to results.

Neither reads the command line or Hydra's global state; ``attnexp.cli`` does that and calls them.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from attnexp.budget import apply_budget, matched_record
from attnexp.callbacks import FiniteLoss, MetricsProgressBar, RunStats
from attnexp.checkpoint import AtomicCheckpointIO, ConfigStamp
from attnexp.classifier import Classifier
from attnexp.config import as_plain
from attnexp.data.augment import BatchAugment
from attnexp.data.datamodule import ArrayDataModule
from attnexp.generate import record_samples
from attnexp.lm import LanguageModel, heldout_loss
from attnexp.models import build_model
from attnexp.models.common import Backbone
from attnexp.provenance import new_results
from attnexp.results import COMPLETED, FAILED, cost_metrics, write_results
from attnexp.resume import check_resumable
from attnexp.seeding import EpochSeed
from attnexp.terminal import print_lightning_logs_once
from attnexp.tracking import publish_to_wandb
from attnexp.validate import validate
from attnexp.viz import save_model_figures

print_lightning_logs_once()  # under Hydra, not once by Lightning and again by Hydra

log = logging.getLogger(__name__)
# Under data-parallel training every rank runs train(); only rank 0 writes the results file.
record = rank_zero_only(write_results)


def build_data(cfg: DictConfig) -> ArrayDataModule:
    return instantiate(cfg.dataset)


def build_module(cfg: DictConfig, model: Backbone) -> Classifier | LanguageModel:
    """The LightningModule of the run's task (``dataset.shape.task``)."""
    optim = {
        "optimizer": instantiate(cfg.optim.optimizer),
        "scheduler": instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        # A config saved before the key existed trained with weight decay on every parameter.
        "decay_matrices_only": cfg.optim.get("decay_matrices_only", False),
    }
    if model.shape.is_lm:
        return LanguageModel(model, **optim)
    return Classifier(model, num_classes=model.shape.num_classes, augment=build_augment(cfg), **optim)


def build_augment(cfg: DictConfig) -> BatchAugment:
    """The run's batch transform (``augment=...``); without the group (the default, so older
    configs and their hashes are unchanged) ``BatchAugment()``: a float batch passes untouched,
    a uint8 one becomes [0, 1] floats, as ``augment=none`` does."""
    node = cfg.get("augment")
    return instantiate(node) if node is not None else BatchAugment()


def instantiate_each(group: DictConfig | None, key: str) -> list[Any]:
    """Objects for every entry of a dict-of-configs group; ``null`` entries switch one off.

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
        objects.append(instantiate(entry))
    return objects


def build_loggers(cfg: DictConfig) -> list[Any]:
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is not None and not wandb_cfg.get("offline", False):
        _require_wandb_login()
    return instantiate_each(cfg.get("logger"), "logger")


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
    # Checkpoints are written atomically and loaded weights-only (attnexp.checkpoint).
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
    cfg: DictConfig,
    overrides: Sequence[str] = (),
    ckpt_path: str | Path | None = None,
    validated: bool = False,
) -> dict[str, Any]:
    """Fit, test the best checkpoint, and write ``results.json`` in ``cfg.paths.output_dir``.

    ``cfg`` must be resolvable without Hydra (``attnexp.cli`` resolves it inside the Hydra job).
    ``ckpt_path`` continues training from a checkpoint made with the same computed config.
    ``validated=True`` says the caller already ran ``attnexp.validate.validate(cfg)`` (the command
    line does, before importing Lightning); otherwise it runs here, so bad input never trains.
    Returns the results dict; on an exception writes it with status "failed" and re-raises.
    """
    start = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    apply_budget(cfg)  # before the hash is taken; a no-op when the command line did it
    results = new_results(cfg, overrides, run_dir)
    results["matched"] = matched_record(cfg)
    record(run_dir, results)
    try:
        if not validated:
            validate(cfg)  # bad input fails here, in well under a second
        if ckpt_path is not None:
            epoch = check_resumable(ckpt_path, cfg)
            log.info("continuing %s from %s (epoch %d)", run_dir, ckpt_path, epoch)
            results["resumed_from"] = _relative_to(str(ckpt_path), run_dir)
        L.seed_everything(cfg.seed, workers=True)
        datamodule = build_data(cfg)
        datamodule.load()  # generate/check the data before building anything that trains
        model = build_model(cfg)
        if cfg.get("compile"):
            # In place: parameter names (and so checkpoints) stay those of the plain model.
            model.compile(fullgraph=True, backend=cfg.compile_backend)
        module = build_module(cfg, model)
        stats = RunStats()
        loggers = build_loggers(cfg)
        callbacks = instantiate_each(cfg.get("callbacks"), "callbacks")
        callbacks += [stats, EpochSeed(cfg.seed), FiniteLoss(), ConfigStamp(cfg)]
        trainer = build_trainer(cfg, callbacks, loggers)
        results["params"] = model.trainable_params()
        results["attention_flops"] = model.attention_flops()
        for logger in loggers:
            logger.log_hyperparams(as_plain(cfg))

        trainer.fit(
            module, datamodule=datamodule, ckpt_path=ckpt_path and str(ckpt_path), weights_only=True
        )
        fit_metrics = _float_metrics(trainer.callback_metrics)  # test() replaces them
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        # Without a best checkpoint (fast_dev_run, no validation) test the weights in memory.
        test_metrics = _test(trainer, module, datamodule, best or None)

        results.update(
            status=COMPLETED,
            metrics={**fit_metrics, **test_metrics},
            throughput=stats.throughput,
            peak_memory_mb=stats.peak_memory_mb(),
            wall_time_s=time.perf_counter() - start,
            best_checkpoint=_relative_to(best, run_dir) if best else None,
        )
        for logger in loggers:
            logger.log_metrics(cost_metrics(results))
        # Looking inside: what the attention does on a few test samples; figures also go to W&B.
        if trainer.is_global_zero:
            n = cfg.get("figures", 4)
            examples = module.prepare(datamodule.example_batch(n))
            figures = save_model_figures(model, examples, run_dir / "figures", n)
            publish_to_wandb(loggers, results, figures)
            # What a text model writes: samples.txt and a W&B table (MQAR's ids spell nothing).
            vocab = getattr(datamodule, "vocab", None)
            if model.shape.is_lm and vocab is not None:
                record_samples(model, vocab, run_dir, cfg.seed, loggers)
    except BaseException as e:
        results.update(
            status=FAILED, error=f"{type(e).__name__}: {e}", wall_time_s=time.perf_counter() - start
        )
        record(run_dir, results)
        raise
    finally:
        _finish_wandb()
    record(run_dir, results)
    return results


def _test(
    trainer: L.Trainer, module: Classifier | LanguageModel, datamodule: Any, ckpt: str | None
) -> dict[str, float]:
    """Test metrics of ``ckpt`` (None: the weights in memory). A language model also gets
    ``heldout/loss``: that checkpoint validated once more, and its val and test losses combined
    by their token counts (``attnexp.lm.heldout_loss``)."""
    trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    metrics = _float_metrics(trainer.callback_metrics)  # test() replaced fit's metrics
    if isinstance(module, LanguageModel):
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        losses = {"val": float(trainer.callback_metrics["val/loss"]), "test": metrics["test/loss"]}
        metrics["heldout/loss"] = heldout_loss(losses, module.scored_tokens)
    return metrics


def evaluate(cfg: DictConfig, ckpt_path: str | Path) -> dict[str, float]:
    """Test metrics of ``ckpt_path`` on the test split described by ``cfg`` (the run's config)."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_data(cfg)
    datamodule.load()
    module = build_module(cfg, build_model(cfg))
    trainer = build_trainer(cfg, callbacks=[], loggers=[])
    trainer.test(module, datamodule=datamodule, ckpt_path=str(ckpt_path), weights_only=True)
    return _float_metrics(trainer.callback_metrics, prefix="test/")


def _relative_to(path: str, run_dir: Path) -> str:
    """``path`` relative to the run dir when inside it, so a moved run dir stays usable."""
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def _float_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items()) if k.startswith(prefix)}


def _finish_wandb() -> None:
    """Close a W&B run inside the task function, so the next job of a sweep starts clean."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
