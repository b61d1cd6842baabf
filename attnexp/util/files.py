"""Files that appear whole or not at all: every writer of the project goes through here.

``atomic_open`` writes to a temp file in the same directory, flushes it to disk and renames it over
the target (atomic on POSIX), so a crash or a full disk never leaves a half-written results file,
checkpoint, figure or report. A write that runs out of space raises ``DiskFull``, naming the file
and the space left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from attnexp.util.checks import ConfigError


def check_writable_dir(key: str, path: Path) -> None:
    """Refuse (``ConfigError``, naming ``key``) a directory this process could not create and write
    in: where its nearest existing ancestor is a file, or refuses a new file. Nothing is left
    behind (the probe file is removed)."""
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={path}: {existing} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".attnexp-write-probe-")
    except OSError as e:
        raise ConfigError(f"{key}={path}: cannot write in {existing} ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)


class DiskFull(OSError):
    """A write that found no space left: one line naming the file and the space its file system
    has (a full disk cannot be checked before the run; it is said where it happens)."""

    def __init__(self, path: Path) -> None:
        try:
            usage = shutil.disk_usage(path.parent)
            space = f"{_size(usage.free)} free of {_size(usage.total)} on its file system"
        except OSError:
            space = "its file system's space unknown"
        super().__init__(errno.ENOSPC, f"no space left on device writing {path} ({space})")
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC and not isinstance(e, DiskFull):
            raise DiskFull(path) from e
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see ``atomic_open``)."""
    with atomic_open(path) as f:
        f.write(text)
