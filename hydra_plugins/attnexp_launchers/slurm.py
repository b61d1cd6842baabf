"""``hydra/launcher=slurm``: each job of a sweep as one SLURM job, through submitit.

Hydra accepts a launcher only from the ``hydra_plugins`` namespace, so this one lives here, beside
the package. It needs the optional ``sweep`` extra (hydra-submitit-launcher) and nothing of attnexp.
"""

from __future__ import annotations

import logging
import math
import subprocess
import time
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)

log = logging.getLogger(__name__)


REQUEUE_POLL_S = 2.0  # how long to wait before asking again about a job back in the queue


def still_queued(job_id: str) -> bool:
    """Whether SLURM's queue (``squeue``: pending, running, requeued, completing jobs) lists
    ``job_id``; False when squeue cannot say."""
    try:
        listed = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and bool(listed.stdout.strip())


def results_or_nan_of(job: Any, wait: Any) -> list[Any]:
    """``wait(job)`` (submitit's ``Job.results``), or for a job that ended without a result a
    logged error and NaN. A job submitit saw end but that SLURM's queue still lists (requeued after
    a time limit or a pre-emption: read between a requeue's steps, the accounting can show the job
    ended, and submitit keeps the first ended state it reads) is waited for again."""
    from hydra.core.utils import JobReturn, JobStatus
    from submitit.core.utils import FailedJobError, UncompletedJobError

    while True:
        try:
            return wait(job)
        except UncompletedJobError as error:
            if still_queued(job.job_id):
                log.info("SLURM job %s is back in the queue (requeued): waiting for it", job.job_id)
                job.watcher.clear()  # submitit's cached states: read them again
                time.sleep(REQUEUE_POLL_S)
                continue
            failure: Exception = error
        except FailedJobError as error:
            failure = error
        # submitit's first two lines: the job and its state as SLURM last reported it
        said = " ".join(str(failure).strip().splitlines()[:2])
        log.error("SLURM job %s did not finish: %s", job.job_id, said)
        return [JobReturn(_return_value=math.nan, status=JobStatus.COMPLETED)]


class SlurmLauncher(SubmititSlurmLauncher):
    """submitit's SLURM launcher (``hydra/launcher=slurm``), except that a job SLURM cancelled or
    lost, or one that ended by an error outside the run, does not end the sweep: it is logged and
    returns NaN, so the other jobs are still collected and ``SweepSummary`` still writes the
    summary (which reports that job by its ``results.json``) and the report.

    The plugin waits for every job with ``job.results()``, which raises for such a job before
    Hydra calls the summary; here that wait answers for the job instead of raising
    (``results_or_nan_of``)."""

    def launch(self, job_overrides: Any, initial_job_idx: int) -> Any:
        import submitit

        wait = submitit.Job.results

        def results_or_nan(job: Any) -> list[Any]:
            return results_or_nan_of(job, wait)

        submitit.Job.results = results_or_nan
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            submitit.Job.results = wait
