"""Matched budgets: ``match: params`` (or ``flops``) picks each variant's ``backbone.dim``.

A comparison is fair when every cell spends about the same budget (the Long Range Arena rules
ask for models within 10% of the baseline's parameters). ``apply_budget(cfg)`` sets
``backbone.dim`` to the width whose count (trainable parameters, or analytic attention FLOPs per
sample) lands closest to the reference cell's: the same backbone and dataset with
``attention=<match_reference>`` at the configured ``backbone.dim``. It records what it chose in
``cfg.matched`` (copied into ``results.json``): the config the run trains, and so its hash, holds
the matched width, and a re-run or a resumed run finds the same one.

Widths are searched, not solved: a variant may refuse a width (heads must divide it) and its
count need not be a polynomial in it (SE rounds its bottleneck to multiples of 8). The search
assumes only that the count does not shrink as the width grows. No Lightning import.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

PARAMS = "params"
FLOPS = "flops"
MATCH_BY = (PARAMS, FLOPS)  # the values of the ``match`` config key (null: no matching)
BAND = 0.05  # a matched cell's count is within 5% of the reference's
MAX_SCALE = 16  # widths up to this many times the configured one are searched
SEARCH = 64  # a refused width looks this far up or down for one the variant accepts


@dataclass(frozen=True)
class Matched:
    """The width a run trains at and how its count compares with the reference cell's."""

    by: str  # params | flops
    reference: str  # the reference attention variant
    reference_dim: int  # the configured backbone.dim, the reference's width
    reference_count: int
    dim: int  # the width chosen for this run
    count: int
    within_band: bool

    @property
    def deviation(self) -> float:
        """``count / reference_count - 1`` (0 when both are 0)."""
        if self.reference_count == 0:
            return 0.0 if self.count == 0 else math.inf
        return self.count / self.reference_count - 1


def check_match(cfg: DictConfig) -> str | None:
    """``cfg.match`` when it is null or one of ``MATCH_BY``; else a ValueError naming the key."""
    by = cfg.get("match")
    if by is not None and by not in MATCH_BY:
        raise ValueError(f"match must be null or one of {', '.join(MATCH_BY)}, got {by!r}")
    reference = cfg.get("match_reference")
    if by is not None and (not isinstance(reference, str) or not reference):
        raise ValueError(f"match_reference must name an attention variant, got {reference!r}")
    return by


def apply_budget(cfg: DictConfig) -> Matched | None:
    """Set ``cfg.backbone.dim`` to the matched width and ``cfg.matched`` to its record; None
    (``cfg`` untouched) when ``match`` is null. A config already carrying ``matched`` (a run's
    saved config) is left as it is: its width was matched when it started."""
    by = check_match(cfg)
    if by is None:
        return None
    if cfg.get("matched") is not None:
        return Matched(**OmegaConf.to_container(cfg.matched))
    reference = str(cfg.match_reference)
    dim = cfg.backbone.dim
    reference_count = measure(cfg, by, dim, _reference_attention(cfg, reference))
    chosen, count = closest_width(lambda d: measure(cfg, by, d, cfg.attention), reference_count, dim)
    within = abs(count - reference_count) <= BAND * reference_count
    matched = Matched(by, reference, dim, reference_count, chosen, count, within)
    with open_dict(cfg):
        cfg.backbone.dim = chosen
        cfg.matched = asdict(matched)
    return matched


def _reference_attention(cfg: DictConfig, reference: str) -> DictConfig:
    """The run's own attention config when it is the reference; else the reference's yaml."""
    from attnexp.config.attention import attention_config

    if (cfg.get("choices") or {}).get("attention") == reference:
        return cfg.attention
    try:
        return attention_config(reference)
    except ValueError as e:
        raise ValueError(f"match_reference: {e}") from e


def measure(cfg: DictConfig, by: str, dim: int, attention: DictConfig) -> int | None:
    """The count ``by`` of the model of ``cfg`` at width ``dim`` with ``attention``; None when
    the variant refuses that width (a constructor's ValueError, e.g. heads not dividing it)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from attnexp.attention import factory

    try:
        model = instantiate(cfg.backbone, dim=dim, attention=factory(attention))
    except (ValueError, InstantiationException):
        return None
    if by == FLOPS:
        return int(model.attention_flops())
    return model.trainable_params()


def closest_width(
    count_at: Callable[[int], int | None], target: int, dim: int
) -> tuple[int, int]:
    """``(width, count)``: the accepted width whose count is closest to ``target``, ties to the
    one nearest ``dim`` (a count that ignores the width keeps the configured one). Binary search
    for the first width reaching ``target``, then the accepted widths either side of it."""
    counts: dict[int, int | None] = {}

    def at(d: int) -> int | None:
        if d not in counts:
            counts[d] = count_at(d)
        return counts[d]

    def accepted(d: int, step: int) -> int | None:
        for w in range(d, d + step * SEARCH, step):
            if w >= 1 and at(w) is not None:
                return w
        return None

    lo, hi = 1, dim * MAX_SCALE
    while lo < hi:  # the first width whose next accepted width reaches the target
        mid = (lo + hi) // 2
        w = accepted(mid, 1)
        if w is not None and at(w) >= target:
            hi = mid
        else:
            lo = mid + 1
    candidates = {accepted(lo, 1), accepted(lo - 1, -1), accepted(dim, 1)} - {None}
    if not candidates:
        raise ValueError(
            f"match: the model builds at no width between 1 and {dim * MAX_SCALE} "
            f"(backbone.dim={dim}); check the attention and backbone settings"
        )
    best = min(candidates, key=lambda w: (abs(at(w) - target), abs(w - dim)))
    return best, at(best)


def budget_flag(records: list[dict[str, Any]]) -> str | None:
    """The report's ``budget`` cell for a row's matched runs: ``outside`` when any run's width
    missed the band, else the largest deviation from the reference (``±1.2%``); None unmatched."""
    if not records:
        return None
    matched = [Matched(**r) for r in records]
    if not all(m.within_band for m in matched):
        return "outside"
    worst = max((m.deviation for m in matched), key=abs)
    return f"{worst:+.1%}"
