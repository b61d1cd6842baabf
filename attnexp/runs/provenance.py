"""What produced a run: the versions of Python and the core packages, and the git commit.

Cheap on purpose (no torch or Lightning import): a refused config's record carries them too.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata

from attnexp.config.paths import PROJECT_ROOT

PACKAGES = {"torch": "torch", "lightning": "lightning", "hydra": "hydra-core",
            "omegaconf": "omegaconf", "torchmetrics": "torchmetrics"}  # fmt: skip


def versions() -> dict[str, str | None]:
    """Python's and the installed core packages' versions (None for one not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name, dist in PACKAGES.items():
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The commit of the code that runs, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
