"""A user's mistake, and a full disk, end the command line in one line naming the key or the file:
no traceback, exit status 1, before any data is touched (the disk: at the write)."""

from __future__ import annotations

import errno
import re
import subprocess
import sys
from pathlib import Path

import pytest

from attnexp.util.checks import ConfigError
from attnexp.util.files import DiskFull, atomic_write_text
from tests.conftest import SUBPROCESS_ENV, tiny

ROOT = Path(__file__).resolve().parents[1]

# Fails every fsync of a checkpoint's temp file as a full disk would (the write itself landed in
# the page cache; a full disk reports ENOSPC at the latest when it is flushed).
FULL_DISK = """
import errno, os, sys
real_fsync = os.fsync
def fsync(fd):
    if ".ckpt." in os.readlink(f"/proc/self/fd/{fd}"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_fsync(fd)
os.fsync = fsync
sys.argv = ["train.py", *sys.argv[1:]]
from attnexp.cli import train_main
train_main()
"""


def run(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
    command = ["-c", script] if script else ["train.py"]
    return subprocess.run([sys.executable, *command, *args], cwd=ROOT, env=SUBPROCESS_ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if "ERROR" in line or "error:" in line]
    assert len(errors) == 1, out[-3000:]
    return errors[0]


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("optim.optimizer.lr=-1", "optim.optimizer.lr must be a positive number, got -1"),
        ("attention.num_heads=3", "dim=16 is not divisible by num_heads=3"),
        ("paths.log_dir=/proc/attnexp", "paths.log_dir=/proc/attnexp: cannot write in /proc"),
    ],
)
def test_a_bad_value_ends_the_command_in_one_line(override, says, data_dir, tmp_path):
    overrides = [*tiny("mha", "cnn", "digits", data_dir), f"hydra.run.dir={tmp_path / 'run'}"]
    assert says in one_line_error(run(*overrides, override))


def test_a_full_disk_is_said_at_the_write_naming_the_file_and_the_space(data_dir, tmp_path):
    overrides = [*tiny("mha", "cnn", "digits", data_dir), f"hydra.run.dir={tmp_path / 'run'}",
                 "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1"]  # fmt: skip
    line = one_line_error(run(*overrides, script=FULL_DISK))
    assert f"no space left on device writing {tmp_path / 'run' / 'checkpoints'}" in line
    assert " free of " in line
    record = (tmp_path / "run" / "results.json").read_text()
    assert '"status": "failed"' in record and "DiskFull: no space left on device" in record


def test_an_atomic_write_out_of_space_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("attnexp.util.files.os.fsync", no_space)
    with pytest.raises(DiskFull, match=rf"writing {target} \(.* free of .*\)"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize(
    ("dataset", "make", "says"),
    [
        ("text", lambda p: p.write_text(""), "holds 0 bytes and 0 distinct characters"),
        ("text", lambda p: p.write_text("a"), "holds 1 bytes and 1 distinct characters"),
        ("text", lambda p: p.mkdir(), "is a directory: set it to a UTF-8 text file"),
        ("text", lambda p: p.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe"), "is not UTF-8 text"),
        ("image_folder", lambda p: (p / "cat").mkdir(parents=True) or (p / "cat" / "0.png").touch(),
         "has 1 class folder (cat): a classifier needs at least two"),
    ],
)  # fmt: skip
def test_a_bad_data_file_is_named_before_the_keys_it_would_answer(dataset, make, says, tmp_path):
    from attnexp.config.validate import validate
    from tests.conftest import compose_cfg

    make(tmp_path / "data")
    backbone = ["backbone=transformer"] if dataset == "text" else []
    cfg = compose_cfg([f"dataset={dataset}", *backbone, f"dataset.path={tmp_path / 'data'}"])
    with pytest.raises(ConfigError, match=rf"dataset.path=\S+ {re.escape(says)}"):
        validate(cfg)  # vocab_size and num_classes are still ??? here
