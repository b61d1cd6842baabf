"""The contract every attention module obeys.

Input is tokens-last, ``(B, *grid, C)``: ``grid`` is ``(L,)`` for sequences and ``(H, W)`` for
images. Mixers and gates return the same shape; pooling returns ``(B, C)``. Every module is built
with the keywords ``dim`` (= C) and ``grid_ndim`` (the grid's rank: 1 for sequences, 2 for images;
default 1) plus its own hyper-parameters, and says what ``kind`` it is so a backbone knows which
slot it fills. A backbone calls ``attention_partial(dim=C, grid_ndim=len(grid))``. Knowing the rank
at construction lets a module allocate exactly the parameters it uses (a length-k kernel on
sequences, k x k on images); it refuses an input of any other grid rank.

``layer`` (optional): the 0-based index of the block that holds the slot, for a module whose
behaviour depends on its depth (``mha``'s ``differential``: lambda_init). A backbone passes it
only to a module whose constructor names ``layer`` (``accepts_layer``), so a variant written
without it builds unchanged; the readout's pooling slot gets none.

``causal`` (default False): in a causal (language) model the output at position t may depend on
inputs at positions <= t only, on a 1-D grid. A module that cannot be causal refuses
``causal=True`` at construction with a ValueError naming ``causal``.

``mask`` (optional): a padding mask ``(B, *grid)`` bool, True at real positions, for a batch of
variable-length samples (``x`` is filled with anything finite past each sample's end). Every
module leaves padded positions out: they get zero attention weight as keys, are left out of means
and maxima, and convolutions see zeros there, so the output at real positions (and a pooled
output) does not depend on what or how much padding follows. Outputs AT padded positions are
finite but otherwise unspecified; a sample with no real position gives finite output too.
``check_input(x, mask)`` refuses a mask of the wrong shape or dtype. Invariance holds for padding
appended along any grid axis except where a knob depends on the raster order or the grid size by
nature: ``kv_stride`` on an image (appended columns move the kept positions),
``kv_select=random`` (the drawn subset depends on N).

``forward(x, mask=None, return_weights=False)`` returns the output; with ``return_weights=True`` it returns
``(output, weights)`` where ``weights`` is a dict of named tensors for visualisation. Weights are an
explicit opt-in because producing them forces the slow explicit path. Each module declares the
``WeightKind`` of every name it returns (``weight_kinds``); figures are chosen by kind.
"""

from __future__ import annotations

import enum
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attnexp.util.checks import check_positive

GRID_NDIMS = (1, 2)  # sequences (L,) and images (H, W)
CONSTRUCTOR_KEYWORDS = ("dim", "grid_ndim", "causal")  # what a backbone may pass every module
CONTRACT_PAGE = "see 'The attention contract' in docs/extending.md"


class ContractError(TypeError):
    """An attention class that breaks the contract (a missing ``kind``, ``weight_kinds`` or
    constructor keyword): refused when it is defined or built, citing the page."""


class Kind(str, enum.Enum):
    """Where a module belongs in a backbone."""

    IDENTITY = "identity"  # does nothing: the backbone drops the slot (the baseline)
    MIXER = "mixer"  # mixes information across positions: (B, *grid, C) -> same
    GATE = "gate"  # rescales channels and/or positions: (B, *grid, C) -> same
    POOL = "pool"  # collapses the grid: (B, *grid, C) -> (B, C)


class WeightKind(str, enum.Enum):
    """What one tensor of ``forward(x, return_weights=True)``'s weights holds, so figures are
    chosen by what it is rather than by which module returned it."""

    ATTENTION_MAP = "attention_map"  # each query's weights over the keys
    POSITION_WEIGHTS = "position_weights"  # weights over positions (attention pooling)
    CHANNEL_GATE = "channel_gate"
    SPATIAL_GATE = "spatial_gate"
    BRANCH_MIX = "branch_mix"  # mixing weights of a module's branches, shared by the batch

    @property
    def shape(self) -> tuple[str, ...]:
        """The shape's axes: B batch, N = prod(grid) queries or positions, M keys, C = dim, K
        branches; ``*grid`` the grid's own sizes."""
        return _WEIGHT_SHAPES[self]

    def check(self, name: str, w: Tensor, grid: Sequence[int], dim: int | None = None) -> None:
        """Refuse ``w`` (named ``name``) unless it has this kind's shape on ``grid``."""
        known = {"N": math.prod(grid), "C": dim}
        expected = [n for axis in self.shape for n in (grid if axis == "*grid" else [known.get(axis)])]
        if w.dim() != len(expected) or any(
            n is not None and n != size for n, size in zip(expected, w.shape, strict=True)
        ):
            raise ValueError(
                f"weights {name!r} must have shape ({', '.join(self.shape)}) ({self.value}, "
                f"grid={tuple(grid)}), got {tuple(w.shape)}"
            )


_WEIGHT_SHAPES = {
    WeightKind.ATTENTION_MAP: ("B", "heads", "N", "M"),
    WeightKind.POSITION_WEIGHTS: ("B", "heads", "N"),
    WeightKind.CHANNEL_GATE: ("B", "C"),
    WeightKind.SPATIAL_GATE: ("B", "*grid"),
    WeightKind.BRANCH_MIX: ("K",),
}


class AttentionModule(nn.Module):
    """Base class: subclasses set ``kind`` and ``weight_kinds`` and implement ``forward`` and
    ``flops``; they call ``check_input(x)`` in ``forward`` and ``num_positions(grid)`` in
    ``flops``."""

    kind: ClassVar[Kind]
    # name -> kind of each tensor ``forward(x, return_weights=True)`` returns.
    weight_kinds: ClassVar[Mapping[str, WeightKind]]

    def __init_subclass__(cls, **kwargs: object) -> None:
        """A subclass whose constructor cannot take what every backbone passes is refused when
        it is defined, not when a language model first builds it."""
        super().__init_subclass__(**kwargs)
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        missing = [name for name in CONSTRUCTOR_KEYWORDS if name not in params]
        if missing:
            raise ContractError(
                f"{cls.__qualname__}.__init__ must take {', '.join(missing)} (every backbone "
                f"passes dim= and grid_ndim=, a language model causal=True) and hand them to "
                f"super().__init__: {CONTRACT_PAGE}"
            )

    def __init__(self, dim: int, grid_ndim: int = 1, causal: bool = False) -> None:
        super().__init__()
        check_positive("dim", dim)
        if not isinstance(causal, bool):
            raise ValueError(f"causal must be true or false, got {causal!r}")
        if (
            isinstance(grid_ndim, bool)
            or not isinstance(grid_ndim, int)
            or grid_ndim not in GRID_NDIMS
        ):
            raise ValueError(f"grid_ndim must be 1 (sequences) or 2 (images), got {grid_ndim!r}")
        if causal and grid_ndim != 1:
            raise ValueError(
                f"causal=True needs a sequence (grid_ndim=1): causality orders positions in time; "
                f"got grid_ndim={grid_ndim}"
            )
        self.dim = dim
        self.grid_ndim = grid_ndim
        self.causal = causal
        check_contract(type(self))

    def check_grid(self, grid: tuple[int, ...]) -> None:
        """Refuse a grid whose rank is not the ``grid_ndim`` the module was built for."""
        if len(grid) != self.grid_ndim:
            raise ValueError(
                f"got a {len(grid)}-D grid {tuple(grid)} but the module was built with "
                f"grid_ndim={self.grid_ndim}; build it with grid_ndim=len(grid)"
            )

    def check_input(self, x: Tensor, mask: Tensor | None = None) -> None:
        """Refuse an input that is not ``(B, *grid, C)`` with ``len(grid) == grid_ndim`` and
        ``C == dim``, and a ``mask`` that is not ``(B, *grid)`` bool (``check_mask``)."""
        if x.dim() < 3:
            raise ValueError(f"expected input of shape (B, *grid, C), got {tuple(x.shape)}")
        self.check_grid(tuple(x.shape[1:-1]))
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"input has {x.shape[-1]} channels but the module was built with dim={self.dim}"
            )
        if mask is not None:
            check_mask(mask, x.shape[:-1])

    def num_positions(self, grid: tuple[int, ...]) -> int:
        """``prod(grid)``, after checking the grid's rank (for ``flops``)."""
        self.check_grid(grid)
        return math.prod(grid)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False
    ):  # pragma: no cover - abstract
        raise NotImplementedError

    def flops(self, grid: tuple[int, ...]) -> int:
        """Analytic forward FLOPs for one sample on ``grid`` (a multiply-add counts 2).

        Counted by hand because FLOP counters see zero inside ``scaled_dot_product_attention``.
        Convention shared by every module: matmuls and convolutions count 2 per multiply-add;
        reductions (mean, max) and gating products over a full tensor count 1 per element;
        normalising attention scores into weights (softmax, sigmoid or max over the keys) counts
        4 per score (as ``design.AttentionCore`` does: at small head widths it is not negligible
        beside the score matmul); biases, other nonlinearities (sigmoid gates, ReLU) and
        normalisation layers are not counted.
        """
        raise NotImplementedError(f"{type(self).__name__} does not count its FLOPs")

    def state_floats(self, grid: tuple[int, ...]) -> int | None:
        """Floats one sequence keeps to continue it causally after ``prod(grid)`` positions
        (Zoology's state size): ``mha``'s keys and values, a recurrent mixer's state. None where
        the module declares none (the default; not a sequence mixer, or not counted)."""
        return None


def accepts_layer(cls: type) -> bool:
    """Whether ``cls``'s constructor names the optional ``layer`` keyword (the block's index)."""
    return "layer" in inspect.signature(cls.__init__).parameters


def check_contract(cls: type) -> None:
    """Refuse, when a module is built, a class without its ``kind`` (a ``Kind``) or its
    ``weight_kinds`` (names to ``WeightKind``), citing the page that gives the contract."""
    if not isinstance(getattr(cls, "kind", None), Kind):
        raise ContractError(
            f"{cls.__qualname__} must set the class attribute kind to a Kind (MIXER, GATE, POOL or "
            f"IDENTITY): {CONTRACT_PAGE}"
        )
    kinds = getattr(cls, "weight_kinds", None)
    if not isinstance(kinds, Mapping) or not all(
        isinstance(name, str) and isinstance(kind, WeightKind) for name, kind in kinds.items()
    ):
        raise ContractError(
            f"{cls.__qualname__} must set the class attribute weight_kinds to a dict of the names "
            f"forward(x, return_weights=True) returns to their WeightKind ({{}} for none), got "
            f"{kinds!r}: {CONTRACT_PAGE}"
        )


def check_mask(mask: Tensor, shape: Sequence[int]) -> None:
    """Refuse a padding mask that is not a bool tensor of ``shape`` (``(B, *grid)`` of the input
    it goes with), naming what was expected."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(shape):
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(
            f"mask must be a bool tensor of shape (B, *grid) = {tuple(shape)}, True at real "
            f"positions, got {got}"
        )


def check_heads(dim: int, num_heads: int) -> int:
    """``dim // num_heads``, refusing a non-positive ``num_heads`` or one that leaves a remainder."""
    check_positive("num_heads", num_heads)
    if dim % num_heads:
        raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
    return dim // num_heads


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below ``min_value``
    (default ``divisor``) and never more than 10% below ``value`` (as timm's helper)."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def flatten_grid(x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """``(B, *grid, C)`` -> ``(B, N, C)`` plus the grid, so it can be restored."""
    grid = tuple(x.shape[1:-1])
    return x.reshape(x.shape[0], -1, x.shape[-1]), grid


def unflatten_grid(x: Tensor, grid: tuple[int, ...]) -> Tensor:
    """``(B, N, C)`` -> ``(B, *grid, C)``."""
    return x.reshape(x.shape[0], *grid, x.shape[-1])


def channels_first(x: Tensor) -> Tensor:
    """``(B, *grid, C)`` -> ``(B, C, *grid)`` for convolutions."""
    return torch.movedim(x, -1, 1)


def channels_last(x: Tensor) -> Tensor:
    """``(B, C, *grid)`` -> ``(B, *grid, C)``."""
    return torch.movedim(x, 1, -1)


def grid_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None, groups: int = 1) -> Tensor:
    """Same-padded convolution of channels-first ``x`` ``(B, C, *grid)`` over its 1-D or 2-D grid.

    ``weight`` has the grid's rank: ``(out, in // groups, k)`` on a sequence, ``(out, in // groups,
    k, k)`` on an image, odd ``k``. Both run as conv2d in channels-last memory format (a sequence as
    a 1 x L image with a 1 x k kernel, a view, no extra parameters): that is how tokens-last
    activations already lie and is PyTorch's fast CPU path for depthwise convs (several times
    faster than conv1d or channels-first there).
    """
    if x.dim() != weight.dim():
        raise ValueError(
            f"a {weight.dim() - 2}-D kernel cannot convolve a {x.dim() - 2}-D grid {tuple(x.shape[2:])}"
        )
    if x.dim() == 3:
        return grid_conv(x.unsqueeze(2), weight.unsqueeze(2), bias, groups).squeeze(2)
    x = x.contiguous(memory_format=torch.channels_last)
    padding = (weight.shape[-2] // 2, weight.shape[-1] // 2)
    return F.conv2d(x, weight, bias, padding=padding, groups=groups)
