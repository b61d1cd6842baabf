"""A pre-norm transformer whose token-mixing slot holds the attention under test: a classifier,
or a causal language model when ``shape.is_lm``.

Placement by kind:
- MIXER and GATE fill the token-mixing slot of every block: ``x = x + slot(norm(x))``.
- IDENTITY leaves MLP-only blocks (the no-attention baseline).
- ``mlp_ratio=0`` drops the MLP (channel mixing) from every block, as Zoology's MQAR models
  (``state_mixer: Identity``); the blocks are then the attention alone.
- POOL replaces the mean readout with attention pooling; the blocks stay MLP-only, so the pooling
  is the model's only attention (one variable changes per ablation cell).

``readout``: ``mean`` (over the real positions) or ``cls``, a learned token prepended to the
sequence (one more position, always real, with its own learned position) whose final state the
head reads, as BERT and the LRA baselines do. ``cls`` needs a 1-D grid and a classifier, and has no
place beside a POOL attention, which is the readout itself.

As a language model (nanoGPT's layout): token embedding + learned positions (or none, for an
attention with its own, e.g. rotary), blocks whose slots are built ``causal=True``, a final norm,
and a per-position head (``tie_weights``: the embedding's matrix). POOL is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from attnexp.data.shape import DataShape
from attnexp.models.common import (
    AttentionFactory,
    AttentionSlot,
    Backbone,
    ClassToken,
    InputEmbedding,
    LMHead,
    Readout,
    block_slot,
    check_context,
    check_init,
    check_lm_keys,
    check_readout,
    init_gpt,
    readout_slot,
)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )


class Block(nn.Module):
    """Pre-norm residual block: optional token-mixing slot, then MLP (none if ``mlp_hidden=0``)."""

    def __init__(self, dim: int, mlp_hidden: int, dropout: float, slot: AttentionSlot | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim) if slot is not None else None
        self.slot = slot
        self.norm2 = nn.LayerNorm(dim) if mlp_hidden else None
        self.mlp = Mlp(dim, mlp_hidden, dropout) if mlp_hidden else None
        self.drop = nn.Dropout(dropout)

    def residual_projections(self) -> list[nn.Linear]:
        """The layers whose outputs are added to the stream: the MLP's last and the slot's
        ``proj`` (the output projection of mha, muse and linear)."""
        proj = getattr(self.slot.module, "proj", None) if self.slot is not None else None
        layers = [self.mlp[-1]] if self.mlp is not None else []
        return [*layers, *([proj] if isinstance(proj, nn.Linear) else [])]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.slot is not None:
            x = x + self.drop(self.slot(self.norm1(x), mask))
        if self.mlp is not None:
            x = x + self.drop(self.mlp(self.norm2(x)))
        return x


class Blocks(nn.Sequential):
    """``depth`` pre-norm ``Block``s over ``tokens``, each with its own slot (built ``causal`` in a
    language model); ``forward(x, mask)`` hands the padding mask to every block."""

    def __init__(
        self,
        attention: AttentionFactory,
        dim: int,
        tokens: tuple[int, ...],
        depth: int,
        mlp_ratio: float,
        dropout: float,
        causal: bool = False,
    ) -> None:
        hidden = mlp_hidden(dim, mlp_ratio)
        super().__init__(
            *(
                Block(dim, hidden, dropout, block_slot(attention, dim, tokens, causal=causal, layer=i))
                for i in range(depth)
            )
        )

    def residual_projections(self) -> list[nn.Linear]:
        """Every block's ``Block.residual_projections`` (scaled down by ``init: gpt``)."""
        return [layer for block in self for layer in block.residual_projections()]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        for block in self:
            x = block(x, mask)
        return x


def mlp_hidden(dim: int, mlp_ratio: float) -> int:
    """The MLP's hidden width; 0 (no MLP) only when asked for with ``mlp_ratio=0``, never by
    rounding a small ratio down."""
    hidden = int(dim * mlp_ratio)
    if mlp_ratio < 0 or (mlp_ratio > 0 and hidden == 0):
        raise ValueError(
            f"backbone.mlp_ratio must be 0 (no MLP) or give an MLP of width >= 1 at "
            f"dim={dim}, got {mlp_ratio}"
        )
    return hidden


POSITIONS = ("learned", "none")  # none: the attention brings its own (e.g. rotary)
def check_sequence_readout(readout: str, attention: AttentionFactory, shape: DataShape) -> None:
    """Refuse ``backbone.readout`` where it has no meaning (``check_readout``, and ``cls`` in a
    language model or on a 2-D grid), naming the key."""
    check_readout(readout, attention)
    if readout != "cls":
        return
    if shape.is_lm:
        raise ValueError(
            "backbone.readout=cls reads one class from a prepended token, but task=lm predicts a "
            "token at every position; use backbone.readout=mean"
        )
    if len(shape.grid) != 1:
        raise ValueError(
            f"backbone.readout=cls prepends a token to a sequence: it needs a 1-D grid, got "
            f"dataset.shape.grid={list(shape.grid)}; use backbone.readout=mean"
        )


class Transformer(Backbone):
    def __init__(
        self,
        attention: AttentionFactory,
        shape: DataShape,
        dim: int = 64,
        depth: int = 2,
        mlp_ratio: float = 2.0,
        patch_size: int = 1,
        dropout: float = 0.0,
        positions: str = "learned",
        tie_weights: bool = False,
        init: str = "default",
        readout: str = "mean",
    ) -> None:
        super().__init__(shape)
        check_init(init)
        check_sequence_readout(readout, attention, shape)
        if positions not in POSITIONS:
            raise ValueError(
                f"backbone.positions must be one of {', '.join(POSITIONS)}, got {positions!r}"
            )
        check_lm_keys(shape, tie_weights)
        if shape.is_lm and patch_size != 1:
            raise ValueError(
                f"backbone.patch_size must be 1 for task=lm (a token is predicted at every "
                f"position), got {patch_size}"
            )
        self.embed = InputEmbedding(shape, dim, patch_size)
        self.patch_size = patch_size
        self.cls = None
        tokens = self.embed.grid
        if readout == "cls":  # one more position, first
            self.cls = ClassToken(dim)
            tokens = (tokens[0] + 1,)
        self.pos = None
        if positions == "learned":
            self.pos = nn.Parameter(torch.zeros(1, *tokens, dim))
            nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = Blocks(attention, dim, tokens, depth, mlp_ratio, dropout, causal=shape.is_lm)
        self.norm = nn.LayerNorm(dim)
        if shape.is_lm:
            self.drop = nn.Dropout(dropout)  # on the embedded tokens, as nanoGPT
            tied = self.embed.embed if tie_weights else None
            self.readout = LMHead(dim, shape.vocab_size, tied)
        else:
            pool = readout_slot(attention, dim, tokens)
            self.readout = Readout(dim, shape.num_classes, pool, cls=self.cls is not None)
        if init == "gpt":
            init_gpt(self, self.blocks.residual_projections(), depth)
        self.decoded: int | None = None  # positions read so far while ``decoding``; None: not

    def slot_modules(self) -> list[nn.Module]:
        """The attention module of every block that has a slot."""
        return [block.slot.module for block in self.blocks if block.slot is not None]

    @property
    def decodable(self) -> bool:
        """Whether this language model generates from a cache: every slot holds a module that
        decodes with one (``decodable``: ``mha`` without qk convolution or key selection, whose
        cache is its keys and values; a causal recurrent mixer, whose cache is its state)."""
        return self.shape.is_lm and all(getattr(m, "decodable", False) for m in self.slot_modules())

    @property
    def continues(self) -> bool:
        """Whether cached decoding can go on past the context length at the same cost per token:
        no learned positions (a position past the table has no embedding) and every slot's
        state bounded (``bounded_state``: a recurrent state, not keys and values that grow)."""
        bounded = all(getattr(m, "bounded_state", False) for m in self.slot_modules())
        return self.decodable and self.pos is None and bounded

    @contextmanager
    def decoding(self) -> Iterator[None]:
        """Cached decoding: inside, each forward reads the positions that follow those read
        before (a prompt, then one token at a time), each slot reading what it keeps (its
        ``empty_cache()``, filled as it goes: ``attnexp.attention.design.KVCache``, a recurrent
        state); learned positions continue from there. Left empty and closed on exit."""
        if not self.decodable:
            raise ValueError("this model cannot decode from a cache (a slot is not decodable)")
        modules = self.slot_modules()
        for module in modules:
            module.cache = module.empty_cache()
        self.decoded = 0
        try:
            yield
        finally:
            for module in modules:
                module.cache = None
            self.decoded = None

    def features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The normed last hidden states ``(B, *tokens, dim)`` (``readout=cls``: the CLS token's
        first, ``(B, 1 + L, dim)``); ``forward`` reads out classes ``(B, num_classes)`` from them
        or, as a language model, logits ``(B, T, vocab)`` (``T`` beyond the context length only
        without learned positions). ``mask``: the padding mask (``Backbone.padding_mask``)."""
        offset = self.decoded or 0  # positions before x (cached decoding)
        if self.shape.is_lm:
            check_context(x, self.shape, learned_positions=self.pos is not None, offset=offset)
        mask = self.padding_mask(x, mask)
        if mask is not None and self.patch_size != 1 and not self.shape.is_tokens:
            raise ValueError(
                f"a padding mask needs backbone.patch_size=1 (one position per input position), "
                f"got {self.patch_size}"
            )
        x = self.embed(x)
        if self.cls is not None:
            x, mask = self.cls(x, mask)
        if self.pos is not None:
            x = x + self.pos[:, offset : offset + x.shape[1]]
        if self.decoded is not None:
            self.decoded += x.shape[1]
        if self.shape.is_lm:
            x = self.drop(x)
        return self.norm(self.blocks(x, mask))
