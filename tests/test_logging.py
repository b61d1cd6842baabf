"""Loggers: W&B offline by default under the run dir, never prompting; only imported when chosen."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from attnexp import pipeline, tracking
from attnexp.config import CHOICE_GROUPS, find_run_dir, load_run_config
from attnexp.pipeline import build_loggers, train
from tests.conftest import SUBPROCESS_ENV, compose_cfg, tiny

ROOT = Path(__file__).resolve().parents[1]


def test_wandb_is_not_imported_unless_its_logger_is_chosen(data_dir):
    code = (
        "import sys; from tests.conftest import compose_cfg, tiny; "
        "from attnexp.pipeline import build_loggers; "
        f"build_loggers(compose_cfg(tiny('none', 'cnn', 'digits', {str(data_dir)!r}))); "
        "assert 'wandb' not in sys.modules, 'wandb imported'"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_default_loggers_write_csv_and_an_offline_wandb_run_in_the_run_dir(
    tmp_path, data_dir, monkeypatch
):
    """Also what the run hands W&B at the end: the summary numbers and the attention figures."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no credentials anywhere
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    seen = {}

    def publish(loggers, results, figures):  # the real one, then what the W&B run holds
        tracking.publish_to_wandb(loggers, results, figures)
        (run,) = [lg.experiment for lg in loggers if type(lg).__name__ == "WandbLogger"]
        seen.update(group=run.group, tags=set(run.tags), summary=dict(run.summary), figures=figures)

    monkeypatch.setattr(pipeline, "publish_to_wandb", publish)
    overrides = [*tiny("se", "cnn", "digits", data_dir), "logger=many", "debug=limit"]
    cfg = compose_cfg(overrides, tmp_path / "run")
    assert cfg.logger.wandb.offline is True
    assert cfg.logger.wandb.name == "se-cnn-digits-s0"
    assert cfg.logger.wandb.group == "se-cnn-digits"  # a single run: its cell (a sweep: its dir)
    results = train(cfg)
    assert results["status"] == "completed"
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert (tmp_path / "run" / "csv" / "metrics.csv").is_file()

    assert seen["group"] == "se-cnn-digits" and seen["tags"] == {"se", "cnn", "digits"}
    for key in ("val/acc_best", "test/acc", "test/f1"):
        assert seen["summary"][key] == pytest.approx(results["metrics"][key])
    for key in ("params", "throughput", "attention_flops"):
        assert seen["summary"][f"run/{key}"] == pytest.approx(results[key])
    assert [p.name for p in seen["figures"]] == ["blocks.0.slot.channel.png"]
    (offline_run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert list(offline_run.glob("files/media/images/attention/blocks.0.slot.channel*.png"))


def test_online_wandb_without_a_key_fails_before_training(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    overrides = [
        *tiny("none", "cnn", "digits", data_dir),
        "logger=wandb",
        "logger.wandb.offline=false",
    ]
    with pytest.raises(RuntimeError, match="logger.wandb.offline"):
        build_loggers(compose_cfg(overrides, tmp_path))


def test_a_checkpoint_path_leads_back_to_its_run_config(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / ".hydra" / "config.yaml").write_text(
        "seed: 3\nchoices: {attention: '${hydra:runtime.choices.attention}'}\n"
        "paths: {output_dir: '${hydra:runtime.output_dir}'}\n"
    )
    choices = "".join(f"      {g}: {g}-choice\n" for g in CHOICE_GROUPS)
    (run / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    choices:\n{choices}")
    assert find_run_dir(run / "checkpoints" / "best.ckpt") == run.resolve()
    cfg = load_run_config(run)
    assert cfg.choices.attention == "attention-choice" and cfg.paths.output_dir == str(run)
    with pytest.raises(FileNotFoundError, match="not a training run"):
        find_run_dir(tmp_path)


def test_a_run_config_keeps_the_run_name_its_experiment_gave(tmp_path):
    """design_space names its variant by its knobs; eval and resume must not rename it to the
    group's option (the report would merge the 15 combinations into one ``mha`` row)."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        "attention: {score: l2, normalize: max}\n"
        "choices:\n"
        "  attention: mha-${attention.score}-${attention.normalize}\n"
        "  backbone: ${hydra:runtime.choices.backbone}\n"
        "paths: {output_dir: '${hydra:runtime.output_dir}'}\n"
    )
    choices = "".join(f"      {g}: {g}-choice\n" for g in CHOICE_GROUPS)
    (run / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    choices:\n{choices}")
    cfg = load_run_config(run)
    assert cfg.choices.attention == "mha-l2-max"
    assert cfg.choices.backbone == "backbone-choice"
    assert cfg.choices.dataset == "dataset-choice"  # absent from the saved choices: filled in


def test_a_composed_config_keeps_the_run_name_its_experiment_gave(tmp_path):
    cfg = compose_cfg(["experiment=design_space", "attention.score=pearson"], tmp_path)
    assert cfg.choices.attention == "mha-pearson-softmax"
    assert cfg.choices.experiment == "design_space" and cfg.choices.backbone == "transformer"
    assert cfg.paths.output_dir == str(tmp_path)
