"""How the suite measures: time of a training step, its peak memory, and plain-loop throughput.

Time: median wall time of one step after warm-up; candidates compared with each other are timed
interleaved (A, B, A, B, ... with the order rotated each round) so a drift in machine load hits
them alike. Peak memory: bytes of tensor memory allocated during one step above the level before
it (parameters and inputs are already there): ``torch.cuda.max_memory_allocated`` on a GPU; on
CPU, the running sum of the PyTorch profiler's allocation and free events, which sees every
tensor but not scratch space a kernel allocates and frees inside one op.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch._C._profiler import _EventType  # the profiler's record kinds (torch.profiler uses it)
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile

from attnexp.data.shape import CLASSIFICATION, LM
from attnexp.tasks.losses import next_token_loss


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(module: nn.Module, x: Tensor, grad: Tensor) -> Callable[[], None]:
    """One forward + backward of ``module`` on ``x`` (which requires grad, as inside a network),
    with the fixed upstream gradient ``grad``; gradients are cleared first."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).backward(grad)

    return step


def median_times(
    steps: dict[str, Callable[[], None]], warmup: int, repeats: int, device: torch.device
) -> dict[str, float]:
    """Median seconds per call of each step, timed interleaved after ``warmup`` calls each."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        for step in steps.values():
            step()
    samples: dict[str, list[float]] = {label: [] for label in steps}
    order = list(steps)
    for round_ in range(repeats):
        for label in order[round_ % len(order) :] + order[: round_ % len(order)]:
            synchronize(device)
            start = time.perf_counter()
            steps[label]()
            synchronize(device)
            samples[label].append(time.perf_counter() - start)
    return {label: statistics.median(times) for label, times in samples.items()}


def peak_memory_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak tensor bytes allocated during one call of ``step`` above the level before it."""
    return timed_peak_memory(step, device)[1]


def timed_peak_memory(step: Callable[[], None], device: torch.device) -> tuple[float, int]:
    """Seconds and peak tensor bytes (as ``peak_memory_bytes``) of one call of ``step``: a
    step too slow to run twice is timed while its memory is recorded (on CPU the profiler adds
    microseconds an op, negligible against ops of milliseconds)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        return time.perf_counter() - start, torch.cuda.max_memory_allocated(device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
    return seconds, allocation_peak(prof)


def allocation_peak(prof: profile) -> int:
    """Peak bytes held by the blocks allocated while ``prof`` recorded: the profiler's raw
    allocation records replayed in the order they happened, frees of blocks allocated before
    the recording left out (so the figure does not depend on what ran before).

    Read from the raw records (``experimental_event_tree``), not from the memory the profiler
    attributes to each op sorted by the ops' start times: that attribution goes by timestamps,
    and on a loaded machine it sometimes ordered a step's frees before its allocations (a peak
    of 0 for a step that allocates); nested ops also hid allocations freed within a parent."""
    records = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            fields = event.extra_fields
            records.append((event.start_time_ns, fields.ptr, fields.alloc_size))
    live: dict[int, int] = {}
    level = peak = 0
    for _, ptr, size in sorted(records):  # at one instant a free goes first: it makes the room
        if size > 0:
            live[ptr] = size
            level += size
        elif ptr in live:
            level -= live.pop(ptr)
        peak = max(peak, level)
    return peak


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    CLASSIFICATION: F.cross_entropy,
    LM: next_token_loss,
}  # the training loss of each task (``dataset.shape.task``)


def config_task(cfg: Any) -> str:
    """The task a config trains: ``dataset.shape.task`` (classification where unset)."""
    return cfg.dataset.shape.get("task", CLASSIFICATION)


def shuffled_batches(
    inputs: Tensor, targets: Tensor, batch_size: int, seed: int = 0
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless mini-batches of ``batch_size`` from ``inputs``/``targets``, reshuffled every
    epoch, the incomplete last batch dropped: a plain classification loop."""
    if len(inputs) != len(targets):
        raise ValueError(f"inputs and targets differ in length: {len(inputs)} vs {len(targets)}")
    if not 1 <= batch_size <= len(inputs):
        raise ValueError(
            f"batch_size must be in [1, {len(inputs)}] (the data size), got {batch_size}"
        )
    generator = torch.Generator().manual_seed(seed)
    per_epoch = len(inputs) // batch_size

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            order = torch.randperm(len(inputs), generator=generator).to(inputs.device)
            for i in range(per_epoch):
                index = order[i * batch_size : (i + 1) * batch_size]
                yield inputs[index], targets[index]

    return batches()


def random_windows(
    tokens: Tensor, context_len: int, batch_size: int, seed: int = 0
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless batches of ``batch_size`` windows at uniform random starts of the 1-D ``tokens``:
    ``x`` ``context_len`` tokens, ``y`` the same shifted by one (nanoGPT's ``get_batch``)."""
    if not 1 <= context_len < len(tokens):
        raise ValueError(
            f"context_len must be in [1, {len(tokens) - 1}] (a window and its next token fit the "
            f"{len(tokens)} tokens), got {context_len}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.arange(context_len + 1, device=tokens.device)

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            starts = torch.randint(len(tokens) - context_len, (batch_size,), generator=generator)
            windows = tokens[starts.to(tokens.device)[:, None] + offsets]
            yield windows[:, :-1], windows[:, 1:]

    return batches()


def plain_loop_throughput(
    model_factory: Callable[[], nn.Module],
    batches: Iterator[tuple[Tensor, Tensor]],
    *,
    optimizer_factory: Callable[..., torch.optim.Optimizer],
    steps: int,
    warmup_steps: int = 2,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    seed: int = 0,
    scheduler_factory: Callable[[torch.optim.Optimizer], object] | None = None,
    clip_grad_norm: float | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Training samples/s of a plain PyTorch loop over ``batches`` (``shuffled_batches``,
    ``random_windows``): forward, loss, backward, gradient-norm clipping (when given), optimizer
    step (and ``scheduler_factory(optimizer)``'s step, when given). A sample is one row of a
    batch (a window, for a language model). The first ``warmup_steps`` are not timed. This is the
    baseline the framework-overhead ratio divides by: the same model, data, batch size and
    optimizer."""
    if steps < 1 or warmup_steps < 0:
        raise ValueError(f"need steps >= 1 and warmup_steps >= 0, got {steps}, {warmup_steps}")
    device = torch.device(device)
    torch.manual_seed(seed)
    model = model_factory().to(device).train()
    optimizer = optimizer_factory(model.parameters())
    scheduler = scheduler_factory(optimizer) if scheduler_factory is not None else None
    losses: list[Tensor] = []
    samples = 0
    for i in range(warmup_steps + steps):
        if i == warmup_steps:
            synchronize(device)
            start = time.perf_counter()
        x, y = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.detach())
        samples += len(x) if i >= warmup_steps else 0
    synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "samples_per_s": samples / seconds,
        "seconds": seconds,
        "steps": steps,
        "batch_size": samples // steps,
        "first_loss": float(losses[0]),
        "last_loss": float(losses[-1]),
    }
