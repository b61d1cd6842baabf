"""Runs saved by the code before the package redesign (commit 639af22) keep working.

``tests/fixtures/before_639af22`` holds two run dirs that code wrote: ``completed`` (2 epochs) and
``killed`` (3 epochs asked, SIGKILLed in epoch 1, so its record still says ``running`` and its
``last.ckpt`` is from epoch 0; the callback that killed it was removed from its saved config, which
does not enter the hash). Their configs name ``attnexp.optim.warmup_cosine``, a module that has
moved since. They are kept small: mha in a 1-block CNN of width 16 on 300 digits. Only
``hydra.runtime.choices`` of Hydra's own file is kept, and the checkpoint callback's state names
its dir as ``PLACEHOLDER``, which ``restore`` points at the copy a test works on.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from attnexp.config.compose import resolve_run
from attnexp.runs.layout import RunDir
from attnexp.runs.prepare import CONTINUE, SKIP, load_run_config, prepare
from attnexp.runs.record import read_results
from attnexp.training.pipeline import evaluate
from tests.conftest import SUBPROCESS_ENV, compose_cfg

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "before_639af22"
PLACEHOLDER = "/run-dir-before-the-move"
COMPARED = ("test/acc", "test/f1", "val/acc_best", "val/loss", "train/loss", "train/loss_epoch")


def moved(data: Any, old: str, new: str) -> Any:
    """``data`` with every string (and dict key) starting with ``old`` starting with ``new``."""
    if isinstance(data, dict):
        return {moved(k, old, new): moved(v, old, new) for k, v in data.items()}
    if isinstance(data, list):
        return [moved(v, old, new) for v in data]
    if isinstance(data, str) and data.startswith(old):
        return new + data[len(old) :]
    return data


def restore(name: str, where: Path) -> Path:
    """A copy of the fixture run ``name`` at ``where``, as it stood on the disk it was made on."""
    run = where / name
    shutil.copytree(FIXTURES / name, run)
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        torch.save(moved(torch.load(ckpt, weights_only=True), PLACEHOLDER, str(run)), ckpt)
    return run


def train_cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                          env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_a_completed_run_keeps_its_hash_so_a_sweep_rerun_skips_it(tmp_path):
    run = restore("completed", tmp_path)
    plan = prepare(compose_cfg(RunDir(run).overrides(), run))
    assert plan.start == SKIP
    assert plan.config_hash == read_results(run)["config_hash"]


def test_a_completed_run_evaluates_to_its_recorded_test_metrics(tmp_path):
    run = RunDir(restore("completed", tmp_path))
    cfg = load_run_config(run)
    assert cfg.optim.scheduler._target_ == "attnexp.tasks.optim.warmup_cosine"  # built as today
    resolve_run(cfg)
    metrics = evaluate(cfg, run.best_checkpoint())
    recorded = read_results(run.path)["metrics"]
    assert metrics["test/acc"] == recorded["test/acc"] and metrics["test/f1"] == recorded["test/f1"]


def test_a_killed_run_continues_when_its_sweep_reruns_and_resumes_to_an_uninterrupted_run(tmp_path):
    run = restore("killed", tmp_path)
    overrides = RunDir(run).overrides()
    plan = prepare(compose_cfg(overrides, run))
    assert plan.start == CONTINUE and plan.checkpoint == run / "checkpoints" / "last.ckpt"
    assert plan.epoch == 0

    out = train_cli(f"resume={run}")
    assert f"continuing {run} from {run / 'checkpoints' / 'last.ckpt'} (epoch 0)" in out
    train_cli(*overrides, f"hydra.run.dir={tmp_path / 'uninterrupted'}")
    resumed, uninterrupted = read_results(run), read_results(tmp_path / "uninterrupted")
    assert resumed["status"] == "completed" and resumed["resumed_from"] == "checkpoints/last.ckpt"
    assert resumed["config_hash"] == uninterrupted["config_hash"]
    for key in COMPARED:
        assert resumed["metrics"][key] == uninterrupted["metrics"][key], key


def test_a_knob_added_later_leaves_old_hashes_alone_until_it_is_set(data_dir, tmp_path):
    from omegaconf import OmegaConf

    from attnexp.runs.identity import ADDED_KEYS, computed_config, config_hash
    from tests.conftest import compose_cfg, tiny

    text = tmp_path / "corpus.txt"
    text.write_text("abc\n" * 50)
    runs = {  # a run of each group's keys: a classifier's attention, a language model's data
        "attention": tiny("mha", "cnn", "digits", data_dir),
        "dataset": ["dataset=text", f"dataset.path={text}", "dataset.shape.vocab_size=4"],
    }
    changed = {"num_kv_heads": 2, "qk_norm": "rms", "softcap": 2.0, "sink": True, "alibi": True,
               "gate": "headwise", "differential": True, "kv_latent_dim": 8, "forget_gate": True,
               "eval_stride": 64}  # fmt: skip
    assert set(changed) == {key for _, key in ADDED_KEYS}  # a new one: add a value that sets it
    assert {group for group, _ in ADDED_KEYS} == set(runs)
    for group, overrides in runs.items():
        cfg = compose_cfg(overrides)
        old = OmegaConf.to_container(cfg)  # as a run recorded before the keys existed
        for key in (k for g, k in ADDED_KEYS if g == group):
            assert key in old[group]
            del old[group][key]
        old = OmegaConf.create(old)
        assert config_hash(old) == config_hash(cfg)
        assert computed_config(old) == computed_config(cfg)
        for key in (k for g, k in ADDED_KEYS if g == group):
            other = compose_cfg([*overrides, f"{group}.{key}={changed[key]}"])
            assert config_hash(other) != config_hash(cfg), key
