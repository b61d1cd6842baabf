"""Two processes never train one job: a job claims its run dir (attnexp.runs.claim), a second sweep
into the same dir skips what another live process runs, and the report matches the records."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnexp.report.build import main as compare_main
from attnexp.runs import claim as claims
from attnexp.runs.claim import CLAIM_FILE, Claim, Holder, claim, live_holder
from attnexp.runs.prepare import prepare
from attnexp.runs.record import find_results, read_results, write_results
from attnexp.sweep import sweep_outcome
from tests.conftest import SUBPROCESS_ENV, compose_cfg, tiny

ROOT = Path(__file__).resolve().parents[1]
HOLD = "import sys, time; from attnexp.runs.claim import claim; c = claim(sys.argv[1]); print(type(c).__name__, flush=True); time.sleep(60)"  # fmt: skip


@pytest.fixture
def holder_process(tmp_path):
    """Another process holding ``tmp_path / 'job'``."""
    job = tmp_path / "job"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(job)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, env=SUBPROCESS_ENV)  # fmt: skip
    assert proc.stdout.readline().strip() == "Claim"
    yield job, proc
    proc.kill()
    proc.wait()


def test_a_run_dir_held_by_a_live_process_is_refused_then_taken_once_it_dies(holder_process):
    job, proc = holder_process
    held = claim(job)
    assert isinstance(held, Holder) and held.pid == proc.pid and held.host == socket.gethostname()
    assert live_holder(job) == held
    proc.kill()  # SIGKILL: nothing cleaned up, the claim file stays behind
    proc.wait()
    assert (job / CLAIM_FILE).exists() and live_holder(job) is None
    mine = claim(job)
    assert isinstance(mine, Claim) and mine.holder.pid == os.getpid()
    assert isinstance(claim(job), Holder)  # one holder at a time, in one process too
    mine.release()
    assert not (job / CLAIM_FILE).exists() and live_holder(job) is None


def test_without_flock_the_claim_file_alone_keeps_a_second_process_out(holder_process, monkeypatch):
    job, proc = holder_process

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(claims.fcntl, "flock", no_flock)
    held = claim(job)
    assert isinstance(held, Holder) and held.pid == proc.pid
    proc.kill()
    proc.wait()
    mine = claim(job)
    assert isinstance(mine, Claim)
    mine.release()


def test_a_claim_from_another_host_is_dead_only_once_its_heartbeat_is_stale(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    other = {"host": "node-elsewhere", "pid": 1, "pid_started": "7", "claimed_at": time.time()}
    (job / CLAIM_FILE).write_text(json.dumps(other))
    assert isinstance(claim(job), Holder)  # fresh heartbeat: alive
    stale = time.time() - claims.STALE_AFTER_S - 5
    os.utime(job / CLAIM_FILE, (stale, stale))
    assert live_holder(job) is None
    mine = claim(job)
    assert isinstance(mine, Claim)
    mine.release()


def test_an_unreadable_record_is_run_again_and_says_why(data_dir, tmp_path, caplog):
    cfg = compose_cfg(tiny("mha", "cnn", "digits", data_dir), tmp_path)
    (tmp_path / "results.json").write_text('{"status": "compl')
    with caplog.at_level("WARNING"):
        plan = prepare(cfg)
    assert plan.start == "fresh"
    assert "running" in caplog.text and "results.json is unreadable (JSONDecodeError" in caplog.text


def test_compare_exits_1_on_an_unreadable_run_unless_told_to_skip(tmp_path, capsys):
    choices = {"attention": "mha", "backbone": "cnn", "dataset": "digits", "seed": 0}
    write_results(tmp_path / "ok", {"status": "completed", "choices": choices,
                                    "metrics": {"test/acc": 0.5}})  # fmt: skip
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{")
    assert compare_main([str(tmp_path)]) == 1
    assert f"cannot read {tmp_path / 'bad' / 'results.json'}" in capsys.readouterr().err
    assert compare_main([str(tmp_path), "--skip-unreadable"]) == 0


def test_two_sweeps_into_one_dir_train_each_job_exactly_once(data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        sys.executable, "train.py", "-m", *tiny("mha", "cnn", "digits", data_dir),
        "attention=mha,se", "trainer.max_epochs=1", "+trainer.limit_train_batches=4",
        "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    first = subprocess.Popen(args, cwd=ROOT, env=SUBPROCESS_ENV, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    time.sleep(1)
    second = subprocess.run(args, cwd=ROOT, env=SUBPROCESS_ENV, text=True, timeout=300,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    out_first, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out_first[-3000:]
    assert second.returncode == 0, second.stdout[-3000:]
    both = out_first + second.stdout

    records = {f.parent.name: read_results(f) for f in find_results(sweep)}
    assert sorted(records) == ["0-mha-cnn-digits-s0", "1-se-cnn-digits-s0"]
    for job, record in records.items():
        assert record["status"] == "completed", (job, record.get("error"))
        # Trained once: one process ran it; the other found it running, or completed before.
        assert len(re.findall(rf"results: \S*/{job}/results.json", both)) == 1, both[-3000:]
        checkpoints = sorted(p.name for p in (sweep / job / "checkpoints").iterdir())
        assert checkpoints == ["best.ckpt", "last.ckpt"]
    assert "running elsewhere" in both
    outcome = sweep_outcome(sweep)
    assert len(outcome.completed) == 2 and not outcome.failed and not outcome.elsewhere
    report = (sweep / "comparison.md").read_text()  # written last from the final records
    assert "| digits | cnn | mha |" in report and "| digits | cnn | se |" in report
    assert "## Failures (0)" in report and "Not finished" not in report


def test_a_liveness_check_holding_the_lock_for_an_instant_does_not_turn_a_job_away(tmp_path):
    import fcntl
    import threading

    job = tmp_path / "job"
    job.mkdir()
    fd = os.open(job / claims.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as live_holder does, with no claim file: nobody runs it
    threading.Timer(0.2, os.close, [fd]).start()
    mine = claim(job)
    assert isinstance(mine, Claim)
    mine.release()
