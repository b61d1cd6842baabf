"""The run's own Lightning callbacks: measurements (training throughput and peak memory), the
reseeding per epoch, the loss guard, the stop at a threshold and the progress bar."""

from __future__ import annotations

import resource
import sys
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, RichProgressBar

from attnexp.util.seeding import derive_seed, seed_all


class RunStats(L.Callback):
    """Training throughput and peak memory (GPU allocator peak, or process peak RSS on CPU).

    Throughput: samples/s over the training epochs, validation excluded. Each batch is charged
    the time since the previous batch ended (or since its epoch started), so fetching the batch
    and every Lightning hook between batches count, as they would in a hand-written loop's
    wall time; the first batch of the fit is skipped as warm-up.
    """

    def __init__(self) -> None:
        self.samples = 0
        self.seconds = 0.0
        self._seen_first = False
        self._last: float | None = None
        self._cuda = False

    def on_fit_start(self, trainer, pl_module) -> None:
        self._cuda = pl_module.device.type == "cuda"
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def _now(self) -> float:
        if self._cuda:  # CUDA is asynchronous: time the work, not the launch
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = self._now()
        if self._seen_first:
            self.seconds += now - self._last
            self.samples += len(batch[0])
        self._seen_first = True
        self._last = now

    @property
    def throughput(self) -> float | None:
        return self.samples / self.seconds if self.seconds > 0 else None

    def peak_memory_mb(self) -> float:
        if self._cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB else


class FiniteLoss(L.Callback):
    """Stop at the first NaN or infinite training loss, naming the step.

    Raising here (before any later checkpoint) leaves ``last.ckpt`` at the last good epoch, and the
    pipeline marks the run failed with this message.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss).all():
            ckpt = trainer.checkpoint_callback
            last = getattr(ckpt, "last_model_path", "") or "none saved yet"
            raise FloatingPointError(
                f"training loss became {loss.item()} at step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}, batch {batch_idx}); last good checkpoint: "
                f"{last}. Try a lower optim.optimizer.lr or gradient clipping "
                "(trainer.gradient_clip_val)"
            )


class StopAtThreshold(EarlyStopping):
    """End training after the first validation where ``monitor`` passes ``threshold``: strictly
    above it with ``mode="max"``, below with ``"min"`` (Zoology stops a run once its validation
    accuracy is above 0.99: ``early_stopping_threshold`` in its train.py).

    Lightning's EarlyStopping with its stopping threshold alone: no patience, and a non-finite
    metric is left to ``FiniteLoss``. ``callbacks.stop_at`` in the config; attnexp.config.validate checks
    that ``monitor`` is a validation metric the task logs and ``mode`` its direction.
    """

    def __init__(self, monitor: str, threshold: float, mode: str = "max") -> None:
        super().__init__(
            monitor=monitor,
            mode=mode,
            stopping_threshold=threshold,
            patience=sys.maxsize,
            check_finite=False,
            verbose=True,  # Lightning logs the reason once, when it stops
        )


class MetricsProgressBar(RichProgressBar):
    """The progress bar shows what the model logs with ``prog_bar=True`` (train loss, the
    validation metric) and not the logger's version (``v_num``: a W&B run id says nothing)."""

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class EpochSeed(L.Callback):
    """Reseed the global RNGs from (seed, epoch) at the start of each training epoch."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Distinct streams per rank, so data-parallel replicas do not drop the same units.
        seed_all(derive_seed(self.seed, trainer.current_epoch, trainer.global_rank))
