"""callbacks.stop_at: a run ends after the first validation whose metric passes the threshold
(Zoology: validation accuracy above 0.99), and a bad setting is refused before training."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from attnexp.config.validate import validate
from attnexp.training.callbacks import StopAtThreshold
from attnexp.training.pipeline import instantiate_each
from tests.conftest import compose_cfg, tiny


class Scripted(L.LightningModule):
    """Logs ``values[i]`` as ``metric`` at the i-th validation and counts its training epochs."""

    def __init__(self, metric: str, values: list[float]) -> None:
        super().__init__()
        self.net = nn.Linear(1, 1)
        self.metric, self.values = metric, values
        self.epochs = 0

    def on_train_epoch_start(self) -> None:
        self.epochs += 1

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log(self.metric, self.values[self.epochs - 1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def epochs_trained(callback: StopAtThreshold, metric: str, values: list[float], tmp_path) -> int:
    data = DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=2)
    trainer = L.Trainer(
        max_epochs=len(values), accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[callback], default_root_dir=tmp_path,
    )  # fmt: skip
    module = Scripted(metric, values)
    trainer.fit(module, data, data)
    return module.epochs


@pytest.mark.parametrize(
    ("mode", "metric", "values", "epochs"),
    [
        ("max", "val/acc", [0.5, 0.99, 0.995, 1.0, 1.0], 3),  # 0.99 is not above 0.99
        ("min", "val/loss", [2.0, 0.99, 0.5, 0.1, 0.1], 3),  # 0.99 is not below 0.99
        ("max", "val/acc", [0.5] * 6, 6),  # never passes: no patience ends it early
    ],
)
def test_training_ends_after_the_first_validation_past_the_threshold(
    mode, metric, values, epochs, tmp_path
):
    callback = StopAtThreshold(monitor=metric, threshold=0.99, mode=mode)
    assert epochs_trained(callback, metric, values, tmp_path) == epochs


def test_off_by_default_and_built_from_the_config(data_dir):
    overrides = tiny("mha", "transformer", "digits", data_dir)
    assert compose_cfg(overrides).callbacks.stop_at is None
    stop = "callbacks.stop_at={_target_:attnexp.training.callbacks.StopAtThreshold,monitor:val/acc,threshold:0.9}"
    cfg = compose_cfg([*overrides, stop])
    (callback,) = [c for c in instantiate_each(cfg.callbacks, "callbacks") if isinstance(c, StopAtThreshold)]  # fmt: skip
    assert (callback.monitor, callback.stopping_threshold, callback.mode) == ("val/acc", 0.9, "max")


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ("monitor:val/accuracy,threshold:0.9", r"stop_at\.monitor must be a validation metric the classification task logs \(.*val/acc"),  # noqa: E501
        ("monitor:test/acc,threshold:0.9", r"stop_at\.monitor must be a validation metric"),
        ("monitor:val/loss,threshold:0.1", r"stop_at\.mode=max watches val/loss the wrong way: .*stop_at\.mode=min"),  # noqa: E501
        ("monitor:val/acc,threshold:0.9,mode:up", r"stop_at\.mode must be one of max, min, got 'up'"),  # noqa: E501
        ("monitor:val/acc,threshold:high", r"stop_at\.threshold must be a number, got 'high'"),
    ],
)  # fmt: skip
def test_a_bad_stop_at_is_refused_with_the_key_named(setting, match, data_dir):
    target = "_target_:attnexp.training.callbacks.StopAtThreshold"
    cfg = compose_cfg(
        [*tiny("mha", "transformer", "digits", data_dir), f"callbacks.stop_at={{{target},{setting}}}"]
    )
    with pytest.raises(ValueError, match=match):
        validate(cfg)
