"""Sweeps on a real SLURM cluster: ``hydra/launcher=slurm`` with CPU-only settings on the one-node
cluster ``scripts/slurm_local.sh`` starts on this machine. Marked ``slurm``: ``make test`` leaves
them out, ``.ci/run`` runs them after it (``pytest -m slurm``).

A pre-empted job (``scancel --signal=USR2``: submitit's signal; ``scontrol requeue``: SIGTERM, then
requeued by SLURM) saves where it stands, is requeued and ends with the metrics of a run never
stopped; a job past its time limit is requeued until it finishes; a cancelled job is reported and
the sweep's summary and report are still written. SLURM holds a requeued job for two minutes
(``BeginTime``); the tests release it at once.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnexp.runs.record import read_results
from tests.conftest import SUBPROCESS_ENV

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
# One CPU, no GPU, little memory: what this 2-core machine can give each job.
SLURM = [
    "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2", "hydra.launcher.partition=debug",
]  # fmt: skip
TINY = [
    "backbone=cnn", "dataset=digits", "trainer=cpu", "logger=csv", "backbone.depth=1",
    "backbone.dim=16", "dataset.source.num_samples=300", "trainer.max_epochs=2", "figures=0",
]  # fmt: skip
COMPARED = ("heldout/loss", "test/loss", "test/acc", "val/loss_best", "val/loss", "train/loss")


def lm(text: Path, steps: int | str) -> list[str]:
    """A byte-level language model of ``text`` at nanoGPT's CPU sizes, ``steps`` training steps
    (or a sweep of them: ``"3000,60"``)."""
    return [
        "experiment=shakespeare_char_cpu", "dataset=text", f"dataset.path={text}",
        "dataset.source.vocab=bytes", "dataset.shape.vocab_size=256", "trainer=cpu",
        "logger=csv", "figures=0", "dataset.steps_per_epoch=100", f"trainer.max_steps={steps}",
        "trainer.log_every_n_steps=5",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def cluster() -> None:
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if states.returncode != 0 or not {"idle", "mixed", "allocated"} & set(states.stdout.split()):
        pytest.fail("no SLURM cluster answers: start one with `bash scripts/slurm_local.sh`")


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    import random

    rng = random.Random(0)
    path.write_text("".join(rng.choice("abcdefgh \n") for _ in range(20000)))
    return path


def train(*args: str, wait: bool = True) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                            env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    if wait:
        proc.wait(timeout=600)
    return proc


def until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(1)


def jobs(sweep: Path) -> list[str]:
    """The SLURM job ids of a sweep (submitit's folder names them)."""
    return sorted(p.name for p in (sweep / ".submitit").glob("*") if p.is_dir())


def record(run: Path) -> dict:
    try:
        return read_results(run)
    except (OSError, ValueError):
        return {}


def release_when_held(job: str) -> bool:
    """Start a requeued job now instead of after SLURM's two-minute hold; whether it was held."""
    reason = subprocess.run(["squeue", "-h", "-j", job, "-o", "%r"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    if reason == "BeginTime":
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
        return True
    return False


def story(out: str, sweep: Path) -> str:
    """What a failed assertion shows: the sweep's output, then what SLURM and submitit saw of each
    job (every allocation's state, the tail of its logs), so a failure on CI can be read."""
    parts = [out[-3000:]]
    for job in jobs(sweep):
        sacct = subprocess.run(["sacct", "-D", "-j", job.split("_")[0], "-o",
                                "JobID,State,Start,End,ExitCode"], capture_output=True,
                               text=True).stdout  # fmt: skip
        parts.append(f"--- sacct -D -j {job}\n{sacct}")
        for log_file in sorted((sweep / ".submitit" / job).glob("*_log.*")):
            parts.append(f"--- {log_file.name}\n" + log_file.read_text(errors="replace")[-2500:])
    return "\n".join(parts)


def logged_rows(run: Path) -> int:
    """Rows in the run's ``metrics.csv`` so far: a sign it is training."""
    csv_log = run / "csv" / "metrics.csv"
    if not csv_log.is_file():
        return 0
    lines = csv_log.read_text().splitlines()
    return len(lines) - 1


def test_a_sweep_completes_and_a_rerun_skips_its_jobs(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "attention=none,mha", *TINY, *SLURM, f"hydra.sweep.dir={sweep}"]
    first = train(*args)
    out = first.stdout.read()
    assert first.returncode == 0, out[-3000:]
    assert "2 completed, 0 failed" in out and (sweep / "comparison.md").is_file()
    again = train(*args)
    out = again.stdout.read()
    assert again.returncode == 0 and "2 completed (2 skipped: completed before)" in out, out[-2000:]


@pytest.fixture(scope="module")
def uninterrupted(text, tmp_path_factory) -> dict:
    """The language model of the pre-emption tests, trained without SLURM and never stopped."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    proc = train(*lm(text, 600), f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stdout.read()[-3000:]
    return read_results(run)["metrics"]


@pytest.mark.parametrize("how", ["USR2", "requeue"])
def test_a_preempted_job_is_requeued_and_ends_as_a_run_never_stopped(
    how, cluster, text, uninterrupted, tmp_path
):
    sweep = tmp_path / "sweep"
    proc = train("-m", *lm(text, 600), *SLURM, f"hydra.sweep.dir={sweep}", wait=False)
    run = sweep / "0-mha-transformer-text-s0"
    until(lambda: logged_rows(run) >= 10, 300, "the job to train")
    (job,) = jobs(sweep)
    if how == "USR2":  # what submitit asks SLURM to send before a time limit; a pre-emption
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
    else:  # an administrator's or the scheduler's requeue: SIGTERM, then back in the queue
        subprocess.run(["scontrol", "requeue", job], check=True)
    until(lambda: record(run).get("status") == "interrupted", 120, "the run to save and stop")
    until(lambda: release_when_held(job) or record(run).get("status") != "interrupted", 180,
          "SLURM to requeue the job")  # fmt: skip
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, story(out, sweep)
    assert "1 completed, 0 failed" in out
    resumed = read_results(run)
    assert resumed["status"] == "completed" and resumed["resumed_from"] == "checkpoints/last.ckpt"
    for key in COMPARED:
        assert resumed["metrics"][key] == uninterrupted[key], key


def test_a_job_past_its_time_limit_is_requeued_until_it_finishes(cluster, text, tmp_path):
    sweep = tmp_path / "sweep"
    limit = ["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=30"]
    # About 70 s of training: more than one allocation of a minute, SIGUSR2 30 s before its end.
    proc = train("-m", *lm(text, 1200), *SLURM, *limit, f"hydra.sweep.dir={sweep}", wait=False)
    run = sweep / "0-mha-transformer-text-s0"
    until(lambda: jobs(sweep), 60, "the job to be submitted")
    (job,) = jobs(sweep)
    stops = 0
    while proc.poll() is None:
        if release_when_held(job):
            stops += 1
        time.sleep(2)
    out = proc.stdout.read()
    assert proc.returncode == 0, story(out, sweep)
    assert stops >= 1  # the time limit stopped it at least once
    done = read_results(run)
    assert done["status"] == "completed" and done["metrics"]["test/loss"] > 0
    sacct = subprocess.run(["sacct", "-n", "-X", "-j", job, "-o", "State"], capture_output=True,
                           text=True).stdout.split()  # fmt: skip
    assert sacct and sacct[-1] == "COMPLETED", sacct


def test_a_cancelled_job_is_reported_and_the_summary_and_report_are_still_written(
    cluster, text, tmp_path
):
    sweep = tmp_path / "sweep"
    # Job 0 is long and cancelled; job 1, short, runs after it (one at a time).
    proc = train("-m", *lm(text, "3000,60"), *SLURM,
                 "hydra.launcher.array_parallelism=1", f"hydra.sweep.dir={sweep}", wait=False)  # fmt: skip
    first = sweep / "0-mha-transformer-text-s0"
    until(lambda: logged_rows(first) >= 2, 300, "the first job to train")
    (array,) = {j.split("_")[0] for j in jobs(sweep)}
    subprocess.run(["scancel", f"{array}_0"], check=True)
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 1, out[-3000:]  # a job did not complete
    assert "1 completed, 1 failed" in out, out[-3000:]
    assert (sweep / "comparison.md").is_file()
    assert read_results(sweep / "1-mha-transformer-text-s0")["status"] == "completed"
    # scancel sends SIGTERM before it kills: the run saved where it stood and can continue.
    assert read_results(first)["status"] == "interrupted"


DDP = [
    "trainer=ddp_cpu", "attention=none", "backbone=cnn", "dataset=digits", "logger=csv",
    "backbone.depth=1", "backbone.dim=16", "dataset.source.num_samples=600",
    "dataset.batch_size=32", "trainer.max_epochs=2", "figures=0",
]  # fmt: skip


def test_data_parallel_jobs_get_a_task_per_device_and_one_run_dir(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    proc = train("-m", *DDP, *SLURM, f"hydra.sweep.dir={sweep}")
    out = proc.stdout.read()
    assert proc.returncode == 0 and "1 completed, 0 failed" in out, out[-3000:]
    (script,) = sweep.glob(".submitit/*/*_submission.sh")
    assert "#SBATCH --ntasks-per-node=2" in script.read_text()  # trainer.devices=2
    assert len(list(sweep.glob(".submitit/*/*_log.out"))) == 2  # a process per rank
    assert read_results(sweep / "0-none-cnn-digits-s0")["status"] == "completed"

    # srun starting the ranks itself: they share one run dir (named by the job step).
    cmd = ["srun", "--ntasks-per-node=2", "--cpus-per-task=1", sys.executable,
           str(ROOT / "train.py"), *DDP, f"paths.log_dir={tmp_path / 'srun'}"]  # fmt: skip
    ran = subprocess.run(cmd, cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    (run,) = (tmp_path / "srun" / "runs" / "none-cnn-digits-s0").iterdir()
    assert run.name.startswith("slurm-") and read_results(run)["status"] == "completed"
