"""Loggers: W&B offline by default under the run dir, never prompting; only imported when chosen."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from lightning.pytorch.callbacks.progress.progress_bar import get_standard_metrics

from attnexp.config.cell import CELL_GROUPS
from attnexp.runs.layout import RunDir
from attnexp.runs.prepare import load_run_config
from attnexp.training import pipeline, tracking
from attnexp.training.callbacks import MetricsProgressBar
from attnexp.training.pipeline import build_loggers, build_trainer, train
from attnexp.util.terminal import quiet_dependencies
from tests.conftest import SUBPROCESS_ENV, compose_cfg, tiny

ROOT = Path(__file__).resolve().parents[1]


def test_wandb_is_not_imported_unless_its_logger_is_chosen(data_dir):
    code = (
        "import sys; from tests.conftest import compose_cfg, tiny; "
        "from attnexp.training.pipeline import build_loggers; "
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
        seen["quiet"] = run.settings.quiet  # no history and summary printed at the end

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
    assert seen["quiet"] is True
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
    choices = "".join(f"      {g}: {g}-choice\n" for g in CELL_GROUPS)
    (run / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    choices:\n{choices}")
    assert RunDir.find(run / "checkpoints" / "best.ckpt").path == run.resolve()
    cfg = load_run_config(RunDir(run))
    assert cfg.choices.attention == "attention-choice" and cfg.paths.output_dir == str(run)
    with pytest.raises(FileNotFoundError, match="not a training run"):
        RunDir.find(tmp_path)


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
    choices = "".join(f"      {g}: {g}-choice\n" for g in CELL_GROUPS)
    (run / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    choices:\n{choices}")
    cfg = load_run_config(RunDir(run))
    assert cfg.choices.attention == "mha-l2-max"
    assert cfg.choices.backbone == "backbone-choice"
    assert cfg.choices.dataset == "dataset-choice"  # absent from the saved choices: filled in


def test_a_composed_config_keeps_the_run_name_its_experiment_gave(tmp_path):
    cfg = compose_cfg(["experiment=design_space", "attention.score=pearson"], tmp_path)
    assert cfg.choices.attention == "mha-pearson-softmax"
    assert cfg.choices.experiment == "design_space" and cfg.choices.backbone == "transformer"
    assert cfg.paths.output_dir == str(tmp_path)


# What a researcher sees at the terminal (attnexp.util.terminal).
LIGHTNING_LINES = ("Seed set to 0", "GPU available:", "`Trainer.fit` stopped", "Restoring states")
ADVERTISING = ("Tip:", "litlogger", "litmodels")


def test_each_lightning_line_shows_once_and_train_log_keeps_it_once(tmp_path, data_dir):
    run = tmp_path / "run"
    cmd = [
        sys.executable, str(ROOT / "train.py"),
        *tiny("none", "cnn", "digits", data_dir), "debug=limit", f"hydra.run.dir={run}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    terminal, log_file = proc.stdout + proc.stderr, (run / "train.log").read_text()
    for line in LIGHTNING_LINES:
        assert terminal.count(line) == 1, f"{line!r} printed {terminal.count(line)} times"
        assert log_file.count(line) == 1, f"{line!r} in train.log {log_file.count(line)} times"
    for text in ADVERTISING:
        assert text not in terminal and text not in log_file


def test_lightning_tips_are_dropped_at_the_logger_they_are_sent_to(caplog):
    """Both of Lightning's tips (litlogger at Trainer(), litmodels at fit/test without a
    checkpoint callback) are ``rank_zero_info`` calls; other lines of that logger stay."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    quiet_dependencies()
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud uploads and versioning, try installing litmodels")
        rank_zero_info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_dependency_deprecations_are_filtered_and_the_projects_own_warnings_pass():
    from lightning.pytorch.utilities._pytree import _tree_flatten

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_dependencies()
        _tree_flatten(1)  # Lightning's use of torch's deprecated LeafSpec: a FutureWarning
        for module in ("torch.nn.modules", "wandb.sdk", "lightning", "attnexp.training.viz", "attnexp"):
            warnings.warn_explicit("deprecated", DeprecationWarning, "x.py", 1, module=module)
        warnings.warn_explicit("from a script", FutureWarning, "x.py", 1, module="__main__")
        warnings.warn_explicit("ours", UserWarning, "viz.py", 1, module="attnexp.training.viz")
        hint = "smaller than the logging interval"  # Lightning's, about the user's own setting
        warnings.warn_explicit(hint, UserWarning, "fit_loop.py", 1, module="lightning.pytorch")
        warnings.warn_explicit("near", DeprecationWarning, "x.py", 1, module="torchvisionish")
    shown = [(w.category, str(w.message)) for w in caught]
    assert shown == [
        (DeprecationWarning, "deprecated"),  # attnexp.training.viz
        (DeprecationWarning, "deprecated"),  # attnexp
        (FutureWarning, "from a script"),
        (UserWarning, "ours"),
        (UserWarning, hint),
        (DeprecationWarning, "near"),  # not a dependency: only whole package names match
    ]


def test_the_progress_bar_shows_train_loss_and_val_metric_and_no_run_id(
    tmp_path, data_dir, monkeypatch
):
    shown, standard = [], []

    class Recorded(MetricsProgressBar):
        def get_metrics(self, trainer, pl_module):
            standard.append(dict(get_standard_metrics(trainer)))
            shown.append(super().get_metrics(trainer, pl_module))
            return shown[-1]

    monkeypatch.setattr(pipeline, "MetricsProgressBar", Recorded)
    overrides = [
        *tiny("none", "cnn", "digits", data_dir), "debug=limit", "trainer.enable_progress_bar=true",
        "logger.csv.version=run7",  # a logger version, as W&B's run id is, which Lightning shows
    ]  # fmt: skip
    assert train(compose_cfg(overrides, tmp_path))["status"] == "completed"
    assert {"v_num": "run7"} in standard
    assert shown and not any("v_num" in s for s in shown)
    assert {"train/loss", "val/acc"} <= set(shown[-2])  # the end of fit (the last is test's)
    assert not any("val/f1" in s or "val/loss" in s for s in shown)  # only the watched ones


def test_without_a_terminal_there_is_no_progress_bar(tmp_path, data_dir):
    cfg = compose_cfg([*tiny("none", "cnn", "digits", data_dir), "debug=limit"], tmp_path)
    trainer = build_trainer(cfg, callbacks=[], loggers=[])  # pytest's stdout is no terminal
    assert trainer.progress_bar_callback is None


def test_warnings_asked_for_on_the_command_line_are_not_filtered(monkeypatch):
    monkeypatch.setattr(sys, "warnoptions", ["default"])  # python -W default / PYTHONWARNINGS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_dependencies()
        warnings.warn_explicit("deprecated", DeprecationWarning, "x.py", 1, module="torch.nn")
    assert [str(w.message) for w in caught] == ["deprecated"]
