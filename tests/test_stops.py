"""Every kind of stop resumes exactly: a run stopped by SIGINT, SIGTERM, SIGUSR1 or SIGUSR2 saves
where it stands, is recorded ``interrupted`` and, started again, ends with the metrics and the
logged history (``csv/metrics.csv``) of a run that was never stopped; a SIGKILLed one continues
from its last step checkpoint to the same end. Classification and a language model, stopped
mid-epoch, mid-validation and between checkpoints.

The step at which a signal is sent is drawn from a seed printed by each test (``STOP_SEED=<n>``
replays it). "Exactly" means on this machine with the same thread count (one here).
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest

from attnexp.runs.record import Interrupted, read_results
from attnexp.training.pipeline import train
from tests.conftest import SUBPROCESS_ENV, compose_cfg

ROOT = Path(__file__).resolve().parents[1]

# Dropout and attention dropout make the run depend on the global RNGs, the shuffled loader on the
# batch order, the warm-up/cosine scheduler on the step count: all must be restored exactly.
# 216 training samples in batches of 8: 27 steps an epoch, 81 in all.
CLASSIFIER = [
    "attention=mha", "backbone=transformer", "dataset=digits", "trainer=cpu", "logger=csv",
    "backbone.depth=1", "backbone.dim=16", "backbone.dropout=0.2", "attention.attn_drop=0.1",
    "dataset.source.num_samples=300", "dataset.batch_size=8", "trainer.max_epochs=3",
    "trainer.log_every_n_steps=4", "figures=0",
]  # fmt: skip
CLASSIFIER_STEPS, CLASSIFIER_EPOCH = 81, 27
# A byte-level model of a small text: 3 "epochs" of 12 steps between validations.
LM = [
    "experiment=shakespeare_char_cpu", "dataset=text", "trainer=cpu", "logger=csv", "figures=0",
    "dataset.source.vocab=bytes", "dataset.shape.vocab_size=256", "backbone.depth=1",
    "backbone.dim=16", "dataset.context_len=16", "dataset.batch_size=4",
    "dataset.steps_per_epoch=12", "trainer.max_steps=36", "optim.scheduler.warmup_steps=4",
    "trainer.log_every_n_steps=4",
]  # fmt: skip
LM_STEPS, LM_EPOCH = 36, 12
COMPARED_TASKS = {"classification": CLASSIFIER, "lm": LM}


def stop_step(last: int, first: int = 1) -> int:
    """A random training step in ``[first, last)``, from a seed the test prints (``STOP_SEED``)."""
    seed = int(os.environ.get("STOP_SEED", time.time_ns() % 2**32))
    print(f"STOP_SEED={seed}")
    return random.Random(seed).randrange(first, last)


class SendSignal(L.Callback):
    """Send ``signum`` to this process once (``marker`` records that it did): at training step
    ``step`` (``where="train"``), or at the second batch of the first validation after it
    (``where="validation"``)."""

    def __init__(self, signum: int, step: int, marker: str, where: str = "train") -> None:
        self.signum, self.step, self.marker, self.where = signum, step, Path(marker), where

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.where == "train" and trainer.global_step == self.step:
            self.fire()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        late = trainer.global_step >= self.step and not trainer.sanity_checking
        if self.where == "validation" and late and batch_idx == 1:
            self.fire()

    def fire(self) -> None:
        if not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), self.signum)


def sender(signum: int, step: int, marker: Path, where: str = "train") -> list[str]:
    """The overrides that add a ``SendSignal`` callback (callbacks are not hashed: the continued
    run, composed without it, is the same run)."""
    return [
        "+callbacks.send._target_=tests.test_stops.SendSignal", f"+callbacks.send.signum={signum}",
        f"+callbacks.send.step={step}", f"+callbacks.send.marker={marker}",
        f"+callbacks.send.where={where}",
    ]  # fmt: skip


def history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_same_run(continued: Path, uninterrupted: Path) -> None:
    a, b = read_results(continued), read_results(uninterrupted)
    assert a["status"] == "completed" and a["resumed_from"] == "checkpoints/last.ckpt"
    assert a["metrics"] == b["metrics"]  # every metric, to the last bit (val/loss_best included)
    assert history(continued) == history(uninterrupted)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir) -> dict[str, tuple[list[str], Path]]:
    """One uninterrupted run of each task, and the overrides that make it."""
    root = tmp_path_factory.mktemp("uninterrupted")
    text = root / "corpus.txt"
    rng = random.Random(0)
    text.write_text("".join(rng.choice("abcdefgh \n") for _ in range(6000)))
    runs = {}
    for task, overrides in COMPARED_TASKS.items():
        full = [*overrides, f"paths.data_dir={data_dir}"]
        if task == "lm":
            full.append(f"dataset.path={text}")
        assert train(compose_cfg(full, root / task))["status"] == "completed"
        runs[task] = (full, root / task)
    return runs


@pytest.mark.parametrize(
    ("task", "signum", "where"),
    [
        ("classification", signal.SIGTERM, "train"),
        ("classification", signal.SIGINT, "validation"),
        ("lm", signal.SIGUSR1, "train"),
        ("lm", signal.SIGUSR2, "validation"),
    ],
    ids=[
        "classification-SIGTERM-mid-epoch",
        "classification-SIGINT-mid-validation",
        "lm-SIGUSR1-mid-epoch",
        "lm-SIGUSR2-mid-validation",
    ],  # fmt: skip
)
def test_a_signal_saves_where_the_run_stands_and_it_continues_exactly(
    task, signum, where, uninterrupted, tmp_path
):
    steps, epoch = (
        (CLASSIFIER_STEPS, CLASSIFIER_EPOCH) if task == "classification" else (LM_STEPS, LM_EPOCH)
    )
    # A run stops at the first batch where that is exact (not one whose logs wait to be handed
    # over, nor an epoch's last): a signal in the final few batches or the final validation lets
    # it finish, with no training left to stop. Of any 4 batches in a row, one is such a batch.
    last = steps - 4 if where == "train" else steps - epoch
    stop_and_continue(uninterrupted[task], signum, where, stop_step(last), tmp_path)


def test_a_signal_on_an_epochs_last_batch_stops_after_its_validation(uninterrupted, tmp_path):
    stop_and_continue(
        uninterrupted["classification"], signal.SIGTERM, "train", CLASSIFIER_EPOCH - 1, tmp_path
    )


def stop_and_continue(
    made: tuple[list[str], Path], signum: int, where: str, step: int, tmp_path: Path
) -> None:
    """Stop the run ``made`` by ``signum`` at ``step`` (``where``), run the same command again and
    require the uninterrupted run."""
    overrides, full = made
    run = tmp_path / "run"
    with pytest.raises(Interrupted) as stopped:
        train(compose_cfg([*overrides, *sender(signum, step, tmp_path / "sent", where)], run))
    assert stopped.value.signum == signum and stopped.value.exit_code == 128 + signum
    record = read_results(run)
    assert record["status"] == "interrupted" and signal.Signals(signum).name in record["error"]
    assert f"resume={run}" in record["error"]
    assert (run / "checkpoints" / "last.ckpt").is_file()

    assert train(compose_cfg(overrides, run))["status"] == "completed"  # the same command again
    assert_same_run(run, full)


def train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                          env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)  # fmt: skip


def test_a_killed_run_resumes_from_its_last_step_checkpoint_into_the_same_wandb_run(
    uninterrupted, tmp_path
):
    overrides, full = uninterrupted["classification"]
    step = stop_step(CLASSIFIER_STEPS, first=6)  # after the first step checkpoint
    run = tmp_path / "run"
    every = ["callbacks.step_checkpoint.every_n_steps=5", "logger=many"]  # csv and offline W&B
    killed = train_cli(*overrides, *every, *sender(signal.SIGKILL, step, tmp_path / "sent"),
                       f"hydra.run.dir={run}")  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert read_results(run)["status"] == "running"  # a SIGKILL leaves no chance to write
    first_id = read_results(run)["wandb_id"]

    resumed = train_cli(f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"continuing {run} from {run / 'checkpoints' / 'last.ckpt'}" in resumed.stdout
    assert_same_run(run, full)
    assert read_results(run)["wandb_id"] == first_id
    offline = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(f"-{first_id}") for name in offline), offline


def test_ctrl_c_at_the_command_line_exits_130_and_says_how_to_continue(uninterrupted, tmp_path):
    overrides, _ = uninterrupted["lm"]
    run = tmp_path / "run"
    proc = train_cli(*overrides, *sender(signal.SIGINT, 5, tmp_path / "sent"),
                     f"hydra.run.dir={run}")  # fmt: skip
    assert proc.returncode == 130, proc.stderr[-2000:]
    said = proc.stdout + proc.stderr
    assert "stopped by SIGINT at step" in said and f"python train.py resume={run}" in said
    assert "Traceback" not in said
    assert read_results(run)["status"] == "interrupted"


def test_the_handler_a_launcher_had_is_handed_on_after_the_run_stopped():
    """submitit requeues a job from its SIGUSR2 handler: the run's own handler takes the signal,
    and the interruption carries the launcher's handler for the command line to call once the
    run is recorded. Python's default Ctrl-C handler is not handed on (it would only raise)."""
    from types import SimpleNamespace

    from attnexp.training.callbacks import StopOnSignal

    def launcher(signum, frame):  # stands in for the cluster launcher's requeue
        pass

    trainer = SimpleNamespace(
        global_step=7, log_every_n_steps=4, checkpoint_callback=None, num_training_batches=100
    )
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGINT)}
    signal.signal(signal.SIGUSR2, launcher)
    try:
        for signum, expected in ((signal.SIGUSR2, launcher), (signal.SIGINT, None)):
            stop = StopOnSignal()
            stop.on_train_start(trainer, None)
            os.kill(os.getpid(), signum)
            with pytest.raises(Interrupted) as stopped:
                stop.on_train_batch_end(trainer, None, None, None, 0)
            stop.teardown(trainer, None, "fit")
            assert stopped.value.then is expected and stopped.value.step == 7
            assert stopped.value.checkpoint is None and "nothing saved" in str(stopped.value)
        assert signal.getsignal(signal.SIGUSR2) is launcher  # restored when training ended
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_lightning_hpc_checkpoints_are_set_aside_so_nothing_is_restored_unasked(tmp_path):
    from attnexp.training.pipeline import set_aside_hpc_checkpoints

    (tmp_path / "hpc_ckpt_3.ckpt").write_bytes(b"")
    (tmp_path / "last.ckpt").write_bytes(b"")
    assert set_aside_hpc_checkpoints(tmp_path) == [tmp_path / "hpc_ckpt_3.ckpt.unused"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hpc_ckpt_3.ckpt.unused", "last.ckpt"]


def test_a_step_based_run_killed_after_an_epoch_resumes_from_its_end_exactly(
    uninterrupted, tmp_path
):
    """A language model trains by steps (``max_epochs=-1``); killed with no step checkpoint since
    its last validation, it continues from the checkpoint taken at that epoch's end, where
    Lightning's own epoch count is off by one: the windows and the logged steps still match."""
    overrides, full = uninterrupted["lm"]
    step = stop_step(LM_STEPS, first=LM_EPOCH + 1)
    run = tmp_path / "run"
    killed = train_cli(*overrides, *sender(signal.SIGKILL, step, tmp_path / "sent"),
                       f"hydra.run.dir={run}")  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = train_cli(f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run, full)
