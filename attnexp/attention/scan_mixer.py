"""What the recurrent mixers share (``retnet``, ``gla``, ``mamba2``, ``deltanet``,
``gated_deltanet``, ``based``'s linear attention; the convolutional ones build on it too): a causal
scan over the flattened grid, made bidirectional for a classifier by adding the scan of the
reversed sequence (as Hydra and Vision Mamba do), and generation from a kept state (a recurrent
state, short convolutions' last inputs).

``ScanMixer.scan(chunkwise, *tensors)`` runs a chunkwise recurrence (``attnexp.attention.
recurrence``): from a zero state in training, both ways when not causal; while
``Transformer.decoding()`` is open (``self.cache`` a ``RecurrentState``), from the kept state, which
it then replaces, so each new token costs the same whatever the context. ``implied_map`` gives
the map ``(B, H, N, N)`` the scan implies, for ``return_weights``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from attnexp.attention.base import AttentionModule, Kind, WeightKind
from attnexp.attention.recurrence import both_ways


@dataclass
class RecurrentState:
    """What a causal recurrent mixer keeps while decoding: ``S`` ``(B, H, dk, dv)`` (None before
    the first token), how many positions it has read, and its short convolutions' last inputs
    by name (``ShortConv``'s tails)."""

    state: Tensor | None = None
    length: int = 0
    tails: dict[str, Tensor] = field(default_factory=dict)


def implied_map(scores: Callable[..., Tensor], causal: bool, *tensors: Tensor) -> Tensor:
    """The map ``(B, H, N, N)`` a scan implies (``scores(*tensors)``, time at dimension 2); not
    causal, plus the reversed scan's, reversed back along both axes (``both_ways``)."""
    weights = scores(*tensors)
    if causal:
        return weights
    return weights + scores(*(t.flip(2) for t in tensors)).flip(-2, -1)


class ScanMixer(AttentionModule):
    """A token mixer computed by a recurrence over the positions (raster order on an image), or
    one that generates from a kept state."""

    kind = Kind.MIXER
    weight_kinds = {"attn": WeightKind.ATTENTION_MAP}
    bounded_state = True  # what it keeps does not grow with the positions read

    def __init__(self, dim: int, grid_ndim: int = 1, causal: bool = False) -> None:
        super().__init__(dim, grid_ndim, causal)
        self.cache: RecurrentState | None = None  # set while decoding (Transformer.decoding)

    @property
    def decodable(self) -> bool:
        """Whether it generates with a ``RecurrentState`` (causal mixers do)."""
        return self.causal

    def empty_cache(self) -> RecurrentState:
        return RecurrentState()

    def conv_tail(self, name: str) -> Tensor | None:
        """The kept last inputs of the short convolution ``name`` while decoding, else None."""
        return None if self.cache is None else self.cache.tails.get(name)

    def keep_tail(self, name: str, tail: Tensor) -> None:
        """Keep ``tail`` as the short convolution ``name``'s last inputs while decoding."""
        if self.cache is not None:
            self.cache.tails[name] = tail

    def scan(self, chunkwise: Callable[..., tuple[Tensor, Tensor]], *tensors: Tensor) -> Tensor:
        """``chunkwise(*tensors, state=...) -> (outputs, final state)`` over the positions
        (dimension 2 of every tensor): continued from the kept state while decoding, else from
        zero, and both ways when not causal."""
        if self.cache is not None:
            out, self.cache.state = chunkwise(*tensors, state=self.cache.state)
            self.cache.length += tensors[0].shape[2]
            return out

        def from_zero(*tensors: Tensor) -> Tensor:
            return chunkwise(*tensors, state=None)[0]

        return from_zero(*tensors) if self.causal else both_ways(from_zero, *tensors)
