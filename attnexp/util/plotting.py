"""Figure plumbing shared by the comparison report and the attention figures.

Figures are built with ``matplotlib.figure.Figure`` directly, never ``pyplot``: no global backend to
set, no GUI needed, and nothing leaks between figures (the Agg canvas is all that is used).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from matplotlib.figure import Figure

from attnexp.util.files import atomic_open


def new_figure(nrows: int = 1, ncols: int = 1, *, cell: tuple[float, float] = (3.2, 2.6), **kw):
    """A ``Figure`` and its ``(nrows, ncols)`` array of axes, sized ``cell`` inches per subplot."""
    fig = Figure(figsize=(cell[0] * ncols, cell[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically (temp file + rename); returns the path."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return Path(path)


def safe_filename(name: str) -> str:
    """``name`` with anything but letters, digits, ``_ . -`` replaced, so it is a portable file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
