"""The SLURM launcher's wait for a job (no cluster needed): a job submitit saw end but that SLURM's
queue still lists (requeued) is waited for again; one that left the queue without a result is
reported with its state and counts as NaN, so the sweep's summary still follows."""

from __future__ import annotations

import logging
import math
import os
import stat

import pytest
from submitit.core.utils import UncompletedJobError

from hydra_plugins.attnexp_launchers import slurm


class FakeJob:
    def __init__(self, outcomes: list) -> None:
        self.job_id, self.outcomes, self.clears = "151", outcomes, 0
        self.watcher = self

    def clear(self) -> None:
        self.clears += 1

    def results(self):
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


UNCOMPLETED = "Job 151 (task: 0) with path /x/151_0_result.pkl\nhas not produced any output (state: FAILED)\nmore"


@pytest.fixture
def queue(monkeypatch) -> list[bool]:
    """What squeue answers, one answer per question."""
    answers: list[bool] = []
    monkeypatch.setattr(slurm, "still_queued", lambda job_id: answers.pop(0))
    monkeypatch.setattr(slurm, "REQUEUE_POLL_S", 0.0)
    return answers


def test_a_job_seen_ended_but_still_queued_is_waited_for_until_its_result(queue):
    job = FakeJob([UncompletedJobError(UNCOMPLETED), UncompletedJobError(UNCOMPLETED), [7.0]])
    queue += [True, True]
    assert slurm.results_or_nan_of(job, FakeJob.results) == [7.0]
    assert job.clears == 2 and queue == []


def test_a_job_gone_from_the_queue_without_a_result_is_reported_with_its_state(queue, caplog):
    job = FakeJob([UncompletedJobError(UNCOMPLETED)])
    queue.append(False)
    with caplog.at_level(logging.ERROR):
        (returned,) = slurm.results_or_nan_of(job, FakeJob.results)
    assert math.isnan(returned.return_value) and job.clears == 0
    assert "SLURM job 151 did not finish: Job 151 (task: 0) with path /x/151_0_result.pkl has not produced any output (state: FAILED)" in caplog.text


@pytest.mark.parametrize(("script", "listed"), [("echo PENDING", True), ("exit 0", False), ("exit 1", False), (None, False)])
def test_still_queued_asks_squeue(tmp_path, monkeypatch, script, listed):
    if script is not None:
        squeue = tmp_path / "squeue"
        squeue.write_text(f"#!/bin/sh\n{script}\n")
        squeue.chmod(squeue.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + "/nonexistent")
    assert slurm.still_queued("151") is listed
