"""``hydra/launcher=slurm``: each job of a sweep as one SLURM job, through submitit.

Hydra accepts a launcher only from the ``hydra_plugins`` namespace, so this one lives here, beside
the package. It needs the optional ``sweep`` extra (hydra-submitit-launcher) and nothing of attnexp.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)

log = logging.getLogger(__name__)


class SlurmLauncher(SubmititSlurmLauncher):
    """submitit's SLURM launcher (``hydra/launcher=slurm``), except that a job SLURM cancelled or
    lost, or one that ended by an error outside the run, does not end the sweep: it is logged and
    returns NaN, so the other jobs are still collected and ``SweepSummary`` still writes the
    summary (which reports that job by its ``results.json``) and the report.

    The plugin waits for every job with ``job.results()``, which raises for such a job before
    Hydra calls the summary; here that wait answers for the job instead of raising."""

    def launch(self, job_overrides: Any, initial_job_idx: int) -> Any:
        import submitit
        from hydra.core.utils import JobReturn, JobStatus
        from submitit.core.utils import FailedJobError, UncompletedJobError

        wait = submitit.Job.results

        def results_or_nan(job: Any) -> list[Any]:
            try:
                return wait(job)
            except (UncompletedJobError, FailedJobError) as error:
                # submitit's first two lines: the job and its state as SLURM last reported it
                said = " ".join(str(error).strip().splitlines()[:2])
                log.error("SLURM job %s did not finish: %s", job.job_id, said)
                return [JobReturn(_return_value=math.nan, status=JobStatus.COMPLETED)]

        submitit.Job.results = results_or_nan
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            submitit.Job.results = wait
