"""Image augmentation of whole batches on the device: random crop with zero padding, horizontal
flip, and per-channel normalisation (the CIFAR recipe of He et al. 2016).

Why batches on the device: a CIFAR split fits on the GPU as uint8 (150 MB for CIFAR-10's
training set), so the data module keeps it there and a batch is an index slice; augmenting it
there costs one gather kernel per batch instead of per-image Python work in DataLoader workers.
The training module calls ``BatchAugment`` in ``on_after_batch_transfer``: crop and flip in
training only, normalisation always (validation and test are deterministic).

Inputs are the project's tokens-last images ``(B, H, W, C)``. uint8 pixels are cropped and flipped
as bytes (the padding is pixel value 0, as torchvision's ``RandomCrop`` before ``Normalize``), then
scaled to [0, 1] floats; float inputs are taken as already in [0, 1]. ``mean``/``std`` are per
channel in those [0, 1] units. ``BatchAugment()`` changes nothing but uint8 -> float: a float batch
comes back as the very same tensor, so runs without augmentation stay bit-identical.

Randomness comes from ``generator`` (default: torch's global generator of the batch's device,
which ``attnexp.training.callbacks.EpochSeed`` reseeds from (seed, epoch, rank) every epoch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attnexp.data.shape import DataShape
from attnexp.util.checks import check_int


def model_inputs(x: Tensor) -> Tensor:
    """What a model reads from a stored batch: uint8 pixels as float32 in [0, 1]; anything else
    (float features, token ids) as stored. The one place stored inputs are converted: the training
module calls it (through ``BatchAugment``) on each batch once it is on the device."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x


@dataclass(frozen=True)
class CropFlip:
    """One batch's random draws: crop offsets into the padded image and which images flip."""

    top: Tensor  # (B,) in 0 .. 2 padding
    left: Tensor  # (B,) in 0 .. 2 padding
    flip: Tensor  # (B,) bool


class BatchAugment:
    """``augment(x, train)``: see the module docstring. ``crop_padding``: zero pixels added on each
    side before a random crop back to the image's size (0: no crop); ``flip``: mirror each image
    left-right with probability 1/2; ``mean``/``std``: per-channel normalisation (null: none)."""

    def __init__(
        self,
        crop_padding: int = 0,
        flip: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        check_int("augment.crop_padding", crop_padding, 0)
        if not isinstance(flip, bool):
            raise ValueError(f"augment.flip must be true or false, got {flip!r}")
        if (mean is None) != (std is None):
            raise ValueError(
                f"augment.mean and augment.std go together (both null or both per-channel lists), "
                f"got mean={mean!r}, std={std!r}"
            )
        if std is not None and any(s <= 0 for s in std):
            raise ValueError(f"augment.std must be positive, got {list(std)}")
        if mean is not None and len(mean) != len(std):
            raise ValueError(
                f"augment.mean and augment.std need one value per channel each, got "
                f"{len(mean)} and {len(std)}"
            )
        self.crop_padding = crop_padding
        self.flip = flip
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)

    @property
    def is_random(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def check(self, shape: DataShape) -> None:
        """Refuse augmenting data that is not images, or normalising the wrong number of channels."""
        if shape.input_type != "image" and (self.is_random or self.mean is not None):
            raise ValueError(
                f"augment crops, flips and normalises images; dataset.shape.input_type is "
                f"{shape.input_type}: use augment=none"
            )
        if self.mean is not None and len(self.mean) != shape.in_channels:
            raise ValueError(
                f"augment.mean and augment.std need one value per channel: dataset.shape."
                f"in_channels={shape.in_channels}, got {len(self.mean)}"
            )

    def draw(self, batch: int, device: torch.device, generator: torch.Generator | None) -> CropFlip:
        """The random crop offsets and flips of one batch of ``batch`` images."""
        span = 2 * self.crop_padding + 1
        top, left = torch.randint(0, span, (2, batch), device=device, generator=generator)
        flip = torch.rand(batch, device=device, generator=generator) < 0.5
        return CropFlip(top, left, flip if self.flip else torch.zeros_like(flip))

    def crop_flip(self, x: Tensor, draws: CropFlip) -> Tensor:
        """Each image ``x[b]`` zero-padded, cropped at ``(top[b], left[b])`` to its own size and
        mirrored where ``flip[b]``: one gather for the whole batch, any dtype."""
        p = self.crop_padding
        batch, height, width = x.shape[:3]
        padded = F.pad(x, (0, 0, p, p, p, p)) if p else x
        rows = draws.top[:, None] + torch.arange(height, device=x.device)  # (B, H)
        cols = torch.arange(width, device=x.device).expand(batch, width)
        cols = torch.where(draws.flip[:, None], cols.flip(1), cols) + draws.left[:, None]
        index = torch.arange(batch, device=x.device)[:, None, None]
        return padded[index, rows[:, :, None], cols[:, None, :]]

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 -> [0, 1] floats, then ``(x - mean) / std`` per channel (the last axis)."""
        if x.dtype == torch.uint8:
            x = model_inputs(x)
        if self.mean is None:
            return x
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype)
        return (x - mean) / std

    def __call__(self, x: Tensor, train: bool, generator: torch.Generator | None = None) -> Tensor:
        if train and self.is_random:
            x = self.crop_flip(x, self.draw(len(x), x.device, generator))
        return self.normalize(x)

    def __repr__(self) -> str:
        return (
            f"BatchAugment(crop_padding={self.crop_padding}, flip={self.flip}, "
            f"mean={self.mean}, std={self.std})"
        )
