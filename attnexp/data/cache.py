"""Generated datasets cached as one ``.npz`` per argument set, so a sweep generates each once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def cached_arrays(
    data_dir: str | Path,
    name: str,
    key: dict[str, Any],
    generate: Callable[[], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """The arrays ``generate()`` returns, from ``<data_dir>/<name>-<digest of key>.npz`` when there.

    ``key`` must hold every argument the arrays depend on: other arguments, another file.
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(data_dir) / f"{name}-{digest}.npz"
    if not path.exists():
        data = generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **data)
        tmp.replace(path)  # atomic: two runs generating at once never read a half-written file
    try:
        with np.load(path) as f:  # allow_pickle stays False: loading runs no code
            return {k: f[k] for k in f.files}
    except Exception as e:
        raise ValueError(
            f"cached dataset file {path} is unreadable ({type(e).__name__}: {e}); delete it and "
            "the next run regenerates it"
        ) from e
