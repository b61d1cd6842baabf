"""Framework overhead: training samples/s of a ``train.py`` configuration against a plain PyTorch
loop on the same model, data, batch size, optimizer and schedule, run in the same process.

The framework side is ``attnexp.pipeline.train`` itself (what ``train.py`` runs: the configured
trainer, callbacks and loggers, then the test); its samples/s is the ``RunStats`` figure it
writes to results.json. The plain side is ``measure.plain_loop_throughput`` on a fresh model built
from the same config with the same seed, over the same number of samples. Each round runs both,
framework first in even rounds and plain first in odd ones (A B B A ...), so a drift in machine
load hits both alike.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from attnexp.bench.measure import plain_loop_throughput
from attnexp.config import compose_train_config

TARGET_RATIO = 0.95  # target: the default MNIST-1D experiment at >= 0.95x the plain loop
# Measured as a run writes to files (no progress bar), with the CSV logger (W&B starts a service
# process; pass logger=many to include it).
DEFAULT_OVERRIDES = ("logger=csv", "trainer.enable_progress_bar=false")


def counted_samples(cfg: DictConfig, n_train: int) -> int:
    """Samples ``RunStats`` times in a fit of ``cfg.trainer.max_epochs`` epochs: every training
    sample of every epoch but the first batch (its warm-up)."""
    return cfg.trainer.max_epochs * n_train - min(cfg.dataset.batch_size, n_train)


def framework_round(overrides: Sequence[str], work_dir: Path) -> dict:
    """One ``train`` run of the composed config; its samples/s as results.json records it."""
    from attnexp.pipeline import train

    run_dir = Path(tempfile.mkdtemp(prefix="framework-", dir=work_dir))
    cfg = compose_train_config(overrides, run_dir)
    # Keep the benchmark's output to its figures: Lightning's banner and test table go nowhere.
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            results = train(cfg, overrides=list(overrides))
    finally:
        lightning_log.setLevel(level)
    return {"samples_per_s": results["throughput"], "wall_time_s": results["wall_time_s"]}


def uses_cuda(accelerator: str) -> bool:
    """Where Lightning trains for ``trainer.accelerator``: the plain loop must run there too."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def plain_round(cfg: DictConfig) -> dict:
    """The plain loop on what ``cfg`` trains: same model (same seed), training tensors, batch
    size, optimizer and per-step schedule, as many timed samples as the framework's fit."""
    from attnexp.models import build_model
    from attnexp.pipeline import build_data  # a LightningDataModule: this section runs train.py

    x, y = build_data(cfg).load()["train"]
    batch = cfg.dataset.batch_size
    epochs = cfg.trainer.max_epochs
    total_steps = epochs * -(-len(y) // batch)  # what Lightning's estimated_stepping_batches says
    scheduler = None
    if cfg.optim.get("scheduler"):
        make = instantiate(cfg.optim.scheduler)
        scheduler = lambda opt: make(optimizer=opt, total_steps=total_steps)  # noqa: E731
    device = torch.device("cuda" if uses_cuda(cfg.trainer.accelerator) else "cpu")
    return plain_loop_throughput(
        lambda: build_model(cfg),
        x.to(device),
        y.to(device),
        batch_size=batch,
        optimizer_factory=instantiate(cfg.optim.optimizer),
        scheduler_factory=scheduler,
        steps=max(1, counted_samples(cfg, len(y)) // batch),
        warmup_steps=1,
        seed=cfg.seed,
    )


def measure_overhead(
    overrides: Sequence[str] = (), epochs: int = 3, rounds: int = 2, work_dir: Path | None = None
) -> dict:
    """Framework and plain-loop samples/s over ``rounds`` alternating rounds, and their ratio:
    the median over rounds of framework / plain within a round (neighbours in time see the same
    load); >= ``TARGET_RATIO`` is the target."""
    if epochs < 1 or rounds < 1:
        raise ValueError(f"need epochs >= 1 and rounds >= 1, got {epochs}, {rounds}")
    overrides = [*DEFAULT_OVERRIDES, *overrides, f"trainer.max_epochs={epochs}"]
    with tempfile.TemporaryDirectory(prefix="overhead-", dir=work_dir) as tmp:
        cfg = compose_train_config(overrides, Path(tmp) / "plain")
        framework, plain = [], []
        for i in range(rounds):
            # Order A B, then B A, ...: a steady drift in load favours neither side over a pair.
            if i % 2 == 0:
                framework.append(framework_round(overrides, Path(tmp)))
                plain.append(plain_round(cfg))
            else:
                plain.append(plain_round(cfg))
                framework.append(framework_round(overrides, Path(tmp)))
    fw = statistics.median(r["samples_per_s"] for r in framework)
    pl = statistics.median(r["samples_per_s"] for r in plain)
    ratio = statistics.median(
        f["samples_per_s"] / p["samples_per_s"] for f, p in zip(framework, plain, strict=True)
    )
    return {
        "overrides": overrides,
        "choices": OmegaConf.to_container(cfg.choices),
        "loggers": sorted((cfg.get("logger") or {}).keys()),
        "callbacks": sorted(k for k, v in (cfg.get("callbacks") or {}).items() if v is not None),
        "batch_size": cfg.dataset.batch_size,
        "epochs": epochs,
        "framework_samples_per_s": [r["samples_per_s"] for r in framework],
        "plain_samples_per_s": [r["samples_per_s"] for r in plain],
        "framework": fw,
        "plain": pl,
        "ratio": ratio,
        "target": TARGET_RATIO,
        "met": ratio >= TARGET_RATIO,
    }
