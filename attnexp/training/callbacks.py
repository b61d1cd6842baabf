"""The run's own Lightning callbacks: measurements (training throughput and peak memory), the
reseeding per epoch, step checkpoints, the stop on a signal, the loss guard, the stop at a
threshold and the progress bar."""

from __future__ import annotations

import logging
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, RichProgressBar

from attnexp.data.datamodule import Resumable
from attnexp.runs.layout import LAST_CHECKPOINT
from attnexp.runs.record import STOP_SIGNALS, Interrupted
from attnexp.util.checks import check_positive
from attnexp.util.seeding import derive_seed, rng_states, seed_all, set_rng_states

log = logging.getLogger(__name__)


class RunStats(L.Callback):
    """Training throughput, wall time and peak memory (GPU allocator peak, or process peak RSS on
    CPU).

    Throughput: samples/s over the training epochs, validation excluded. Each batch is charged
    the time since the previous batch ended (or since its epoch started), so fetching the batch
    and every Lightning hook between batches count, as they would in a hand-written loop's
    wall time; the first batch of each fit is skipped as warm-up.

    A continued run counts its earlier segments: the samples, their seconds and the wall time so
    far travel in every checkpoint, so a run stopped and continued reports the time that made its
    result (what a stop lost after its last checkpoint is done again, and counted once). Peak
    memory is the last segment's (a process's peak cannot be carried).
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()  # this segment's start
        self.carried = 0.0  # wall seconds of the earlier segments, up to the restored checkpoint
        self.samples = 0
        self.seconds = 0.0
        self._seen_first = False
        self._last: float | None = None
        self._cuda = False

    def state_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "seconds": self.seconds, "wall_s": self.wall_time()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.samples, self.seconds = state_dict["samples"], state_dict["seconds"]
        self.carried = state_dict["wall_s"]

    def wall_time(self) -> float:
        """Seconds since the run started, over all its segments."""
        return self.carried + time.perf_counter() - self.started

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
    """Reseed the global RNGs from (seed, epoch, rank) at the start of each training epoch, and
    carry their states in every checkpoint: a run restored mid-epoch (Lightning calls no epoch
    start then) puts them back before its first batch and draws what the uninterrupted run drew."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.restored: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}  # as they are when the checkpoint is taken

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = state_dict.get("rng")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.restored = None  # a fresh epoch: its own seed
        # Distinct streams per rank, so data-parallel replicas do not drop the same units.
        seed_all(derive_seed(self.seed, trainer.current_epoch, trainer.global_rank))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.restored is not None:
            set_rng_states(self.restored)
            self.restored = None


class TrainingPosition(L.Callback):
    """Where a restored run stands, made right before its first batch.

    - The training loader's place in its epoch (``attnexp.data.datamodule.Resumable``) travels in
      every checkpoint and is given back. Lightning has a path for this, but skips it when the
      loader was built before the restore, as it is whenever the scheduler asks for the number of
      steps (``estimated_stepping_batches``).
    - The loggers' step (Lightning's count of batches that stepped) is set to the global step it
      equals in every uninterrupted run without gradient accumulation: Lightning adds one on
      restarts it takes for mid-epoch, and a step-based run (``max_epochs=-1``) restored from a
      checkpoint taken at the end of an epoch is one, so its rows would be logged a step late."""

    def __init__(self) -> None:
        self.trainer: L.Trainer | None = None  # Lightning asks state_dict() without it
        self.restored: dict[str, Any] | None = None
        self.first_batch = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        loader = None if self.trainer is None else self.trainer.train_dataloader
        return {"loader": loader.state_dict() if isinstance(loader, Resumable) else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = state_dict.get("loader")

    def on_train_start(self, trainer, pl_module) -> None:
        loader = trainer.train_dataloader
        if self.restored is not None and isinstance(loader, Resumable):
            loader.load_state_dict(self.restored)
        self.restored = None
        self.first_batch = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # After Lightning's own adjustment, which it makes when the epoch loop starts.
        if self.first_batch and trainer.accumulate_grad_batches == 1:
            trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step
        self.first_batch = False


def save_last(trainer: L.Trainer) -> Path | None:
    """Write the checkpoint callback's ``last.ckpt`` now (None without a checkpoint callback)."""
    callback = trainer.checkpoint_callback
    if callback is None or not callback.dirpath:
        return None
    path = Path(callback.dirpath) / LAST_CHECKPOINT
    trainer.save_checkpoint(path)
    callback.last_model_path = str(path)
    return path


def logs_flushed(trainer: L.Trainer) -> bool:
    """Whether, at this training batch's end, no logged value waits to be handed to the loggers.
    The training module logs on the batches where Lightning hands the logs over
    (``log_every_n_steps``), and Lightning does so after this hook: a checkpoint taken on such a
    batch would lose the value (the continued run never logs it again). Any other batch is safe."""
    return trainer.global_step % trainer.log_every_n_steps != 0


def safe_to_stop(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether a checkpoint taken at the end of training batch ``batch_idx`` lets a run continue
    exactly: no logged value waits for the loggers (``logs_flushed``), and it is not the epoch's
    last batch (Lightning restores such a checkpoint as the start of the next epoch, and the
    validation that ends this one would never run)."""
    return logs_flushed(trainer) and batch_idx + 1 < trainer.num_training_batches


class StepCheckpoint(L.Callback):
    """Write ``last.ckpt`` every ``every_n_steps`` training steps and at least every
    ``every_minutes`` minutes of training (null: not by that measure), so a killed run loses
    minutes, not epochs. The checkpoint holds the loop's position, the training loader's place in
    its epoch and the RNG states: a run continued from it is the uninterrupted run. A checkpoint
    that is due waits for a batch where that holds (``safe_to_stop``); after an epoch's last
    batch the checkpoint taken after its validation follows at once."""

    def __init__(self, every_n_steps: int | None = None, every_minutes: float | None = 10.0) -> None:
        if every_n_steps is not None:
            check_positive("callbacks.step_checkpoint.every_n_steps", every_n_steps)
        if every_minutes is not None and not (
            isinstance(every_minutes, int | float) and not isinstance(every_minutes, bool)
            and every_minutes > 0
        ):  # fmt: skip
            raise ValueError(
                "callbacks.step_checkpoint.every_minutes must be a positive number or null, "
                f"got {every_minutes!r}"
            )
        self.every_n_steps, self.every_minutes = every_n_steps, every_minutes
        self.last_saved, self.due = time.monotonic(), False

    def on_train_start(self, trainer, pl_module) -> None:
        self.last_saved, self.due = time.monotonic(), False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        by_steps = self.every_n_steps and trainer.global_step % self.every_n_steps == 0
        by_time = self.every_minutes and time.monotonic() - self.last_saved >= 60 * self.every_minutes
        self.due = self.due or bool(by_steps or by_time)
        if self.due and safe_to_stop(trainer, batch_idx) and save_last(trainer):
            self.last_saved, self.due = time.monotonic(), False


class StopOnSignal(L.Callback):
    """Stop soon after a stop signal arrives: at the end of the training batch under way, or of the
    next one where a checkpoint lets the run continue exactly (``safe_to_stop``: after the
    validation that ends an epoch, at the latest), save ``last.ckpt`` there, then raise ``Interrupted`` (the pipeline records the run
    ``interrupted``). A second Ctrl-C stops at once. Replaces Lightning's own handlers for these
    signals while training runs (its SIGUSR1 handler would write an ``hpc_ckpt`` that Lightning
    restores behind the run's back); they are restored when training ends."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self.received = None
        for signum in STOP_SIGNALS:
            self.previous[signum] = signal.signal(signum, self.handle)

    def handle(self, signum: int, frame: Any) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = signum
        log.warning("received %s: stopping after this training batch", signal.Signals(signum).name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received is not None and safe_to_stop(trainer, batch_idx):
            then = self.previous.get(self.received)
            raise Interrupted(self.received, trainer.global_step, save_last(trainer), then)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}
