"""What the attention maps of a model look like, measured the way the papers of its knobs report it.

For every attention slot whose mixer has softmax-style maps (``mha``, ``muse``: their
``AttentionCore``), on a batch of inputs, per map (a head; ``differential``'s two maps per head
each), averaged over the real query positions of the batch:

- ``entropy``: ``-sum_j p_ij log p_ij`` of each query's weights renormalised to sum to 1 (nats; a
  uniform map over n keys has ``log n``). A query whose weights are all zero (``softpick``, or
  stick-breaking's first position) is left out;
- ``sink_mass``: the weight on the first key (position 0), the "attention sink" that gated
  attention and softpick remove (Xiao et al. 2023; Qiu et al. 2025);
- ``distance``: ``sum_j a_ij |pos_i - pos_j| / sum_j a_ij``, the mean distance from query to key
  in positions (Euclidean on an image grid), as ViT's "mean attention distance";
- ``max_logit``: the largest logit over the batch's allowed query-key pairs, after ``softcap``
  and before the position biases: what ``qk_norm`` and ``softcap`` bound.

The maps are measured block by block as the chunked path computes them (``design.map_blocks``),
so an ``O(N)`` path stays ``O(N)``: no ``N x M`` map is held. ``measure(model, x)`` returns the
statistics per slot; ``summary`` reduces them to one number each, as ``results.json`` records.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from attnexp.attention.design import AttentionCore, MapBlock

STATISTICS = ("entropy", "sink_mass", "distance", "max_logit")


@dataclass
class MapStatistics:
    """Sums over the query rows a core's maps have seen, per map (``h``); an ``observer`` of
    ``AttentionCore``."""

    sums: dict[str, Tensor] = field(default_factory=dict)  # entropy, sink_mass, distance (h,)
    rows: Tensor | None = None  # real query rows counted per map (h,), entropy's and distance's
    all_rows: Tensor | None = None  # every real query row per map (h,), sink mass's
    max_logit: Tensor | None = None  # (h,)

    def __call__(
        self, blocks: Iterator[MapBlock], queries: Tensor, keys: Tensor, padding: Tensor | None
    ) -> None:
        for block in blocks:
            self.add(block, queries, keys, padding)

    def add(self, block: MapBlock, queries: Tensor, keys: Tensor, padding: Tensor | None) -> None:
        """One block of query rows; ``queries`` ``(N, ndim)`` and ``keys`` ``(M, ndim)`` (or
        ``(B, M, ndim)``) grid coordinates, ``padding`` ``(B, N)`` True at real positions."""
        weights = block.weights.double()
        b, h, r, m = weights.shape
        rows = slice(block.start, block.start + r)
        real = torch.ones(b, r, dtype=torch.bool, device=weights.device)
        if padding is not None:
            real = padding[:, rows]
        real = real[:, None, :].expand(b, h, r)  # (B, h, rows)
        total = weights.sum(-1)
        counted = real & (total > 0)
        p = weights / total.clamp(min=torch.finfo(weights.dtype).tiny)[..., None]
        entropy = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(-1)
        gaps = queries[rows, None, :] - (keys[:, None] if keys.dim() == 3 else keys[None])
        distance = gaps.double().norm(dim=-1)  # (rows, M) or (B, rows, M)
        if distance.dim() == 3:
            distance = distance[:, None]
        mean_distance = (weights * distance).sum(-1) / total.clamp(min=torch.finfo(weights.dtype).tiny)
        self._add("entropy", entropy, counted)
        self._add("distance", mean_distance, counted)
        self._add("sink_mass", weights[..., 0], real)
        self.rows = _plus(self.rows, counted.sum((0, 2)))
        self.all_rows = _plus(self.all_rows, real.sum((0, 2)))
        allowed = real[..., None] if block.allowed is None else block.allowed & real[..., None]
        logits = block.logits.double().masked_fill(~allowed, -math.inf)
        top = logits.amax((0, 2, 3))
        self.max_logit = top if self.max_logit is None else torch.maximum(self.max_logit, top)

    def _add(self, name: str, values: Tensor, counted: Tensor) -> None:
        self.sums[name] = _plus(self.sums.get(name), torch.where(counted, values, 0).sum((0, 2)))

    def per_map(self) -> dict[str, list[float]]:
        """Each statistic per map: the means (NaN where no row counted) and the max logit."""
        if self.rows is None:
            return {name: [] for name in STATISTICS}
        out = {}
        for name in ("entropy", "distance"):
            out[name] = (self.sums[name] / self.rows).tolist()
        out["sink_mass"] = (self.sums["sink_mass"] / self.all_rows).tolist()
        out["max_logit"] = self.max_logit.tolist()
        return {name: [_finite(x) for x in out[name]] for name in STATISTICS}


def _plus(total: Tensor | None, value: Tensor) -> Tensor:
    return value if total is None else total + value


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def cores(model: nn.Module) -> dict[str, AttentionCore]:
    """The attention cores of ``model`` by the name of the slot (or module) holding each."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, AttentionCore):
            slot = name.removesuffix(".core").removesuffix(".module")
            found[slot] = module
    return found


def measure(model: nn.Module, x: Tensor, mask: Tensor | None = None) -> dict[str, dict[str, list[float]]]:
    """The statistics per map of every attention core of ``model`` on the inputs ``x``, by slot
    name, from one forward pass in eval mode without gradients (the model's mode is restored)."""
    found = cores(model)
    observers = {name: MapStatistics() for name in found}
    was_training = model.training
    model.eval()
    try:
        for name, core in found.items():
            core.observer = observers[name]
        with torch.no_grad():  # forward itself: a compiled model's graph has no observers
            model.forward(x) if mask is None else model.forward(x, mask)
    finally:
        for core in found.values():
            core.observer = None
        model.train(was_training)
    return {name: observer.per_map() for name, observer in observers.items()}


def summary(per_slot: Mapping[str, Mapping[str, list[float | None]]]) -> dict[str, float | None]:
    """One number per statistic over every slot and map: the mean of the means, the max of the
    max logits; ``None`` when no map was measured."""
    out: dict[str, float | None] = {}
    for name in STATISTICS:
        values = [v for stats in per_slot.values() for v in stats[name] if v is not None]
        if not values:
            out[name] = None
        else:
            out[name] = max(values) if name == "max_logit" else sum(values) / len(values)
    return out
