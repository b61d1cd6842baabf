"""Resume after a crash and reproducibility: a SIGKILLed run resumed with `resume=<run dir>`, or
a killed sweep job re-run into its sweep dir, ends exactly where the uninterrupted run ends;
identical configs give identical runs; how a job of the command line starts (attnexp.runs.prepare)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from attnexp.runs.checkpoint import CONFIG_KEY, load_checkpoint
from attnexp.runs.identity import computed_config, config_hash
from attnexp.runs.prepare import SKIP, prepare, resumed_config
from attnexp.runs.record import read_results, write_results
from attnexp.training.pipeline import train
from tests.conftest import SUBPROCESS_ENV, compose_cfg, tiny

ROOT = Path(__file__).resolve().parents[1]
# One thread per process: on a shared 2-core machine thread contention slows a tiny model ~10x.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# Dropout and attention dropout make the run depend on the global RNGs, the shuffled loader on the
# batch order, the warm-up/cosine scheduler on the step count: all must be restored on resume.
RUN = [
    "attention=mha", "backbone=transformer", "dataset=digits", "trainer=cpu", "logger=csv",
    "backbone.depth=1", "backbone.dim=16", "backbone.dropout=0.2", "attention.attn_drop=0.1",
    "dataset.source.num_samples=300", "dataset.batch_size=8", "trainer.max_epochs=5",
]  # fmt: skip
COMPARED = ("test/acc", "test/f1", "val/acc_best", "val/loss", "train/loss", "train/loss_epoch")


def train_cli(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "train.py"), *args]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def finish(proc: subprocess.Popen) -> str:
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, out[-3000:]
    return out


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


def test_a_run_killed_mid_training_resumes_to_the_same_result(tmp_path, data_dir):
    args = [*RUN, f"paths.data_dir={data_dir}"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    finish(train_cli(*args, f"hydra.run.dir={full}"))

    proc = train_cli(*args, f"hydra.run.dir={killed}")
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # a real crash: no handler, no cleanup
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    interrupted = read_results(killed)
    assert interrupted["status"] == "running"  # killed before it could finish
    at_kill = load_checkpoint(last)
    assert at_kill["epoch"] < 4
    carried = next(v for k, v in at_kill["callbacks"].items() if k.endswith("RunStats"))
    assert carried["wall_s"] > 0 and carried["samples"] > 0

    out = finish(train_cli(f"resume={killed}"))
    resumed, uninterrupted = read_results(killed), read_results(full)
    assert resumed["status"] == "completed", out[-2000:]
    assert resumed["resumed_from"] == "checkpoints/last.ckpt"
    assert resumed["config_hash"] == uninterrupted["config_hash"]
    assert resumed["overrides"] == uninterrupted["overrides"]
    for key in COMPARED:
        assert resumed["metrics"][key] == uninterrupted["metrics"][key], key
    assert resumed["wall_time_s"] > carried["wall_s"]  # the killed segment's time counts
    a, b = weights(killed), weights(full)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list((killed / ".hydra").glob("*resume*"))  # the saved config is untouched
    assert "resume" not in (killed / ".hydra" / "overrides.yaml").read_text()


def tiny_digits(data_dir: Path, *extra: str) -> list[str]:
    return [*RUN, f"paths.data_dir={data_dir}", "trainer.max_epochs=2", *extra]


@pytest.fixture
def one_thread():
    """The thread count changes the order of float reductions: hold it fixed for a comparison."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_identical_configs_give_identical_runs_and_another_seed_differs(
    tmp_path, data_dir, one_thread
):
    def run(name: str, *extra: str):
        results = train(compose_cfg(tiny_digits(data_dir, *extra), tmp_path / name))
        return results["metrics"], weights(tmp_path / name)

    (m1, w1), (m2, w2), (m3, w3) = run("a"), run("b"), run("c", "seed=1")
    assert m1 == m2 and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert m3["val/loss"] != m1["val/loss"]
    assert not all(torch.equal(w1[k], w3[k]) for k in w1)


def test_every_run_dir_records_config_versions_and_commit_even_when_it_fails(tmp_path, data_dir):
    with pytest.raises(ValueError):
        train(compose_cfg(tiny_digits(data_dir, "dataset.batch_size=100000"), tmp_path))
    results = read_results(tmp_path)
    assert results["status"] == "failed"
    assert {"torch", "lightning", "hydra", "python"} <= set(results["versions"])
    assert results["git_commit"] is None or len(results["git_commit"]) == 40
    assert results["config_hash"] and results["overrides"] == []


def test_ddp_cpu_trains_two_processes_and_rank_zero_writes_synchronised_metrics(
    tmp_path, data_dir
):
    from attnexp.runs.layout import RunDir
    from attnexp.runs.prepare import load_run_config
    from attnexp.training.pipeline import evaluate

    run = tmp_path / "run"
    args = [
        "trainer=ddp_cpu", "attention=none", "backbone=cnn", "dataset=digits", "logger=csv",
        "backbone.depth=1", "backbone.dim=16", "dataset.source.num_samples=600",
        "dataset.batch_size=32", "trainer.max_epochs=3", f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run}",
    ]  # fmt: skip
    out = finish(train_cli(*args))
    results = read_results(run)
    assert results["status"] == "completed", out[-2000:]
    assert list(run.glob("results.json*")) == [run / "results.json"]  # no stray temp files
    assert (run / "train_ddp_process_1.log").is_file()  # a second process did train
    # Rank 0 saw half the test split: its numbers equal a one-process evaluation of the same
    # checkpoint on the whole split only if the metrics were synchronised.
    cfg = load_run_config(RunDir(run))
    cfg.trainer.devices, cfg.trainer.strategy = 1, "auto"
    single = evaluate(cfg, run / results["best_checkpoint"])
    for key in ("test/acc", "test/f1"):
        assert results["metrics"][key] == pytest.approx(single[key], abs=1e-6), key


def test_only_rank_zero_writes_results(tmp_path, monkeypatch):
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from attnexp.training.pipeline import WRITER

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    WRITER(tmp_path, {"status": "completed"})
    assert not (tmp_path / "results.json").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    WRITER(tmp_path, {"status": "completed"})
    assert read_results(tmp_path)["status"] == "completed"


# --------------------------------------------------------------------------- a killed sweep job


class KillAt(L.Callback):
    """A crash mid-epoch: SIGKILL (no handler, no cleanup) at batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


def test_a_sweep_job_killed_mid_run_continues_from_its_last_checkpoint_to_the_same_result(
    tmp_path, data_dir
):
    # Checkpoints outside the default dir: the last checkpoint is found where the callback puts it.
    args = ["-m", *RUN, f"paths.data_dir={data_dir}", "trainer.max_epochs=3",
            "callbacks.model_checkpoint.dirpath=${paths.output_dir}/ckpts"]  # fmt: skip
    full, sweep = tmp_path / "full", tmp_path / "sweep"
    finish(train_cli(*args, f"hydra.sweep.dir={full}"))

    kill = ["+callbacks.kill._target_=tests.test_resume.KillAt", "+callbacks.kill.epoch=1",
            "+callbacks.kill.batch=3"]  # fmt: skip
    proc = train_cli(*args, *kill, f"hydra.sweep.dir={sweep}")
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    (job,) = (p.parent for p in sweep.glob("*/.hydra"))
    assert read_results(job)["status"] == "running"
    assert load_checkpoint(job / "ckpts" / "last.ckpt")["epoch"] == 0

    out = finish(train_cli(*args, f"hydra.sweep.dir={sweep}"))  # the same sweep again
    assert f"continuing {job} from {job / 'ckpts' / 'last.ckpt'} (epoch 0)" in out, out[-3000:]
    assert "1 completed, 0 failed" in out
    (full_job,) = (p.parent for p in full.glob("*/.hydra"))
    resumed, uninterrupted = read_results(job), read_results(full_job)
    assert resumed["status"] == "completed" and resumed["resumed_from"] == "ckpts/last.ckpt"
    for key in COMPARED:
        assert resumed["metrics"][key] == uninterrupted["metrics"][key], key
    a = load_checkpoint(job / "ckpts" / "last.ckpt")["state_dict"]
    b = load_checkpoint(full_job / "ckpts" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- how a job starts


def stamp(path: Path, cfg, epoch: int = 1) -> Path:
    """A last checkpoint as ``attnexp.runs.checkpoint.ConfigStamp`` leaves it (no weights needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, CONFIG_KEY: computed_config(cfg)}, path)
    return path


def test_a_job_is_skipped_continued_or_started_afresh_by_what_its_run_dir_holds(
    tmp_path, data_dir, caplog
):
    caplog.set_level("INFO", logger="attnexp.runs.prepare")
    overrides = tiny("none", "cnn", "digits", data_dir)
    cfg = compose_cfg(overrides, tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"

    def start(*extra: str, results: dict | None = None):
        if results is not None:
            write_results(tmp_path, {"config_hash": config_hash(cfg), "error": None, **results})
        return prepare(compose_cfg([*overrides, *extra], tmp_path), [])

    fresh = start()  # an empty run dir
    assert fresh.start == "fresh" and fresh.done is None and fresh.checkpoint is None
    assert fresh.config_hash == config_hash(cfg) and fresh.task.name == "classification"
    done = start(results={"status": "completed", "metrics": {"val/acc": 1.0}})
    assert done.start == SKIP and done.done["metrics"] == {"val/acc": 1.0}
    stamp(last, cfg)
    killed = start(results={"status": "running"})
    assert killed.start == "continue" and killed.checkpoint == last and killed.epoch == 1
    ctrl_c = start(results={"status": "failed", "error": "SystemExit: 1"})
    assert ctrl_c.checkpoint == last
    assert start("force=true").checkpoint is None

    caplog.clear()
    assert start(results={"status": "failed", "error": "FloatingPointError: nan"}).checkpoint is None
    assert "afresh: its last run of this config failed (FloatingPointError: nan)" in caplog.text
    assert start(results={"status": "running", "config_hash": "another"}).checkpoint is None
    assert "afresh: its last run had another config" in caplog.text
    # The same hash, but the checkpoint stems from another computed config (e.g. left behind).
    stamp(last, compose_cfg([*overrides, "optim.optimizer.lr=0.5"], tmp_path))
    assert start(results={"status": "running"}).checkpoint is None
    assert "belongs to another config; keys that differ: optim.optimizer.lr" in caplog.text


def test_a_fresh_job_is_planned_without_importing_lightning(tmp_path, data_dir):
    # The command line plans and validates a job before the slow import.
    script = (
        "import sys\n"
        "from attnexp.runs.prepare import prepare\n"
        "from tests.conftest import compose_cfg, tiny\n"
        f"cfg = compose_cfg(tiny('mha', 'cnn', 'digits', {str(data_dir)!r}), {str(tmp_path)!r})\n"
        "plan = prepare(cfg, [])\n"
        "print('fresh:', plan.start == 'fresh' and plan.checkpoint is None)\n"
        "print('lightning imported:', 'lightning' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=SUBPROCESS_ENV,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "fresh: True" in proc.stdout, proc.stderr[-3000:]
    assert "lightning imported: False" in proc.stdout


def saved_run(run_dir: Path, checkpoint_callback: dict | None) -> Path:
    """A run dir as Hydra saves it, with ``checkpoint_callback`` as its model_checkpoint."""
    config = {
        "seed": 0,
        "paths": {"output_dir": "${hydra:runtime.output_dir}"},
        "callbacks": {"model_checkpoint": checkpoint_callback},
        "choices": {},
    }
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(config, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save({"hydra": {"runtime": {"choices": {}}}}, run_dir / ".hydra" / "hydra.yaml")
    return run_dir


def test_resume_reads_the_checkpoint_dir_from_the_checkpoint_callback(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    run = saved_run(tmp_path / "run", {"dirpath": str(elsewhere), "save_last": True})
    with pytest.raises(FileNotFoundError, match=f"no {elsewhere / 'last.ckpt'} yet"):
        resumed_config(run, [])
    (elsewhere / "last.ckpt").parent.mkdir()
    (elsewhere / "last.ckpt").write_bytes(b"")
    cfg, _, ckpt = resumed_config(run, [])
    assert ckpt == elsewhere / "last.ckpt" and cfg.paths.output_dir == str(run.resolve())

    default = saved_run(tmp_path / "default", {"dirpath": "${paths.output_dir}/checkpoints",
                                               "save_last": True})  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no .*default/checkpoints/last.ckpt yet"):
        resumed_config(default, [])
    for callback in (None, {"dirpath": str(elsewhere), "save_last": False}):
        with pytest.raises(FileNotFoundError, match="kept no last checkpoint"):
            resumed_config(saved_run(tmp_path / str(callback is None), callback), [])


# --------------------------------------------------------------------------- validate once


def test_the_command_line_validates_once_and_python_callers_get_validation(
    tmp_path, data_dir, monkeypatch
):
    import attnexp.runs.prepare

    def refuse(cfg):
        raise ValueError("checked")

    monkeypatch.setattr(attnexp.runs.prepare, "validate", refuse)
    with pytest.raises(ValueError, match="checked"):
        train(compose_cfg(tiny("none", "cnn", "digits", data_dir), tmp_path / "python"))
    monkeypatch.undo()

    # Count in a fresh process: the patches must be in place before attnexp.cli binds the names.
    script = (
        "import sys\n"
        "import attnexp.models, attnexp.config.validate\n"
        "calls = {'validate': 0, 'build_model': 0}\n"
        "def counted(name, f):\n"
        "    def wrapper(*a, **k):\n"
        "        calls[name] += 1\n"
        "        return f(*a, **k)\n"
        "    return wrapper\n"
        "attnexp.config.validate.validate = counted('validate', attnexp.config.validate.validate)\n"
        "attnexp.models.build_model = counted('build_model', attnexp.models.build_model)\n"
        "from attnexp.cli import train_main\n"
        "sys.argv = ['train.py', *sys.argv[1:]]\n"
        "try:\n"
        "    train_main()\n"
        "finally:\n"
        "    print('calls', calls)\n"
    )
    args = [*tiny("none", "cnn", "digits", data_dir), "debug=limit", "figures=0",
            f"hydra.run.dir={tmp_path / 'cli'}"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=SUBPROCESS_ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # validate builds the model once, train once more: nothing is built or checked twice.
    assert "calls {'validate': 1, 'build_model': 2}" in proc.stdout, proc.stdout[-2000:]
    assert read_results(tmp_path / "cli")["status"] == "completed"
