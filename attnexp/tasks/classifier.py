"""The one LightningModule: classification with any backbone, optimizer and scheduler."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from attnexp.data.augment import BatchAugment
from attnexp.tasks.module import TrainingModule
from attnexp.tasks.spec import TOP_K, classification

VAL_METRIC = "val/acc"  # its best is val/acc_best; the progress bar shows it


# How each metric the classification task may declare is computed, by its name. Which ones a run
# logs is the declaration's business (``attnexp.tasks.spec.classification``: top-5 accuracy only
# above five classes); a declared metric missing here fails when the classifier is built.
COMPUTED = {
    "acc": lambda n: MulticlassAccuracy(n, average="micro"),
    "f1": lambda n: MulticlassF1Score(n, average="macro"),
    f"acc_top{TOP_K}": lambda n: MulticlassAccuracy(n, top_k=TOP_K, average="micro"),
}


def classification_metrics(num_classes: int) -> MetricCollection:
    """The test metrics ``attnexp.tasks.spec.classification`` declares for ``num_classes``."""
    declared = [m.name for m in classification(num_classes).test_metrics]
    missing = [name for name in declared if name not in COMPUTED]
    if missing:
        raise NotImplementedError(
            f"classification declares {missing} but attnexp/tasks/classifier.py's COMPUTED "
            "has no torchmetrics for them"
        )
    # No compute groups: torchmetrics merges metrics whose states are equal after the first update,
    # which micro accuracy and macro F1 can be by chance; F1 then reads the wrong state.
    metrics = {name: COMPUTED[name](num_classes) for name in declared}
    return MetricCollection(metrics, compute_groups=False)


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
