"""Sweeps: named experiments expand to the intended jobs; resume, failure summary and joblib
through the real command line; the helpers behind them."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from attnexp.config.compose import register_resolvers, run_group
from attnexp.config.paths import CONFIG_DIR
from attnexp.runs.identity import config_hash
from attnexp.runs.prepare import SKIP, prepare
from attnexp.runs.record import find_results, read_results, write_results
from attnexp.sweep import (
    SweepSummary,
    sweep_outcome,
)
from attnexp.util.cores import available_cores, threads_per_job
from tests.conftest import compose_cfg, tiny

ROOT = Path(__file__).resolve().parents[1]

# Jobs each named study runs (its hydra.sweeper.params multiplied out); a new experiment is added
# here on purpose. mqar_recall sweeps nothing itself (the attention list is given on the command line).
EXPECTED_JOBS = {
    "cifar10_ablation": 5 * 3,
    "cifar10_resnet20": 1,
    "fineweb_gpt2": 1,
    "ablation_digits": 6 * 2 * 3,
    "ablation_mnist1d": 6 * 2 * 3,
    "design_space": 5 * 3 * 3,
    "design_space_mqar": 5 * 3 * 3,
    "listops": 7 * 3,  # every variant but pool, which cannot read the CLS token
    "listops_small": 8 * 3,
    "lm_ablation": 15 * 2 * 3,
    "modern_attention": 12 * 3,  # mha and 11 presets of conf/attention_knob
    "modern_attention_mqar": 12 * 3,  # the same on one MQAR cell
    "mqar_length": 6 * 3 * 3,
    "mqar_recall": 1,
    "muse_kernels": 5 * 2 * 3,
    "shakespeare_bpe_cpu": 1,
    "shakespeare_char": 1,
    "shakespeare_char_cpu": 1,
    "zoology_mqar": 15 * 4 * 4 * 4,
    "zoology_mqar_small": 15 * 2 * 2 * 2,  # two learning rates on a CPU
}


def sweep_params(experiment: str) -> dict[str, str]:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", [f"experiment={experiment}"], return_hydra_config=True)
    return dict(cfg.hydra.sweeper.params or {})


def expand(params: dict[str, str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of ``params``: one override list per job."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return batch


def test_every_experiment_is_listed():
    assert sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")) == sorted(
        EXPECTED_JOBS
    )


@pytest.mark.parametrize("experiment", sorted(EXPECTED_JOBS))
def test_experiment_sweeps_expand_to_the_intended_jobs(experiment):
    jobs = expand(sweep_params(experiment))
    assert len(jobs) == EXPECTED_JOBS[experiment]
    assert len({tuple(sorted(j)) for j in jobs}) == len(jobs)


def test_muse_kernel_lists_parse_as_lists():
    jobs = expand(
        {"attention.kernel_sizes": sweep_params("muse_kernels")["attention.kernel_sizes"]}
    )
    assert sorted(j[0] for j in jobs) == sorted(
        f"attention.kernel_sizes={k}" for k in ("[1,3,5]", "[3,15]", "[1]", "[3]", "[5]")
    )


@pytest.mark.parametrize(
    "experiment", ["design_space", "design_space_mqar", "mqar_length", "muse_kernels"]
)
def test_swept_values_name_their_runs_apart(experiment, data_dir):
    """A value override (not a group choice) must reach the run name, or the report would merge
    different settings into one row. Group choices and the seed are in the name by construction."""
    params = {k: v for k, v in sweep_params(experiment).items() if "." in k}
    jobs = expand(params)
    names = {
        compose_cfg([f"experiment={experiment}", f"paths.data_dir={data_dir}", *job]).run_name
        for job in jobs
    }
    assert len(names) == len(jobs) > 1


def test_muse_kernel_runs_are_named_by_their_kernels(data_dir):
    cfg = compose_cfg(["experiment=muse_kernels", "attention.kernel_sizes=[3,15]"])
    assert cfg.choices.attention == "muse-k3_15"
    assert list(cfg.attention.kernel_sizes) == [3, 15]


@pytest.mark.parametrize(
    ("n_jobs", "cores", "threads"), [(1, 8, 8), (2, 8, 4), (3, 8, 2), (16, 8, 1), (-1, 8, 1), (-2, 8, 1), (-5, 8, 2)]
)  # fmt: skip
def test_threads_per_job_share_the_cores(n_jobs, cores, threads):
    assert threads_per_job(n_jobs, cores) == threads


def test_threads_per_job_refuses_zero_jobs():
    with pytest.raises(ValueError, match="n_jobs"):
        threads_per_job(0, 4)


def test_config_hash_is_the_same_wherever_the_run_lives(data_dir, tmp_path):
    base = tiny("none", "cnn", "mnist1d", data_dir)  # mnist1d's cache dir is a path in dataset/
    here = compose_cfg([*base, f"paths.log_dir={tmp_path}/a"], tmp_path / "a" / "run")
    there = compose_cfg(
        [*base, f"paths.log_dir={tmp_path}/b", "paths.data_dir=/elsewhere/data"],
        tmp_path / "b" / "r",
    )
    assert here.trainer.default_root_dir != there.trainer.default_root_dir
    assert config_hash(here) == config_hash(there)
    assert config_hash(compose_cfg([*base, "force=true", "figures=0"])) == config_hash(
        compose_cfg(base)
    )
    assert config_hash(compose_cfg([*base, "trainer.max_epochs=3"])) != config_hash(
        compose_cfg(base)
    )


def test_a_job_is_skipped_only_for_a_completed_run_of_the_same_config(data_dir, tmp_path):
    overrides = tiny("none", "cnn", "digits", data_dir)

    def skipped(*extra: str) -> bool:
        plan = prepare(compose_cfg([*overrides, *extra], tmp_path))
        return plan.start == SKIP and plan.done == read_results(tmp_path)

    assert not skipped()  # nothing there
    done = {
        "status": "completed",
        "config_hash": config_hash(compose_cfg(overrides, tmp_path)),
        "metrics": {"val/acc_best": 0.5},
    }
    write_results(tmp_path, done)
    assert skipped()
    write_results(tmp_path, {**done, "status": "failed"})
    assert not skipped()
    write_results(tmp_path, {**done, "config_hash": "something else"})
    assert not skipped()
    write_results(tmp_path, done)
    assert not skipped("force=true")


def make_job(sweep_dir: Path, name: str, results: dict | None = None) -> None:
    """A job dir as Hydra leaves it (``.hydra/``), with ``results`` as its results.json."""
    (sweep_dir / name / ".hydra").mkdir(parents=True)
    (sweep_dir / name / ".hydra" / "config.yaml").write_text("{}")
    if results is not None:
        write_results(sweep_dir / name, results)


def test_sweep_outcome_counts_jobs_that_died_without_results(tmp_path):
    choices = {"attention": "mha", "backbone": "cnn", "dataset": "digits", "seed": 0}

    def job(name, **results):
        make_job(tmp_path, name, {"choices": choices, "metrics": {"test/acc": 0.5}, **results})

    job("0-ok", status="completed", started_at="2020-01-01T00:00:00+00:00")
    job("1-new", status="completed", started_at="2030-01-01T00:00:00+00:00")
    job("2-bad", status="failed", error="ValueError: boom")
    make_job(tmp_path, "3-died")
    job("4-running", status="running")
    # What the report cannot read is no completed job either (one reader serves both).
    job("5-no-acc", status="completed", metrics={"test/f1": 0.5})
    out = sweep_outcome(tmp_path, started=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    assert [p.name for p in out.completed] == ["0-ok", "1-new"]
    assert [p.name for p in out.reused] == ["0-ok"]
    assert [(p.name, e.split(" ")[0]) for p, e in out.failed] == [
        ("2-bad", "ValueError:"), ("3-died", "no"), ("4-running", "status"), ("5-no-acc", "no"),
    ]  # fmt: skip
    assert "metrics['test/acc']" in out.failed[-1][1]
    assert not out.ok


def test_the_end_of_a_sweep_writes_its_report_and_exits_1_only_on_failure(tmp_path, capsys):
    choices = {"attention": "mha", "backbone": "cnn", "dataset": "digits", "seed": 0}
    done = {"status": "completed", "choices": choices, "metrics": {"test/acc": 0.75}}
    make_job(tmp_path, "0-mha-cnn-digits-s0", done)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "logger": {}})
    summary = SweepSummary()
    summary.on_multirun_start(config)
    summary.on_multirun_end(config)  # no failure: returns
    assert "| digits | cnn | mha | 75.00 ± – |" in (tmp_path / "comparison.md").read_text()
    assert "1 completed, 0 failed" in capsys.readouterr().err

    make_job(tmp_path, "1-mha-cnn-digits-s1", {**done, "status": "failed", "error": "E: bad"})
    with pytest.raises(SystemExit) as exit_:
        summary.on_multirun_end(config)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "1 completed, 1 failed" in err and "failed 1-mha-cnn-digits-s1: E: bad" in err
    assert "E: bad" in (tmp_path / "comparison.md").read_text()


def test_a_sweep_groups_its_runs_in_wandb_and_a_single_run_by_its_cell():
    assert run_group("RunMode.MULTIRUN", "/x/multirun/2026-01-01_12-00-00-ab12cd", "c") == (
        "2026-01-01_12-00-00-ab12cd"
    )
    assert run_group("RunMode.RUN", "/x/multirun/whatever", "mha-cnn-digits") == "mha-cnn-digits"
    cfg = OmegaConf.create({"g": "${run_group:MULTIRUN,/a/b/sweep-1,cell}"})
    assert cfg.g == "sweep-1"


# --------------------------------------------------------------------------- the command line


def train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_sweep_runs_in_parallel_resumes_and_reports_its_failures(tmp_path, data_dir):
    """joblib with 2 jobs; the same sweep again skips both; force=true re-runs, and a job that
    fails is named in the summary, recorded, and makes the sweep exit non-zero."""
    common = [
        *tiny("mha", "cnn", "digits", data_dir), "debug=fdr", f"paths.log_dir={tmp_path}",
    ]  # fmt: skip
    first = train_cli(*common, "attention.num_heads=4,2", "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=2")  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "multirun").iterdir()
    files = find_results(sweep_dir)
    assert len(files) == 2
    assert all(read_results(f)["status"] == "completed" for f in files)
    assert all(list((f.parent / "figures").glob("*.attn.png")) for f in files)
    assert (sweep_dir / "comparison.md").is_file() and (sweep_dir / "comparison.csv").is_file()
    assert "2 completed, 0 failed" in first.stderr
    threads = threads_per_job(2, available_cores())
    for f in files:  # each worker shares the cores
        assert f"{threads} torch threads per job (n_jobs=2" in (f.parent / "train.log").read_text()
    before = {f: f.read_bytes() for f in files}
    first_started = read_results(files[0])["started_at"]

    again = train_cli(*common, "attention.num_heads=4,2", f"hydra.sweep.dir={sweep_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("skipped") >= 2
    assert "2 completed (2 skipped: completed before), 0 failed" in again.stderr
    assert {f: f.read_bytes() for f in files} == before  # nothing re-ran

    forced = train_cli(*common, "attention.num_heads=4,3", "force=true",
                       f"hydra.sweep.dir={sweep_dir}")  # fmt: skip
    assert forced.returncode != 0
    ok, bad = (read_results(f) for f in sorted(find_results(sweep_dir)))
    assert ok["status"] == "completed" and ok["started_at"] != first_started
    assert bad["status"] == "failed" and "num_heads=3" in bad["error"]
    assert "1 completed, 1 failed" in forced.stderr
    assert f"failed {Path(bad['run_dir']).name}:" in forced.stderr
    assert "num_heads=3" in (sweep_dir / "comparison.md").read_text()


def compose_hydra(overrides: list[str]):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides, return_hydra_config=True)


@pytest.mark.parametrize(("picked", "backbone"), [([], "cnn"), (["backbone=transformer"], "transformer")])
def test_one_optuna_search_tunes_lr_width_and_heads_of_either_backbone(picked, backbone):
    cfg = compose_hydra(["hparams_search=optuna", "attention=muse", *picked])
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize"
    params = {"optim.optimizer.lr", "backbone.dim", "attention.num_heads"}
    assert set(cfg.hydra.sweeper.params) == params
    assert cfg.hydra.runtime.choices.backbone == backbone
    # Every searched value is a key of the composed config (a typo would fail every trial).
    for key in cfg.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, key


@pytest.mark.parametrize(("mode", "direction"), [("max", "maximize"), ("min", "minimize")])
def test_optuna_direction_follows_objective_mode(mode, direction):
    cfg = compose_hydra(["hparams_search=optuna", f"objective_mode={mode}"])
    assert cfg.hydra.sweeper.direction == direction


def test_a_bad_objective_mode_stops_the_optuna_search_naming_the_key():
    cfg = compose_hydra(["hparams_search=optuna", "objective_mode=maximum"])
    with pytest.raises(Exception, match=r"objective_mode must be one of max, min, got 'maximum'"):
        _ = cfg.hydra.sweeper.direction


def test_slurm_launcher_composes_with_its_defaults():
    launcher = compose_hydra(["hydra/launcher=slurm"]).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.timeout_min == 60 and launcher.gpus_per_node == 1


def test_design_space_mqar_is_the_mnist1d_grid_on_mqar():
    assert sweep_params("design_space_mqar") == sweep_params("design_space")


@pytest.mark.parametrize("experiment", ["design_space_mqar", "mqar_length"])
def test_mqar_studies_train_with_the_recall_recipe(experiment, data_dir):
    """Without mqar_recall's recipe mha stays on the recall plateau, and a study of which variants
    can recall would compare plateaus."""
    study = compose_cfg([f"experiment={experiment}", f"paths.data_dir={data_dir}"])
    recall = compose_cfg(["experiment=mqar_recall", f"paths.data_dir={data_dir}"])
    assert study.dataset.source._target_ == recall.dataset.source._target_
    assert study.optim == recall.optim and study.trainer == recall.trainer
    assert study.backbone == recall.backbone


def test_design_space_runs_are_named_by_their_knobs(data_dir):
    for experiment in ("design_space", "design_space_mqar"):
        cfg = compose_cfg([f"experiment={experiment}", f"paths.data_dir={data_dir}"])
        assert cfg.choices.attention == "mha-dot-softmax"
