"""Optimizer parameter groups and learning-rate schedules built from ``(optimizer, total_steps)``,
the scheduler convention."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from attnexp.util.checks import check_int, check_positive


def param_groups(params: Iterable[nn.Parameter], decay_matrices_only: bool) -> list[dict]:
    """Every trainable parameter in one group; or, as nanoGPT, weight decay on matrices
    (>= 2-D: linear and embedding weights) only, biases and norm gains in a group without it."""
    params = list(params)
    if not decay_matrices_only:
        return [{"params": params}]
    return [
        {"params": [p for p in params if p.dim() >= 2]},  # the optimizer's weight_decay
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    warmup_fraction: float | None = None,
    warmup_steps: int | None = None,
    min_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up, then cosine decay from the base learning rate to ``min_ratio`` times it at
    ``total_steps`` (held there after).

    The warm-up is set by one of ``warmup_fraction`` (a fraction of the steps, reaching the peak
    on its last step) or ``warmup_steps`` (a count; lr x (step + 1) / (warmup_steps + 1), then the
    decay over ``total_steps - warmup_steps``: nanoGPT's ``get_lr`` with ``lr_decay_iters =
    total_steps`` and ``min_lr = min_ratio x lr``); neither: no warm-up.
    """
    if warmup_fraction is not None and warmup_steps is not None:
        raise ValueError(
            "optim.scheduler.warmup_fraction and optim.scheduler.warmup_steps exclude each other: "
            f"set one and the other to null, got {warmup_fraction} and {warmup_steps}"
        )
    if warmup_fraction is not None and not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(
            f"optim.scheduler.warmup_fraction must be in [0, 1), got {warmup_fraction}"
        )
    if warmup_steps is not None:
        check_int("optim.scheduler.warmup_steps", warmup_steps, 0)
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"optim.scheduler.min_ratio must be in [0, 1], got {min_ratio}")
    if warmup_steps is not None:
        warmup, ramp = warmup_steps, warmup_steps + 1
    else:
        warmup = int(total_steps * (warmup_fraction or 0.0))
        ramp = warmup

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / ramp
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def step_decay(
    optimizer: Optimizer,
    total_steps: int,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
) -> LambdaLR:
    """The learning rate times ``gamma`` at each milestone, a fraction of ``total_steps`` (He et
    al. 2016 on CIFAR: divided by 10 at 32k and 48k of 64k iterations, i.e. 0.5 and 0.75).
    Fractions, not step counts, so the schedule follows ``trainer.max_epochs`` and the batch size."""
    fractions = list(milestones)
    if any(
        isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m < 1 for m in fractions
    ) or fractions != sorted(set(fractions)):
        raise ValueError(
            f"optim.scheduler.milestones must be increasing fractions of training in (0, 1), "
            f"got {milestones!r}"
        )
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma <= 1:
        raise ValueError(f"optim.scheduler.gamma must be in (0, 1], got {gamma!r}")
    boundaries = [round(m * total_steps) for m in fractions]

    def factor(step: int) -> float:
        return gamma ** sum(step >= b for b in boundaries)

    return LambdaLR(optimizer, factor)


def warmup_rsqrt(optimizer: Optimizer, total_steps: int, warmup_steps: int = 1000) -> LambdaLR:
    """The Long Range Arena's schedule (``create_learning_rate_scheduler``, factors ``constant *
    linear_warmup * rsqrt_decay``) normalised to its peak: at optimizer step ``s`` the base lr
    times ``min(1, s / warmup_steps) * sqrt(warmup_steps / max(s, warmup_steps))``, so 0 at the
    first step, the base lr at ``warmup_steps``, then decaying as ``1 / sqrt(s)``.

    LRA multiplies its ``learning_rate`` by ``1 / sqrt(max(s, warmup_steps))`` (not normalised):
    its base 0.05 with 1,000 warm-up steps peaks at 0.05 / sqrt(1000) = 1.58e-3, the lr to set here.
    ``total_steps`` is unused (the decay does not depend on it): the scheduler convention.
    """
    del total_steps
    check_positive("optim.scheduler.warmup_steps", warmup_steps)

    def factor(step: int) -> float:
        return min(1.0, step / warmup_steps) * math.sqrt(warmup_steps / max(step, warmup_steps))

    return LambdaLR(optimizer, factor)
