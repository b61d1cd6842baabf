"""RunStats: training samples/s counts the time between batches (loading, hooks), not validation."""

from __future__ import annotations

import time

import lightning as L
import pytest
import torch
from torch import nn

from attnexp.training.callbacks import RunStats

LOAD_S = 0.02  # a slow loader's time per batch


class SlowLoader:
    def __init__(self, n: int, batch: int) -> None:
        self.x, self.y = torch.randn(n, 2), torch.zeros(n, dtype=torch.long)
        self.batch = batch

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch)

    def __iter__(self):
        for start in range(0, len(self.y), self.batch):
            time.sleep(LOAD_S)
            yield self.x[start : start + self.batch], self.y[start : start + self.batch]


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 2)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        time.sleep(0.5)  # validation must not count

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_run_stats_counts_loading_but_not_validation(tmp_path):
    stats = RunStats()
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[stats], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(Tiny(), SlowLoader(10, 4), SlowLoader(4, 4))  # batches of 4, 4, 2 per epoch
    assert stats.samples == 2 * 10 - 4  # every sample of both epochs but the first batch
    counted_batches = 2 * 3 - 1
    assert stats.seconds >= counted_batches * LOAD_S  # the loader's time is in
    assert stats.seconds < counted_batches * LOAD_S + 0.4  # a validation (0.5 s) is not
    assert stats.throughput == pytest.approx(stats.samples / stats.seconds)


def test_a_continued_run_counts_its_earlier_segments():
    earlier = RunStats()
    earlier.samples, earlier.seconds = 120, 3.0
    earlier.carried = 100.0  # as if it had itself been continued after 100 s
    state = earlier.state_dict()  # what a checkpoint takes
    assert state["wall_s"] >= 100.0

    continued = RunStats()
    continued.load_state_dict(state)
    assert continued.wall_time() >= state["wall_s"]
    assert continued.wall_time() < state["wall_s"] + 5.0  # plus this segment's few moments
    assert (continued.samples, continued.seconds) == (120, 3.0)
    assert continued.throughput == pytest.approx(40.0)
