"""Looking inside: PNG figures of the weights an attention module returns with ``return_weights=True``.

One figure per slot x weight, for the first ``max_samples`` samples of the batch, drawn by the
weight's kind (``WeightKind``, declared by the module in ``weight_kinds``), not by its name:

- attention map    (B, heads, N, M): one N x M map per sample (row) and head (column); on an image
  grid, also where the centre position looks, drawn on the grid.
- position weights (B, heads, N): weights over positions, on the grid for images, as lines else.
- channel gate     (B, C): one bar plot of the channel gates per sample.
- spatial gate     (B, *grid): one heat map (2-D grid) or line (1-D grid) per sample.
- branch mix       (K,): bars of the mixing weights of a module's K branches.

A weight whose kind is not declared is skipped with a warning: its figures should not stop a run.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from attnexp.attention.base import WeightKind
from attnexp.runs.record import DIAGNOSTIC_LABELS
from attnexp.util.plotting import new_figure, safe_filename, save_figure

if TYPE_CHECKING:
    from attnexp.models.common import Backbone


def _heatmap_row(fig, axes, maps: list[Tensor], titles: list[str]) -> None:
    """Heat maps side by side on one colour scale, so one colour bar is true for the whole row."""
    lo = min(float(m.min()) for m in maps)
    hi = max(float(m.max()) for m in maps)
    for ax, m, title in zip(axes, maps, titles, strict=True):
        im = ax.imshow(m, cmap="viridis", vmin=lo, vmax=hi, aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize="small")
    fig.colorbar(im, ax=list(axes), shrink=0.8)


def _plot_attn(w: Tensor, grid: Sequence[int], max_samples: int):
    """Each head's query x key map; for self-attention on an image grid, also the centre query's
    weights drawn on the grid (where that position looks)."""
    w = w[:max_samples]
    b_, heads, n, m = w.shape
    on_grid = len(grid) == 2 and n == m == math.prod(grid)
    query = (grid[0] // 2) * grid[1] + grid[1] // 2 if on_grid else None
    fig, axes = new_figure(b_, heads * (2 if on_grid else 1), cell=(2.4, 2.2))
    for b in range(b_):
        maps = [w[b, h] for h in range(heads)]
        titles = [f"sample {b}, head {h}" for h in range(heads)]
        if on_grid:
            maps += [w[b, h, query].reshape(*grid) for h in range(heads)]
            titles += [f"head {h}, centre query" for h in range(heads)]
        _heatmap_row(fig, axes[b], maps, titles)
        for ax in axes[b, :heads]:
            ax.set_xlabel("key", fontsize="x-small")
            ax.set_ylabel("query", fontsize="x-small")
    return fig


def _plot_pool(w: Tensor, grid: Sequence[int], max_samples: int):
    w = w[:max_samples]
    on_grid = len(grid) == 2 and w.shape[-1] == math.prod(grid)
    fig, axes = new_figure(w.shape[0], w.shape[1] if on_grid else 1, cell=(2.6, 2.2))
    for b in range(w.shape[0]):
        if on_grid:
            maps = [w[b, h].reshape(*grid) for h in range(w.shape[1])]
            _heatmap_row(fig, axes[b], maps, [f"sample {b}, head {h}" for h in range(len(maps))])
        else:
            ax = axes[b, 0]
            for h in range(w.shape[1]):
                ax.plot(w[b, h], label=f"head {h}")
            ax.set_title(f"sample {b}", fontsize="small")
            ax.set_xlabel("position", fontsize="x-small")
            ax.set_ylabel("pooling weight", fontsize="x-small")
            if w.shape[1] > 1:
                ax.legend(fontsize="xx-small")
    return fig


def _plot_channel(w: Tensor, grid: Sequence[int], max_samples: int):
    w = w[:max_samples]
    fig, axes = new_figure(w.shape[0], 1, cell=(max(3.0, 0.08 * w.shape[1]), 1.8))
    for b in range(w.shape[0]):
        ax = axes[b, 0]
        ax.bar(range(w.shape[1]), w[b])
        ax.set_title(f"sample {b}", fontsize="small")
        ax.set_ylabel("gate", fontsize="x-small")
    axes[-1, 0].set_xlabel("channel", fontsize="x-small")
    return fig


def _plot_spatial(w: Tensor, grid: Sequence[int], max_samples: int):
    w = w[:max_samples]
    fig, axes = new_figure(w.shape[0], 1, cell=(3.2, 2.4))
    for b in range(w.shape[0]):
        ax = axes[b, 0]
        if len(grid) == 2:
            fig.colorbar(ax.imshow(w[b], cmap="viridis"), ax=ax, shrink=0.8)
        else:
            ax.plot(w[b])
            ax.set_xlabel("position", fontsize="x-small")
            ax.set_ylabel("gate", fontsize="x-small")
        ax.set_title(f"sample {b}", fontsize="small")
    return fig


def _plot_branches(w: Tensor, grid: Sequence[int], max_samples: int):
    """A module's mixing weights over its branches (muse), shared by every sample."""
    fig, axes = new_figure(1, 1, cell=(max(2.5, 0.6 * len(w)), 2.2))
    axes[0, 0].bar(range(len(w)), w)
    axes[0, 0].set_xticks(range(len(w)))
    axes[0, 0].set_xlabel("branch", fontsize="x-small")
    axes[0, 0].set_ylabel("mixing weight", fontsize="x-small")
    return fig


# How each weight kind of the attention contract is drawn.
PLOTTERS: dict[WeightKind, Callable] = {
    WeightKind.ATTENTION_MAP: _plot_attn,
    WeightKind.POSITION_WEIGHTS: _plot_pool,
    WeightKind.CHANNEL_GATE: _plot_channel,
    WeightKind.SPATIAL_GATE: _plot_spatial,
    WeightKind.BRANCH_MIX: _plot_branches,
}


def save_attention_figures(
    weights_by_slot: Mapping[str, Mapping[str, Tensor]],
    kinds_by_slot: Mapping[str, Mapping[str, WeightKind]],
    grid: Sequence[int],
    out_dir: str | os.PathLike,
    max_samples: int = 4,
) -> list[Path]:
    """Save one PNG per slot x weight into ``out_dir``, named ``<slot>.<weight name>.png``.

    ``weights_by_slot`` maps a slot name (e.g. ``"blocks.0.attn"``) to the weights dict its module
    returned, ``kinds_by_slot`` to that module's ``weight_kinds``; ``grid`` is the token grid,
    ``(L,)`` or ``(H, W)``. Returns the written paths (for logging as images).
    """
    if len(grid) not in (1, 2):
        raise ValueError(f"grid must be (L,) or (H, W), got {tuple(grid)}")
    if max_samples < 1:
        raise ValueError(f"max_samples must be a positive integer, got {max_samples!r}")
    paths = []
    for slot, weights in weights_by_slot.items():
        kinds = kinds_by_slot.get(slot, {})
        for key, w in weights.items():
            kind = kinds.get(key)
            if kind is None:
                warnings.warn(
                    f"slot {slot!r}: weights {key!r} have no declared kind (declared: "
                    f"{', '.join(kinds) or 'none'}), so no figure",
                    stacklevel=2,
                )
                continue
            kind.check(key, w, grid)
            fig = PLOTTERS[kind](w.detach().float().cpu(), tuple(grid), max_samples)
            fig.suptitle(f"{slot}: {key}", fontsize="medium")
            name = safe_filename(f"{slot}.{key}") + ".png"
            paths.append(save_figure(fig, Path(out_dir) / name))
    return paths


def save_model_figures(
    model: Backbone, x: Tensor, out_dir: str | os.PathLike, max_samples: int = 4
) -> list[Path]:
    """Figures of what every attention slot of ``model`` does on the inputs ``x``, one file per
    slot x weight kind in ``out_dir``; none (and no dir) for a model without slots (``none``).

    Runs ``model`` in eval mode (restoring its mode after) on the first ``max_samples`` inputs.
    """
    slots = dict(model.slots())
    if not slots or max_samples < 1:
        return []
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        _, weights = model.attention_weights(x[:max_samples].to(device))
    finally:
        model.train(was_training)
    paths = []
    for name, slot in slots.items():  # each slot with its own grid (patches shrink it)
        kinds = {name: slot.module.weight_kinds}
        paths += save_attention_figures(
            {name: weights[name]}, kinds, slot.grid, out_dir, max_samples
        )
    return paths


DIAGNOSTICS_FIGURE = "attention_diagnostics.png"


def save_diagnostics_figure(
    per_slot: Mapping[str, Mapping[str, Sequence[float | None]]], out_dir: str | os.PathLike
) -> Path | None:
    """One panel per statistic of ``attnexp.attention.diagnostics`` against the slot (in model
    order, the layer), each map a dot and the mean over maps a line; ``None`` without a slot."""
    names = [name for name, stats in per_slot.items() if any(v is not None for v in stats["entropy"])]
    if not names:
        return None
    fig, axes = new_figure(1, len(DIAGNOSTIC_LABELS), cell=(3.0, 2.6))
    for ax, (stat, label) in zip(axes[0], DIAGNOSTIC_LABELS.items(), strict=True):
        means = []
        for layer, name in enumerate(names):
            values = [v for v in per_slot[name][stat] if v is not None]
            ax.scatter([layer] * len(values), values, s=10, alpha=0.5, color="tab:blue")
            means.append(sum(values) / len(values) if values else math.nan)
        ax.plot(range(len(names)), means, color="tab:blue")
        ax.set_xlabel("layer")
        ax.set_xticks(range(len(names)))
        ax.set_title(label, fontsize="small")
        ax.grid(alpha=0.3)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return save_figure(fig, Path(out_dir) / DIAGNOSTICS_FIGURE)
