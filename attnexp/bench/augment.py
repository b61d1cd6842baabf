"""The image input pipeline alone, in images/s: batches indexed from a CIFAR-shaped uint8 split held
on the device and augmented there (``attnexp.data.augment``, ``augment=cifar``), beside bare tensor
loops over the same batches, and the ResNet-20 training step they feed.

Rows (each a batch of ``batch`` random indices into ``n`` images of 32x32x3 uint8):
- ``index``: ``x[idx]`` only (the floor: what any pipeline pays to fetch the batch);
- ``bare``: index, pad, crop, flip and normalise written inline as a minimal tensor loop (the
  target: ``augment`` within 10% of it on CPU);
- ``augment``: index, then ``BatchAugment(train=True)`` (what the training step runs);
- ``per-image``: index, then pad/crop/flip image by image in Python, as a per-sample transform
  in DataLoader workers would (for scale);
- ``resnet20 step``: one SGD step of ResNet-20 on a normalised batch (the target: ``augment`` is
  never the bottleneck, i.e. far faster than the step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnexp.attention import factory
from attnexp.bench.measure import median_times
from attnexp.bench.model_step import optimizer_step
from attnexp.config.attention import attention_config
from attnexp.data.augment import BatchAugment
from attnexp.data.shape import DataShape
from attnexp.models.resnet import ResNet

CIFAR = BatchAugment(
    crop_padding=4, flip=True, mean=[0.4914, 0.4822, 0.4465], std=[0.2470, 0.2435, 0.2616]
)
TARGET_RATIO = 0.9  # augment's images/s at least 90% of the bare loop's


def bare_loop(x: Tensor, idx: Tensor, mean: Tensor, std: Tensor, p: int = 4) -> Tensor:
    """The same work as ``CIFAR`` written inline: one padded gather with random offsets and flips."""
    batch = x[idx]
    b, h, w = batch.shape[:3]
    top, left = torch.randint(0, 2 * p + 1, (2, b), device=x.device)
    flip = torch.rand(b, device=x.device) < 0.5
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + left[:, None]
    rows = top[:, None] + torch.arange(h, device=x.device)
    padded = F.pad(batch, (0, 0, p, p, p, p))
    out = padded[torch.arange(b, device=x.device)[:, None, None], rows[:, :, None], cols[:, None]]
    return (out.float() / 255.0 - mean) / std


def per_image(x: Tensor, idx: Tensor, mean: Tensor, std: Tensor, p: int = 4) -> Tensor:
    """Pad, crop and flip each image alone (a per-sample transform's work), then normalise."""
    out = []
    for image in x[idx]:
        top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
        crop = F.pad(image, (0, 0, p, p, p, p))[top : top + 32, left : left + 32]
        out.append(crop.flip(1) if torch.rand(()) < 0.5 else crop)
    return (torch.stack(out).float() / 255.0 - mean) / std


def bench_pipeline(
    device: torch.device, batch: int = 128, n: int = 10_000, warmup: int = 3, repeats: int = 15
) -> dict:
    """Images/s of each row (see the module docstring) and their ratios to ``bare``."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=generator).to(device)
    mean = torch.tensor(CIFAR.mean, device=device)
    std = torch.tensor(CIFAR.std, device=device)
    batches = [torch.randint(0, n, (batch,), generator=generator).to(device) for _ in range(8)]
    turn = iter(range(10**9))

    def idx() -> Tensor:
        return batches[next(turn) % len(batches)]

    torch.manual_seed(0)
    shape = DataShape("image", [32, 32], num_classes=10, in_channels=3)
    model = ResNet(factory(attention_config("none")), shape).to(device).train()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    labels = torch.randint(0, 10, (batch,), device=device)
    step = optimizer_step(model, sgd, CIFAR(x[batches[0]], train=False), labels)
    steps = {
        "index": lambda: x[idx()],
        "bare": lambda: bare_loop(x, idx(), mean, std),
        "augment": lambda: CIFAR(x[idx()], train=True),
        "per-image": lambda: per_image(x, idx(), mean, std),
        "resnet20 step": step,
    }
    seconds = median_times(steps, warmup, repeats, device)
    rows = [
        {
            "row": name,
            "ms": 1000 * s,
            "images_per_s": batch / s,
            "vs_bare": seconds["bare"] / s,
        }
        for name, s in seconds.items()
    ]
    ratio = seconds["bare"] / seconds["augment"]
    return {
        "device": str(device),
        "batch": batch,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "augment_vs_bare": ratio,
        "augment_share_of_step": seconds["augment"] / seconds["resnet20 step"],
        "met_bare": ratio >= TARGET_RATIO,
        "met_not_bottleneck": seconds["augment"] < seconds["resnet20 step"],
    }
