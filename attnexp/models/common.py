"""What both backbones share: attention slots, the input embedding, the readout, the padding mask.

A batch of variable-length token sequences carries a padding mask ``(B, *grid)`` bool, True at
real positions: ``Backbone.forward(x, mask)`` and ``features(x, mask)`` take one, or derive it as
``x != shape.pad_index`` when the data has a pad id, so the training modules pass nothing. The
mask reaches every slot and the readout; padded positions never change a real position's output.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from attnexp.attention.base import (
    AttentionModule,
    Kind,
    accepts_layer,
    channels_first,
    channels_last,
    check_mask,
)
from attnexp.attention.factory import AttentionFactory
from attnexp.attention.masking import flat_mask, masked_mean
from attnexp.data.shape import DataShape

POSITIONWISE = (Kind.MIXER, Kind.GATE)  # the kinds that sit in a block and keep every position


def kind_of(attention: AttentionFactory) -> Kind:
    """The kind of module ``attention`` builds, read from its class when it is a partial."""
    cls = getattr(attention, "func", attention)
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, Kind):
        raise TypeError(f"attention {cls!r} must be an AttentionModule class (or a partial of one)")
    return kind


def build_attention(
    attention: AttentionFactory,
    dim: int,
    grid: Sequence[int],
    causal: bool = False,
    layer: int | None = None,
) -> AttentionModule:
    """``attention(dim=..., grid_ndim=...)``, plus ``causal=True`` in a language model. ``causal``
    is passed only when set, so a variant written before the flag still builds for classification;
    ``layer`` (the block's 0-based index) only to a module that names it (``accepts_layer``)."""
    extra = {"causal": True} if causal else {}
    if layer is not None and accepts_layer(getattr(attention, "func", attention)):
        extra["layer"] = layer
    return attention(dim=dim, grid_ndim=len(grid), **extra)


def block_slot(
    attention: AttentionFactory,
    dim: int,
    grid: Sequence[int],
    channels_first: bool = False,
    causal: bool = False,
    layer: int | None = None,
) -> AttentionSlot | None:
    """The slot inside a residual block: MIXER and GATE sit there; IDENTITY and POOL leave none.
    ``causal``: a language model's block, whose slot must not see later positions; POOL refuses
    (``refuse_pool``). ``layer``: the block's 0-based index (``build_attention``)."""
    kind = kind_of(attention)
    if causal and kind is Kind.POOL:
        refuse_pool(attention, dim, grid)
    if kind in POSITIONWISE:
        module = build_attention(attention, dim, grid, causal, layer)
        return AttentionSlot(module, grid, channels_first)
    return None


def refuse_pool(attention: AttentionFactory, dim: int, grid: Sequence[int]) -> None:
    """A language model reads out every position, so a POOL module, which collapses the sequence,
    has no place in it. Built with ``causal=True`` first so its own refusal, which names
    ``causal``, is the one the user reads."""
    build_attention(attention, dim, grid, causal=True)
    name = getattr(getattr(attention, "func", attention), "__name__", attention)
    raise ValueError(
        f"causal=True: {name} pools the sequence into one vector, and a language model predicts "
        "a token at every position; use a mixer, a gate or none"
    )


def readout_slot(
    attention: AttentionFactory, dim: int, grid: Sequence[int]
) -> AttentionSlot | None:
    """The readout's pooling slot: only POOL sits there (the others read out by the mean)."""
    if kind_of(attention) is Kind.POOL:
        return AttentionSlot(build_attention(attention, dim, grid), grid)
    return None


class AttentionSlot(nn.Module):
    """One place in a backbone that holds an attention module and remembers the grid it sees.

    ``channels_first=True`` for convolutional backbones: the module is tokens-last, so the slot
    permutes around it. ``capture`` turns on ``return_weights`` (the slow path) for inspection only.
    A padding ``mask`` ``(B, *grid)`` is passed on only when there is one, so a variant written
    without the argument still works unmasked.
    """

    def __init__(self, module: AttentionModule, grid: Sequence[int], channels_first: bool = False):
        super().__init__()
        self.module = module
        self.grid = tuple(grid)
        self.channels_first = channels_first
        self.capture = False
        self.weights: dict[str, Tensor] | None = None

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.channels_first:
            x = channels_last(x)
        padding = {} if mask is None else {"mask": mask}
        if self.capture:
            if tuple(x.shape[1:-1]) != self.grid:
                raise RuntimeError(f"slot built for grid {self.grid} saw {tuple(x.shape[1:-1])}")
            y, self.weights = self.module(x, return_weights=True, **padding)
        else:
            y = self.module(x, **padding)
        if self.channels_first and y.dim() == x.dim():  # pooling returns (B, C): nothing to undo
            y = channels_first(y)
        return y

    def flops(self) -> int:
        return int(self.module.flops(self.grid))


class Backbone(nn.Module):
    """Base for classifiers with attention slots: FLOP accounting and weight collection.
    ``shape`` is the data it was built for (the classifier reads its ``num_classes``)."""

    def __init__(self, shape: DataShape) -> None:
        super().__init__()
        self.shape = shape

    readout: nn.Module  # features, mask -> logits: ``Readout`` (pooled classes) or ``LMHead``

    def features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Tokens-last hidden states ``(B, *grid, dim)`` before the readout; ``mask``: the
        padding mask (``padding_mask``)."""
        raise NotImplementedError

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = self.padding_mask(x, mask)
        return self.readout(self.features(x, mask), mask)

    def padding_mask(self, x: Tensor, mask: Tensor | None) -> Tensor | None:
        """``mask`` checked against ``x``'s ``(B, *grid)``, or, when none is given and the data
        has a pad id (``shape.pad_index``), ``x != pad_index``; else ``None`` (all real)."""
        if mask is None:
            return None if self.shape.pad_index is None else x != self.shape.pad_index
        check_mask(mask, x.shape[: x.dim() - (0 if self.shape.is_tokens else 1)])
        return mask

    def compile(self, *args, **kwargs) -> None:
        """In place, as ``nn.Module.compile`` (parameter names stay the plain model's), and
        ``features`` too: a language model's training step calls ``features`` and then the head
        on the scored positions only, outside the graph (their number varies per batch)."""
        super().compile(*args, **kwargs)
        self.features = torch.compile(self.features, *args, **kwargs)

    def slots(self) -> Iterator[tuple[str, AttentionSlot]]:
        for name, m in self.named_modules():
            if isinstance(m, AttentionSlot):
                yield name, m

    def trainable_params(self) -> int:
        """Trainable parameters, as results.json records them (and ``match=params`` compares)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def attention_flops(self) -> int:
        """Analytic FLOPs of all attention slots for one sample."""
        return sum(slot.flops() for _, slot in self.slots())

    def state_floats(self) -> int | None:
        """Floats one sequence keeps across the attention slots to continue it (``state_floats``
        of each slot's module at its grid, summed); None when a slot does not declare it."""
        sizes = [slot.module.state_floats(slot.grid) for _, slot in self.slots()]
        return None if not sizes or None in sizes else sum(sizes)

    @torch.no_grad()
    def attention_weights(self, x: Tensor) -> tuple[Tensor, dict[str, dict[str, Tensor]]]:
        """Forward with ``return_weights=True`` in every slot: ``(logits, {slot: weights})``."""
        slots = dict(self.slots())
        with _capturing(slots.values()):
            logits = self(x)
            weights = {name: slot.weights for name, slot in slots.items()}
        return logits, weights


@contextlib.contextmanager
def _capturing(slots):
    slots = list(slots)
    for s in slots:
        s.capture = True
    try:
        yield
    finally:
        for s in slots:
            s.capture, s.weights = False, None


class InputEmbedding(nn.Module):
    """Input -> tokens-last ``(B, *grid, dim)``.

    Token ids get a lookup table; continuous sequences and images get a linear map of each
    ``patch_size`` patch (a strided convolution), so ``grid`` shrinks by ``patch_size``.
    """

    def __init__(self, shape: DataShape, dim: int, patch_size: int = 1) -> None:
        super().__init__()
        self.is_tokens = shape.is_tokens
        if shape.is_tokens:
            self.embed = nn.Embedding(shape.vocab_size, dim)
            self.grid = shape.grid
        else:
            if any(g % patch_size for g in shape.grid):
                raise ValueError(
                    f"backbone.patch_size={patch_size} must divide dataset.shape.grid={shape.grid}"
                )
            conv = nn.Conv1d if len(shape.grid) == 1 else nn.Conv2d
            self.embed = conv(shape.in_channels, dim, kernel_size=patch_size, stride=patch_size)
            self.grid = tuple(g // patch_size for g in shape.grid)

    def forward(self, x: Tensor) -> Tensor:
        if self.is_tokens:
            return self.embed(x)
        return channels_last(self.embed(channels_first(x)))


READOUTS = ("mean", "cls")  # backbone.readout of the transformer and the ViT


def check_readout(readout: str, attention: AttentionFactory) -> None:
    """Refuse a ``backbone.readout`` that is not one of ``READOUTS``, or ``cls`` with a POOL
    attention (the pooling is the readout itself), naming the key."""
    if readout not in READOUTS:
        raise ValueError(f"backbone.readout must be one of {', '.join(READOUTS)}, got {readout!r}")
    if readout == "cls" and kind_of(attention) is Kind.POOL:
        raise ValueError(
            "backbone.readout=cls reads the CLS token, but a POOL attention is the readout "
            "itself (attention pooling); use backbone.readout=mean with it"
        )


class ClassToken(nn.Module):
    """A learned token put in front of a sequence ``(B, N, dim)`` (BERT, ViT, the LRA baselines),
    whose final state ``Readout(cls=True)`` reads; a padding mask gains a real position for it."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.token, std=0.02)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x = torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)
        if mask is not None:  # the CLS position is always real
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        return x, mask


class Readout(nn.Module):
    """Tokens-last features -> logits: mean over the (real) positions of the grid, an
    attention-pooling slot, or (``cls``) the first position, a prepended CLS token."""

    def __init__(
        self, dim: int, num_classes: int, pool: AttentionSlot | None = None, cls: bool = False
    ) -> None:
        super().__init__()
        self.pool = pool
        self.cls = cls
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # x: (B, *grid, dim)
        if self.cls:
            pooled = x[:, 0]
        elif self.pool is not None:
            pooled = self.pool(x, mask)
        else:
            pooled = masked_mean(x.flatten(1, -2), flat_mask(mask))
        return self.head(pooled)


class LMHead(nn.Module):
    """Tokens-last features ``(B, L, dim)`` -> next-token logits ``(B, L, vocab)`` at every
    position. ``tied``: the token embedding whose weight the head shares (as nanoGPT and GPT-2),
    so one matrix maps ids to vectors and vectors to logits."""

    def __init__(self, dim: int, vocab_size: int, tied: nn.Embedding | None = None) -> None:
        super().__init__()
        self.head = nn.Linear(dim, vocab_size, bias=False)
        if tied is not None:
            self.head.weight = tied.weight

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Logits at every position; ``mask`` is unused (padded positions carry no label)."""
        return self.head(x)


def check_lm_keys(shape: DataShape, tie_weights: bool) -> None:
    """Refuse the language-model keys of a backbone where they mean nothing."""
    if not isinstance(tie_weights, bool):
        raise ValueError(f"backbone.tie_weights must be true or false, got {tie_weights!r}")
    if tie_weights and not shape.is_lm:
        raise ValueError(
            "backbone.tie_weights=true shares the token embedding with a language model's head; "
            f"it needs dataset.shape.task=lm, got task={shape.task}"
        )


def check_context(
    x: Tensor, shape: DataShape, learned_positions: bool = True, offset: int = 0
) -> None:
    """A language model reads token ids ``(B, T)`` (at positions ``offset ..`` while decoding
    with a cache): fewer than its context length is a short prompt; more is an evaluation at a
    longer context, which a table of learned positions cannot serve (``learned_positions``), and
    everything else can (rotary, ALiBi, convolutions)."""
    if x.dim() != 2:
        raise ValueError(f"a language model reads token ids (B, T), got {tuple(x.shape)}")
    if learned_positions and offset + x.shape[1] > shape.grid[0]:
        raise ValueError(
            f"a language model with learned positions (backbone.positions=learned) reads at most "
            f"its context length {shape.grid[0]} (dataset.context_len), got {offset + x.shape[1]} tokens: "
            "to evaluate longer contexts, train with backbone.positions=none and "
            "attention.rope=true or attention.alibi=true"
        )


INITS = ("default", "gpt")  # default: PyTorch's per-layer init; gpt: nanoGPT's (init_gpt)


def check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"backbone.init must be one of {', '.join(INITS)}, got {init!r}")


def init_gpt(model: nn.Module, residual: Iterable[nn.Linear], depth: int) -> None:
    """nanoGPT's (GPT-2's) init: every Linear and Embedding weight N(0, 0.02), biases zero, and
    the ``residual`` projections (the layers writing into the residual stream) N(0, 0.02 /
    sqrt(2 depth)), so the stream's variance does not grow with depth. PyTorch's default gives an
    Embedding N(0, 1), which as a tied head makes the first logits ~sqrt(dim) too large."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    for m in residual:
        nn.init.normal_(m.weight, std=0.02 / math.sqrt(2 * depth))
