"""Fetch a dataset file once: stream it to a temporary file beside its destination, verify its
checksum (sha256, or the md5 that the canonical image datasets publish), then rename it into
place, so a reader never sees a half-written or corrupted file. ``extract_tar`` unpacks an
archive the same way: into a temporary folder first, refusing members that would land outside it."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

CHUNK = 1 << 16
TIMEOUT_S = 30


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    url: str, dest: str | Path, sha256: str | None, key: str = "dataset.path",
    md5: str | None = None,
) -> Path:  # fmt: skip
    """Download ``url`` to ``dest`` (``key`` names the config key that set it, for messages).

    The download is checked against ``md5`` when given (the only checksum CIFAR's and MNIST's
    publishers give), else against ``sha256`` (``None``: unchecked). A network error is a
    ``ValueError`` saying where to put the file by hand; a checksum mismatch deletes the download
    and is a ``ValueError`` naming the expected and actual hashes.
    """
    algorithm, expected = ("md5", md5) if md5 is not None else ("sha256", sha256)
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.new(algorithm)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                        for chunk in iter(lambda: response.read(CHUNK), b""):
                            out.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
            except (urllib.error.URLError, OSError) as e:
                raise ValueError(
                    f"{key}={dest} does not exist and downloading it from {url} failed "
                    f"({type(e).__name__}: {e}). Put the file at {dest} (or set {key} to a copy "
                    "of it) and run again"
                ) from e
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            raise ValueError(
                f"the download from {url} has {algorithm} {actual}, expected {expected}: refused and "
                f"deleted. Put a good copy at {key}={dest}"
            )
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def extract_tar(archive: str | Path, dest: str | Path, key: str = "dataset.path") -> None:
    """Unpack the tar archive ``archive`` into ``dest``; what is already in ``dest`` stays.

    tarfile's ``data`` filter refuses absolute names, ``..``, links out of the folder and device
    files; a refused or broken archive is a ``ValueError`` naming ``key``, and nothing of it
    reaches ``dest`` (the members land in a temporary folder first, then move into place).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract.", dir=dest))
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ValueError(
                f"{key}: the archive {archive} cannot be unpacked ({type(e).__name__}: {e})"
            ) from e
        for member in tmp.iterdir():
            target = dest / member.name
            if not target.exists():
                member.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
