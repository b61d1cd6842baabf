"""A job's claim on its run dir: one live process trains in a run dir at a time.

Two sweeps into one sweep dir (a sweep resubmitted while the first is still queued), or two
``resume=`` of one run, would otherwise train the same job twice and overwrite each other's
records and checkpoints. ``claim(path)`` takes the dir for this process or says who holds it.

The claim is two locks, so that it holds on the file systems clusters use:

- an ``fcntl.flock`` on ``<run dir>/.lock`` (the kernel drops it when the process dies, however
  it dies), and
- ``<run dir>/.claim``, created with ``O_EXCL``, holding the holder's host, pid, the pid's start
  time and a heartbeat (the file's mtime, touched every ``HEARTBEAT_S`` seconds). On a network
  file system where ``flock`` is unsupported or not shared between hosts, this file decides.

A ``.claim`` left by a process that died is stale, and taken over: at once when the holder was on
this host (its pid is gone or now another process), after ``STALE_AFTER_S`` seconds without a
heartbeat when it was on another host.

The processes of one data-parallel job (SLURM tasks or Lightning's ranks of one run) share the dir:
only rank 0 claims it (``is_rank_zero``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"  # flock'ed while a process holds the run dir
CLAIM_FILE = ".claim"  # O_EXCL: who holds it, and its heartbeat (mtime)
HEARTBEAT_S = 30.0
STALE_AFTER_S = 120.0  # a claim from another host without a heartbeat this long is dead
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID")  # set by torchrun, Lightning, srun
# A flock held without a claim file is a liveness check (held for an instant) or a job between its
# flock and its claim file: looked at again this often before it counts as a holder.
BUSY_TRIES, BUSY_WAIT_S = 40, 0.05


@dataclass(frozen=True)
class Holder:
    """Who holds a run dir."""

    host: str
    pid: int
    pid_started: str  # the pid's start time on its host (/proc), so a reused pid is not it
    claimed_at: float  # seconds since the epoch
    # The claim file's mtime, the holder's last sign of life; not part of who the holder is.
    heartbeat: float = field(default=0.0, compare=False)

    def __str__(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.claimed_at))
        return f"pid {self.pid} on {self.host} (since {since})"

    @classmethod
    def me(cls) -> Holder:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, process_started(pid), time.time())

    def alive(self, now: float | None = None) -> bool:
        """Whether the holder still runs: its pid on this host, its heartbeat elsewhere."""
        if self.host == socket.gethostname():
            return process_started(self.pid) == self.pid_started
        return (time.time() if now is None else now) - self.heartbeat < STALE_AFTER_S


def process_started(pid: int) -> str:
    """The start time of process ``pid`` ('' when there is none): with the pid, it names one
    process, as pids are reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return ""
    except OSError:  # no /proc: whether the pid exists is all there is
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return ""
        except PermissionError:
            pass
        return "?"
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, starttime, after the command name


def is_rank_zero() -> bool:
    """False in the other processes of a data-parallel job, which share rank 0's run dir."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


class Claim:
    """This process's hold on a run dir, kept alive by a heartbeat until ``release``."""

    def __init__(self, path: Path, lock_fd: int | None, holder: Holder) -> None:
        self.path, self.holder = path, holder
        self._lock_fd = lock_fd
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="run-dir-claim", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path / CLAIM_FILE)
            except OSError as e:  # e.g. the dir was removed: nothing left to hold
                log.warning("could not refresh the claim on %s: %s", self.path, e)

    def release(self) -> None:
        self._stop.set()
        if read_holder(self.path) == self.holder:
            (self.path / CLAIM_FILE).unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # drops the flock
            self._lock_fd = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim(path: str | os.PathLike) -> Claim | Holder:
    """Take run dir ``path`` (created if missing) for this process: a ``Claim`` to release when
    the job ends, or the live ``Holder`` that has it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for _ in range(BUSY_TRIES):
        lock_fd = _flock(path)
        if lock_fd is None:  # a live process holds the flock: a job, or a liveness check
            held = read_holder(path)
            if held is not None:
                return held
            time.sleep(BUSY_WAIT_S)  # a check lets go at once; a job writes its claim file
            continue
        me = Holder.me()
        if _create(path, me):
            return Claim(path, lock_fd, me)
        held = read_holder(path)
        _close(lock_fd)
        if held is not None and held.alive():
            return held
        _take_over(path, held)  # then try again
    return read_holder(path) or Holder("?", 0, "", time.time())


def live_holder(path: str | os.PathLike) -> Holder | None:
    """The live process holding run dir ``path``, if any (the sweep summary's liveness check)."""
    path = Path(path)
    if not path.is_dir():
        return None
    for _ in range(BUSY_TRIES):
        lock_fd = _flock(path)
        if lock_fd is not None:
            _close(lock_fd)
            held = read_holder(path)
            return held if held is not None and held.alive() else None
        held = read_holder(path)
        if held is not None:
            return held
        time.sleep(BUSY_WAIT_S)
    return Holder("?", 0, "", time.time())  # the flock stays held: someone is there


@contextlib.contextmanager
def exclusively(lock_file: str | os.PathLike) -> Iterator[None]:
    """Hold a blocking ``flock`` on ``lock_file`` for the block (e.g. two sweeps' summaries
    writing one report: the later reads the records after the earlier wrote). Where the file
    system has no flock, the block runs unlocked."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        yield
    finally:
        os.close(fd)


def read_holder(path: Path) -> Holder | None:
    """The holder the claim file ``path`` (or ``<path>/.claim``) names; None without a readable
    one (a claim being written reads as none for that instant)."""
    file = path / CLAIM_FILE if path.is_dir() else path
    try:
        fields = json.loads(file.read_text())
        return Holder(**{**fields, "heartbeat": file.stat().st_mtime})
    except (OSError, ValueError, TypeError):
        return None


def _flock(path: Path) -> int | None:
    """An fd holding the flock on ``<path>/.lock``; None when another process holds it; an fd
    without a lock when the file system has no flock (the claim file then decides alone)."""
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            os.close(fd)
            raise
        log.debug("no flock on %s (%s): the claim file decides", path, e)
    return fd


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _create(path: Path, me: Holder) -> bool:
    try:
        fd = os.open(path / CLAIM_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    fields = {k: v for k, v in asdict(me).items() if k != "heartbeat"}
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(fields))
    return True


def _take_over(path: Path, stale: Holder | None) -> None:
    """Move a dead holder's claim file aside. Two processes may both find it stale; the rename
    is atomic, so one moves it; if what was moved is not the stale claim (another process had
    taken over and claimed in between), it is put back, never over a newer one."""
    aside = path / f"{CLAIM_FILE}.stale-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path / CLAIM_FILE, aside)
    except FileNotFoundError:
        return
    if stale is not None and read_holder(aside) not in (stale, None):
        try:
            os.link(aside, path / CLAIM_FILE)
        except FileExistsError:
            pass
    else:
        log.info("took over %s from %s, which is no longer running", path, stale or "a broken claim")
    aside.unlink(missing_ok=True)
