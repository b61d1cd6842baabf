"""Bad input: a clear message before training, naming the key, and no results.json claiming success.

Each case goes through ``train(cfg)`` as the CLI calls it; a failed run leaves a results.json that
says ``failed`` and why (that is the documented contract), never ``completed``, and no checkpoint.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from attnexp.runs.checkpoint import CheckpointError, load_checkpoint
from attnexp.runs.prepare import resumed_config
from attnexp.runs.record import read_results
from attnexp.training.pipeline import train
from tests.conftest import compose_cfg, tiny

ROOT = Path(__file__).resolve().parents[1]
LIMIT = ["debug=limit"]


def base(data_dir: Path, attention: str = "mha", backbone: str = "transformer") -> list[str]:
    return [*tiny(attention, backbone, "digits", data_dir), *LIMIT]


def assert_refused(run_dir: Path, overrides: list[str], error: type, match: str, ckpt=None) -> str:
    with pytest.raises(error, match=match) as info:
        train(compose_cfg(overrides, run_dir), ckpt_path=ckpt)
    results = read_results(run_dir)
    assert results["status"] == "failed" and results["metrics"] == {}
    assert results["error"] == f"{type(info.value).__name__}: {info.value}"
    assert not (run_dir / "checkpoints").exists()  # refused before training
    return str(info.value)


BAD_VALUES = {
    "dim not divisible by heads": (["backbone.dim=18"], r"dim=18 is not divisible by num_heads=4"),
    "zero depth": (["backbone.depth=0"], r"backbone\.depth must be a positive integer, got 0"),
    "negative width": (["backbone.dim=-16"], r"backbone\.dim must be a positive integer"),
    "zero heads": (["attention.num_heads=0"], r"attention\.num_heads must be a positive integer"),
    "zero epochs": (["trainer.max_epochs=0"], r"trainer\.max_epochs must be a positive integer"),
    "image grid of rank 1": (
        ["dataset.shape.grid=[64]"], r"dataset\.shape\.grid must be a 2-D list of positive integers"
    ),
    "zero batch": (["dataset.batch_size=0"], r"dataset\.batch_size must be a positive integer"),
    "negative samples": (
        ["dataset.source.num_samples=-5"], r"dataset\.source\.num_samples must be a positive"
    ),
    "fractional depth": (["backbone.depth=1.5"], r"backbone\.depth must be a positive integer"),
    "unknown score": (["attention.score=dotty"], r"score must be one of dot, cosine, l2"),
    "unknown normalize": (["attention.normalize=softmin"], r"normalize must be one of softmax"),
    "compile not a boolean": (["compile=yes"], r"compile must be true or false, got 'yes'"),
    "unknown compile backend": (
        ["compile=true", "compile_backend=turbo"], r"compile_backend must be one of .*inductor"
    ),
    "objective not logged": (
        ["objective=val/accuracy"], r"objective must be a metric the classification task logs \(.*val/acc_best"
    ),
    "unknown objective_mode": (
        ["objective_mode=maximise"], r"objective_mode must be one of max, min, got 'maximise'"
    ),
    "objective against its direction": (
        ["objective=val/loss"], r"objective_mode=max optimises val/loss the wrong way: .*objective_mode=min"
    ),
    "batch larger than train split": (
        ["dataset.batch_size=5000"], r"dataset\.batch_size=5000 is larger than the training split"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_a_bad_value_is_refused_with_the_key_named(case, tmp_path, data_dir):
    extra, match = BAD_VALUES[case]
    assert_refused(tmp_path, [*base(data_dir), *extra], ValueError, match)


def test_an_even_muse_kernel_is_refused(tmp_path, data_dir):
    extra = ["attention.kernel_sizes=[3,4]"]
    assert_refused(
        tmp_path, [*base(data_dir, "muse"), *extra], ValueError, r"kernel_sizes must be odd"
    )


def test_a_corrupt_cached_dataset_names_the_file_and_the_fix(tmp_path):
    data_dir = tmp_path / "data"
    overrides = [*tiny("none", "cnn", "mnist1d", data_dir), *LIMIT]
    from attnexp.training.pipeline import build_data

    build_data(compose_cfg(overrides)).load()  # generates and caches the file
    (cached,) = data_dir.glob("mnist1d-*.npz")
    cached.write_bytes(cached.read_bytes()[:100])  # truncated, as by a full disk
    message = assert_refused(tmp_path / "run", overrides, ValueError, r"cached dataset file")
    assert str(cached) in message and "delete it" in message


def trained_checkpoint(tmp_path: Path, data_dir: Path) -> tuple[list[str], Path]:
    overrides = base(data_dir, "none", "cnn")
    assert train(compose_cfg(overrides, tmp_path / "good"))["status"] == "completed"
    return overrides, tmp_path / "good" / "checkpoints" / "last.ckpt"


def test_checkpoints_that_do_not_exist_are_corrupt_or_from_another_config_are_refused(
    tmp_path, data_dir
):
    overrides, good = trained_checkpoint(tmp_path, data_dir)
    assert_refused(tmp_path / "a", overrides, FileNotFoundError, "does not exist", "nope.ckpt")

    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(good.read_bytes()[:1000])
    assert_refused(tmp_path / "b", overrides, CheckpointError, "corrupt", corrupt)

    other = [*overrides, "backbone.dim=24", "optim.optimizer.lr=0.01"]
    message = assert_refused(tmp_path / "c", other, CheckpointError, "another config", good)
    assert "backbone.dim: checkpoint 16, this run 24" in message
    assert "optim.optimizer.lr: checkpoint 0.003, this run 0.01" in message

    # Where and how long to train may change: a longer run continues from it.
    longer = train(
        compose_cfg([*overrides, "trainer.max_epochs=2"], tmp_path / "d"), ckpt_path=good
    )
    assert longer["status"] == "completed" and longer["resumed_from"] == str(good)


class _RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_on_load_is_refused(tmp_path, data_dir):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(evil)
    overrides = base(data_dir, "none", "cnn")
    assert_refused(tmp_path / "run", overrides, CheckpointError, "refusing to load", evil)
    assert not marker.exists()


class PoisonWeights(L.Callback):
    """Test-only: set the weights to NaN when the second epoch starts (a diverging run)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, data_dir
):
    overrides = [
        *base(data_dir, "none", "cnn"), "trainer.max_epochs=3",
        f"+callbacks.poison._target_={__name__}.PoisonWeights",
    ]  # fmt: skip
    cfg = compose_cfg(overrides, tmp_path)
    with pytest.raises(FloatingPointError, match=r"training loss became nan at step 4 \(epoch 1"):
        train(cfg)
    results = read_results(tmp_path)
    assert results["status"] == "failed" and "at step 4" in results["error"]
    last = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 0  # the last good one, from before the loss went bad
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_resume_refuses_a_missing_dir_extra_overrides_and_a_dir_that_is_no_run(tmp_path):
    # A run without a last checkpoint: tests/test_resume.py
    with pytest.raises(FileNotFoundError, match="no such directory"):
        resumed_config(tmp_path / "missing", [])
    with pytest.raises(ValueError, match=r"drop the other overrides \['seed=3'\]"):
        resumed_config(tmp_path, ["seed=3"])
    with pytest.raises(FileNotFoundError, match="not a training run"):
        resumed_config(tmp_path, [])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_command_line_exits_non_zero_with_the_message(tmp_path, data_dir):
    proc = run_cli(*base(data_dir), "backbone.depth=0", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0
    assert "backbone.depth must be a positive integer, got 0" in proc.stdout + proc.stderr
    assert read_results(tmp_path / "run")["status"] == "failed"

    proc = run_cli(f"resume={tmp_path / 'missing'}", f"hydra.run.dir={tmp_path / 'r2'}")
    assert proc.returncode != 0 and "no such directory" in proc.stdout + proc.stderr


def test_an_oversized_batch_is_refused_by_validate_without_importing_lightning(tmp_path, data_dir):
    # What the command line does first: the data's size is checked before the slow Lightning import.
    script = (
        "import sys\n"
        "from attnexp.config.validate import validate\n"
        "from tests.conftest import compose_cfg, tiny\n"
        f"cfg = compose_cfg([*tiny('mha', 'cnn', 'digits', {str(data_dir)!r}), 'dataset.batch_size=5000'])\n"
        "try:\n"
        "    validate(cfg)\n"
        "except ValueError as e:\n"
        "    print(e)\n"
        "print('lightning imported:', 'lightning' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert "dataset.batch_size=5000 is larger than the training split" in proc.stdout, proc.stderr
    assert "lightning imported: False" in proc.stdout


def test_a_checkpoint_save_that_fails_midway_leaves_the_previous_file_intact(tmp_path):
    from attnexp.runs.checkpoint import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(3)}}, path)
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a local lambda: fails part-way
        io.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.zeros(3)}, "f": lambda: 0}, path)
    assert io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_a_key_the_chosen_backbone_does_not_take_is_named(tmp_path):
    from attnexp.config.compose import compose_train_config
    from attnexp.config.validate import validate

    cfg = compose_train_config(["backbone=cnn", "+backbone.mlp_ratio=4.0"], tmp_path)
    with pytest.raises(ValueError, match=r"backbone.mlp_ratio is not a setting of backbone=cnn"):
        validate(cfg)
