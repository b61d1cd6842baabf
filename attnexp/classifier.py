"""The one LightningModule: classification with any backbone, optimizer and scheduler."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from attnexp.data.augment import BatchAugment
from attnexp.module import TrainingModule
from attnexp.results import TOP_K

VAL_METRIC = "val/acc"  # its best is val/acc_best; the progress bar shows it


def classification_metrics(num_classes: int) -> MetricCollection:
    """Accuracy, macro F1, and top-5 accuracy when there are more than 5 classes: the test
    metrics ``attnexp.results.classification`` declares (tests/test_results.py checks they agree)."""
    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
    }
    if num_classes > TOP_K:
        metrics[f"acc_top{TOP_K}"] = MulticlassAccuracy(num_classes, top_k=TOP_K, average="micro")
    return MetricCollection(metrics)


class Classifier(TrainingModule):
    """One label per sample: cross-entropy, the classification metrics and the best val/acc."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        decay_matrices_only: bool = False,
        augment: BatchAugment | None = None,
    ) -> None:
        super().__init__(model, optimizer, scheduler, decay_matrices_only, augment)
        metrics = classification_metrics(num_classes)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_loss = MeanMetric()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints: a resumed run keeps its best so far

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log_train_loss(loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_metrics.update(logits, y)
        self.val_loss.update(F.cross_entropy(logits, y), weight=len(y))

    def on_validation_epoch_end(self) -> None:
        values = {**self.val_metrics.compute(), "val/loss": self.val_loss.compute()}
        self.val_metrics.reset()
        self.val_loss.reset()
        self.log_stage(values, VAL_METRIC)
        if not self.trainer.sanity_checking:  # the sanity check's untrained score is no "best"
            self.val_acc_best.update(values[VAL_METRIC])
            self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_metrics.update(self(x), y)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.test_metrics.reset()
