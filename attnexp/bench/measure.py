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
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile


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
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start
    )
    level = peak = 0
    for event in events:
        level += event.self_cpu_memory_usage
        peak = max(peak, level)
    return peak


def plain_loop_throughput(
    model_factory: Callable[[], nn.Module],
    inputs: Tensor,
    targets: Tensor,
    *,
    batch_size: int,
    optimizer_factory: Callable[..., torch.optim.Optimizer],
    steps: int,
    warmup_steps: int = 2,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    seed: int = 0,
    scheduler_factory: Callable[[torch.optim.Optimizer], object] | None = None,
) -> dict[str, float]:
    """Training samples/s of a plain PyTorch loop: shuffled mini-batches of ``batch_size`` from
    ``inputs``/``targets`` (incomplete last batch dropped, reshuffled every epoch), forward, loss,
    backward, optimizer step (and ``scheduler_factory(optimizer)``'s step, when given). The first
    ``warmup_steps`` are not timed. This is the baseline the
    framework-overhead ratio divides by: the same model, data, batch size and optimizer."""
    if len(inputs) != len(targets):
        raise ValueError(f"inputs and targets differ in length: {len(inputs)} vs {len(targets)}")
    if not 1 <= batch_size <= len(inputs):
        raise ValueError(
            f"batch_size must be in [1, {len(inputs)}] (the data size), got {batch_size}"
        )
    if steps < 1 or warmup_steps < 0:
        raise ValueError(f"need steps >= 1 and warmup_steps >= 0, got {steps}, {warmup_steps}")
    torch.manual_seed(seed)
    model = model_factory().to(inputs.device).train()
    optimizer = optimizer_factory(model.parameters())
    scheduler = scheduler_factory(optimizer) if scheduler_factory is not None else None
    generator = torch.Generator().manual_seed(seed)
    per_epoch = len(inputs) // batch_size

    def batches():
        while True:
            order = torch.randperm(len(inputs), generator=generator).to(inputs.device)
            for i in range(per_epoch):
                index = order[i * batch_size : (i + 1) * batch_size]
                yield inputs[index], targets[index]

    losses: list[float] = []
    stream = batches()
    for i in range(warmup_steps + steps):
        if i == warmup_steps:
            synchronize(inputs.device)
            start = time.perf_counter()
        x, y = next(stream)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.detach())
    synchronize(inputs.device)
    seconds = time.perf_counter() - start
    return {
        "samples_per_s": steps * batch_size / seconds,
        "seconds": seconds,
        "steps": steps,
        "batch_size": batch_size,
        "first_loss": float(losses[0]),
        "last_loss": float(losses[-1]),
    }
