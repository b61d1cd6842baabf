"""How many CPU cores this process may use (the one place the count is read), and how jobs that
run side by side share them."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_job(n_jobs: int, cores: int) -> int:
    """Threads for each of ``n_jobs`` concurrent jobs on ``cores`` cores, at least one.

    ``n_jobs`` follows joblib: -1 means one job per core, -2 all cores but one, and so on.
    """
    if n_jobs == 0:
        raise ValueError("hydra.launcher.n_jobs must not be 0 (joblib: -1 = one job per core)")
    concurrent = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
    return max(1, cores // concurrent)
