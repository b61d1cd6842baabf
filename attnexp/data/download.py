"""Fetch a dataset file once: stream it to a temporary file beside its destination, verify its
sha256, then rename it into place, so a reader never sees a half-written or corrupted file."""

from __future__ import annotations

import hashlib
import os
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


def fetch(url: str, dest: str | Path, sha256: str | None, key: str = "dataset.path") -> Path:
    """Download ``url`` to ``dest`` (``key`` names the config key that set it, for messages).

    A network error is a ``ValueError`` saying where to put the file by hand; a checksum mismatch
    deletes the download and is a ``ValueError`` naming the expected and actual hashes.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
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
        if sha256 is not None and actual != sha256:
            raise ValueError(
                f"the download from {url} has sha256 {actual}, expected {sha256}: refused and "
                f"deleted. Put a good copy at {key}={dest}"
            )
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
