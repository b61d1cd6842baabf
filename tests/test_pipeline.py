"""Training and evaluation end to end: in-process ``train(cfg)`` and the real command line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from attnexp.config.paths import CONFIG_DIR
from attnexp.runs.identity import config_hash
from attnexp.runs.record import find_results, read_results
from attnexp.tasks.spec import recorded_task, task_of
from attnexp.training.pipeline import build_model, train
from tests.conftest import ATTENTIONS, SUBPROCESS_ENV, compose_cfg, tiny

ROOT = Path(__file__).resolve().parents[1]
RESULT_FIELDS = {
    "status", "error", "choices", "overrides", "config_hash", "metrics", "params",
    "attention_flops", "throughput", "peak_memory_mb", "wall_time_s", "run_dir", "started_at",
    "versions", "git_commit", "task",
}  # fmt: skip
LIMIT = ["debug=limit"]


def test_train_writes_complete_results(tmp_path, data_dir):
    cfg = compose_cfg([*tiny("none", "cnn", "mnist1d", data_dir), *LIMIT, "seed=0"], tmp_path)
    results = train(cfg, overrides=["seed=0"])
    assert read_results(tmp_path) == json.loads(json.dumps(results, default=str))
    assert RESULT_FIELDS <= set(results)
    assert results["status"] == "completed" and results["error"] is None
    assert results["choices"] == {
        "attention": "none", "backbone": "cnn", "dataset": "mnist1d", "experiment": None, "seed": 0,
    }  # fmt: skip
    assert results["overrides"] == ["seed=0"]
    for key in ("test/acc", "test/f1", "val/acc", "val/acc_best", "train/loss"):
        assert 0.0 <= results["metrics"][key] < 10.0, key
    # The run logs exactly what its task declares, and the declaration travels with the results.
    assert set(results["metrics"]) == set(task_of(cfg).keys())
    assert recorded_task(read_results(tmp_path)) == task_of(cfg)
    assert results["params"] == sum(p.numel() for p in build_model(cfg).parameters())
    assert results["attention_flops"] == 0
    assert (
        results["throughput"] > 0 and results["peak_memory_mb"] > 0 and results["wall_time_s"] > 0
    )
    assert results["best_checkpoint"] == "checkpoints/best.ckpt"  # relative: the dir may move
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    assert not (tmp_path / "figures").exists()  # `none` has no attention to draw
    assert results["attention_diagnostics"] == {}  # and no map to measure
    assert all(results[f"attn_{k}"] is None for k in ("entropy", "sink_mass", "distance", "max_logit"))


def test_train_main_returns_the_configured_objective(tmp_path, data_dir):
    from attnexp.cli import train_main

    base = [*tiny("none", "cnn", "digits", data_dir), *LIMIT]
    value = train_main.__wrapped__(
        compose_cfg([*base, "objective=val/loss", "objective_mode=min"], tmp_path)
    )
    first = read_results(tmp_path)
    assert value == first["metrics"]["val/loss"] != first["metrics"]["val/acc_best"]
    # The objective is no part of the run's identity: the same run is skipped, its record read.
    again = train_main.__wrapped__(compose_cfg(base, tmp_path))
    assert again == first["metrics"]["val/acc_best"] and read_results(tmp_path) == first


def test_seed_zero_is_applied_and_other_seeds_differ(tmp_path, data_dir):
    def run(seed, name):
        overrides = [*tiny("none", "transformer", "digits", data_dir), *LIMIT, f"seed={seed}"]
        return train(compose_cfg(overrides, tmp_path / name))["metrics"]["train/loss"]

    first = run(0, "a")
    assert run(0, "b") == first
    assert run(1, "c") != first


def test_a_failed_run_says_so_in_results_and_reraises(tmp_path, data_dir, monkeypatch):
    cfg = compose_cfg([*tiny("none", "cnn", "digits", data_dir), *LIMIT], tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("the trainer broke")

    monkeypatch.setattr("attnexp.training.pipeline.build_trainer", broken)
    with pytest.raises(RuntimeError, match="the trainer broke"):
        train(cfg)
    results = read_results(tmp_path)
    assert results["status"] == "failed"
    assert results["error"] == "RuntimeError: the trainer broke"


def test_config_hash_ignores_where_a_run_is_recorded_but_not_what_it_computes(data_dir):
    base = tiny("none", "cnn", "digits", data_dir)
    h = config_hash(compose_cfg(base))
    assert config_hash(compose_cfg([*base, "logger=none", "paths.log_dir=/elsewhere"])) == h
    assert config_hash(compose_cfg(base, output_dir=Path("elsewhere"))) == h  # another run dir
    assert config_hash(compose_cfg([*base, "optim.optimizer.lr=0.1"])) != h
    # How batches reach the model (the same batches either way) is not what it computes.
    loader = ["dataset.loader=workers", "dataset.num_workers=0", "dataset.pin_memory=false"]
    assert config_hash(compose_cfg([*base, *loader])) == h
    assert config_hash(compose_cfg([*base, "dataset.batch_size=7"])) != h


def run_cli(script: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_every_attention_trains_from_the_command_line_and_eval_reproduces_it(tmp_path, data_dir):
    """One multirun through train.py trains each attention variant in the transformer (each in the
    cnn too is built and run on a real batch in-process: tests/test_grid.py; the sweep tests run
    multiruns over both backbones)."""
    run_cli(
        "train.py", "-m",
        f"attention={','.join(ATTENTIONS)}", "backbone=transformer", "dataset=mnist1d",
        "trainer=cpu", "logger=csv", "debug=limit", "backbone.depth=1", "figures=0",
        "dataset.source.num_samples=400", f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}",
    )  # fmt: skip
    found = [read_results(p) for p in find_results(tmp_path / "multirun")]
    cells = {(r["choices"]["attention"], r["choices"]["backbone"]) for r in found}
    assert cells == {(a, "transformer") for a in ATTENTIONS}
    assert all(r["status"] == "completed" for r in found)
    assert all(r["choices"]["dataset"] == "mnist1d" and r["choices"]["seed"] == 0 for r in found)
    for r in found:
        assert Path(r["run_dir"]).name.endswith(
            f"{r['choices']['attention']}-{r['choices']['backbone']}-mnist1d-s0"
        )

    for r in found:  # the maps of mha and muse measured in every block; the others have none
        slots = r["attention_diagnostics"]
        has_maps = r["choices"]["attention"] in ("mha", "muse")
        assert bool(slots) == has_maps and (r["attn_entropy"] is not None) == has_maps
        for stats in slots.values():
            assert len(stats["entropy"]) == 4 and all(0 <= e <= math.log(40) + 1e-9 for e in stats["entropy"])
            assert all(0 <= m <= 1 for m in stats["sink_mass"])

    trained = found[0]
    run_cli("eval.py", f"ckpt_path={trained['run_dir']}", f"paths.log_dir={tmp_path}")
    (eval_json,) = (tmp_path / "eval").rglob("eval.json")
    evaluated = json.loads(eval_json.read_text())["metrics"]
    for key in ("test/acc", "test/f1"):
        assert evaluated[key] == pytest.approx(trained["metrics"][key], abs=1e-6)


def test_bad_choice_fails_before_training_with_the_allowed_options(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "attention=nonexistent", f"paths.log_dir={tmp_path}"],
        cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "nonexistent" in proc.stderr and "none" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_fast_dev_run_tests_the_weights_in_memory(tmp_path, data_dir):
    cfg = compose_cfg([*tiny("se", "transformer", "digits", data_dir), "debug=fdr"], tmp_path)
    results = train(cfg)
    assert results["status"] == "completed" and "test/acc" in results["metrics"]
    assert results["attention_flops"] > 0
    # Looking inside: one figure of each block's channel gates (depth 1: one block).
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["blocks.0.slot.channel.png"]


def test_a_seed_that_is_not_an_integer_is_refused(tmp_path, data_dir):
    cfg = compose_cfg([*tiny("none", "cnn", "digits", data_dir), "seed=abc"], tmp_path)
    with pytest.raises(ValueError, match="seed must be an integer"):
        train(cfg)
    assert read_results(tmp_path)["status"] == "failed"
    assert not (tmp_path / "checkpoints").exists()


def test_run_dirs_differ_even_when_started_in_the_same_second():
    from omegaconf import OmegaConf

    a = OmegaConf.create({"dir": "x-${uid:}", "again": "${dir}"})
    b = OmegaConf.create({"dir": "x-${uid:}"})
    assert a.dir == a.dir == a.again  # cached per config: every job of a sweep agrees
    assert a.dir != b.dir


@pytest.mark.parametrize("optim", sorted(p.stem for p in (CONFIG_DIR / "optim").glob("*.yaml")))
def test_every_optimizer_config_trains(optim, tmp_path, data_dir):
    cfg = compose_cfg(
        [*tiny("none", "cnn", "digits", data_dir), "debug=limit", f"optim={optim}"], tmp_path
    )
    assert train(cfg)["status"] == "completed"
