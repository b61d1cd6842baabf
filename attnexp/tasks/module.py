"""What every task's LightningModule shares: the network, the optimizer and scheduler built from
partials, and the cheap training-loss logging. ``attnexp.tasks.classifier.Classifier`` and
``attnexp.tasks.lm.LanguageModel`` add their loss and metrics."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor, nn

from attnexp.data.augment import BatchAugment, model_inputs
from attnexp.tasks.optim import param_groups

EPOCH_LOSS_KEY = "train_loss_epoch_so_far"  # where a checkpoint keeps the running epoch mean


class TrainingModule(L.LightningModule):
    """Receives the built network and partials of optimizer (``params`` missing) and scheduler
    (``optimizer`` and ``total_steps`` missing; stepped every optimizer step).
    ``decay_matrices_only``: weight decay on >= 2-D parameters only (``attnexp.tasks.optim.param_groups``).
    ``augment``: the batch transform of the inputs on the device (``attnexp.data.augment``), random
    in training only; None: batches reach the model as the data module gives them."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        decay_matrices_only: bool = False,
        augment: BatchAugment | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.augment = augment
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.decay_matrices_only = decay_matrices_only
        self._loss_sum = torch.zeros(())
        self._loss_count = 0

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Augment (training) or only normalise (evaluation) the inputs where they now are: on
        the device, in whole batches; without an augment, stored uint8 pixels become [0, 1]
        floats (``model_inputs``) and other inputs pass as they are."""
        x, *rest = batch
        if self.augment is None:
            return (model_inputs(x), *rest)
        return (self.augment(x, train=self.trainer.training), *rest)

    def prepare(self, x: Tensor) -> Tensor:
        """Inputs as evaluation feeds them to the model (e.g. the figures' test samples)."""
        return model_inputs(x) if self.augment is None else self.augment(x, train=False)

    def log_train_loss(self, loss: Tensor) -> None:
        """``train/loss`` every ``log_every_n_steps`` and the epoch mean ``train/loss_epoch``."""
        # Logging every step costs as much as the step for small models: log every N steps and
        # keep the epoch mean on the device (no sync until the epoch ends).
        # On the steps where Lightning hands the logs to the loggers: the row of step N holds step
        # N's loss, and no logged value waits across a checkpoint (a continued run keeps them
        # all). The first step's too, so a run shorter than log_every_n_steps records one.
        step, every = self.global_step, self.trainer.log_every_n_steps
        if step == 0 or (step + 1) % every == 0:
            self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        self._loss_sum = self._loss_sum.to(loss.device) + loss.detach()
        self._loss_count += 1

    def log_stage(self, values: dict[str, Tensor], prog_bar_key: str) -> None:
        """Log a stage's computed metrics; the progress bar shows ``prog_bar_key``, the metric a
        run is judged by. torchmetrics already reduced them over all ranks: ``sync_dist`` only
        averages equal values (and tells Lightning so, instead of warning)."""
        for name, value in values.items():
            self.log(name, value, sync_dist=True, prog_bar=name == prog_bar_key)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The epoch mean so far: a run continued mid-epoch logs the mean the uninterrupted one does.
        checkpoint[EPOCH_LOSS_KEY] = {"sum": self._loss_sum.detach().cpu(), "count": self._loss_count}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get(EPOCH_LOSS_KEY)  # absent from checkpoints taken at an epoch's end
        if state is not None:
            self._loss_sum, self._loss_count = state["sum"], int(state["count"])

    def on_train_epoch_end(self) -> None:
        if self._loss_count:
            # The mean over all ranks' batches under data-parallel training.
            self.log("train/loss_epoch", self._loss_sum / self._loss_count, sync_dist=True)
        self._loss_sum, self._loss_count = torch.zeros(()), 0

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(
            params=param_groups(self.parameters(), self.decay_matrices_only)
        )
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=max(1, total))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
