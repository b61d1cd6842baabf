"""A Vision Transformer (Dosovitskiy et al., 2021) for small images, the attention under test in
every block.

Patch embedding (a conv with stride = ``patch_size``), learned positions, ``depth`` pre-norm
blocks (``transformer.Blocks``: the slot, then the MLP), a final LayerNorm, then a readout:
- ``mean``: the mean over the patch tokens (as "Better plain ViT baselines", Beyer et al. 2022).
  The tokens keep their 2-D grid, so 2-D attention (cbam's k x k spatial gate, muse's convs, 2-D
  windows) sees the image's layout. POOL replaces this mean with attention pooling.
- ``cls``: a learned class token in front of the patches, read out alone (the original ViT). The
  class token has no place on a 2-D grid, so the blocks see a sequence of ``1 + H W / p^2``
  tokens (grid_ndim 1); refused with POOL (which pools instead of reading the class token).

Images only, classification only: the transformer backbone covers sequences, tokens and language
models.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from attnexp.data.shape import DataShape
from attnexp.models.common import (
    AttentionFactory,
    Backbone,
    ClassToken,
    InputEmbedding,
    Readout,
    check_init,
    check_readout,
    init_gpt,
    readout_slot,
)
from attnexp.models.resnet import check_image_classifier, refuse_mask
from attnexp.models.transformer import Blocks


class ViT(Backbone):
    def __init__(
        self,
        attention: AttentionFactory,
        shape: DataShape,
        dim: int = 128,
        depth: int = 6,
        patch_size: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        readout: str = "mean",
        init: str = "default",
    ) -> None:
        super().__init__(shape)
        check_image_classifier(shape, "vit")
        check_init(init)
        check_readout(readout, attention)
        # Refuses a patch size that does not divide the image, naming backbone.patch_size.
        self.embed = InputEmbedding(shape, dim, patch_size)
        self.cls = None
        tokens: tuple[int, ...] = self.embed.grid
        if readout == "cls":
            self.cls = ClassToken(dim)
            tokens = (1 + math.prod(tokens),)
        self.pos = nn.Parameter(torch.zeros(1, *tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = Blocks(attention, dim, tokens, depth, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(dim)
        pool = readout_slot(attention, dim, tokens)
        self.readout = Readout(dim, shape.num_classes, pool, cls=self.cls is not None)
        if init == "gpt":
            init_gpt(self, self.blocks.residual_projections(), depth)

    def features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The normed last hidden states: ``(B, H/p, W/p, dim)``, or with the class token first
        ``(B, 1 + H W / p^2, dim)``, from images ``(B, H, W, C)``."""
        refuse_mask(mask, "vit")
        x = self.embed(x)
        if self.cls is not None:
            x, _ = self.cls(x.flatten(1, -2))
        return self.norm(self.blocks(x + self.pos))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.readout(self.features(x, mask))
