"""``results.json``: the one file per run that comparisons read.

Written atomically (temp file + rename) so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

RESULTS_FILE = "results.json"

# Status values a results file may carry.
COMPLETED = "completed"
FAILED = "failed"
RUNNING = "running"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """A file object whose contents appear at ``path`` only once complete: written to a temp file
    in the same directory, flushed to disk, then renamed over ``path`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # as a plain open() would (mkstemp makes it private)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see ``atomic_open``)."""
    with atomic_open(path) as f:
        f.write(text)


def write_results(run_dir: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Write ``results`` as ``run_dir/results.json`` atomically; returns the path."""
    path = Path(run_dir) / RESULTS_FILE
    atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read one ``results.json`` (a path to the file or to its run dir)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    with open(path) as f:
        return json.load(f)


def find_results(root: str | os.PathLike) -> list[Path]:
    """Every ``results.json`` below ``root``, sorted."""
    return sorted(Path(root).rglob(RESULTS_FILE))
