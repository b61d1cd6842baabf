"""The benchmark suite of issue 7: every attention variant against the references a user would
pick instead, the scaling curve in sequence length, and plain-loop training throughput.

``python scripts/benchmark.py [--smoke] [--out FILE]`` (or ``attnexp-bench``) prints Markdown
tables and writes JSON plus a scaling plot beside it. Conventions (also stored in the JSON):
time is the median of one forward + backward step; FLOP/s = 3 x the module's analytic forward
FLOPs (``flops(grid)``, backward ~ 2 x forward) x batch / time, the same count for a module and its
references; peak memory as in ``measure``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from attnexp.attention import AttentionModule, Kind
from attnexp.bench.measure import (
    median_times,
    peak_memory_bytes,
    plain_loop_throughput,
    training_step,
)
from attnexp.bench.references import Reference, references_for, timm_or_reason
from attnexp.bench.tables import evaluate_targets, markdown_report, save_scaling_plot

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "attention"
OURS = "attnexp"
TOLERANCE = 1e-5  # atol and rtol of the numeric checks
SCALING_VARIANTS = ("mha", "muse", "linear")


@dataclass
class Settings:
    """One suite run. ``module_sizes``: (batch, positions N, dim); gates run on a sqrt(N) x
    sqrt(N) image, everything else on a length-N sequence."""

    module_sizes: list[tuple[int, int, int]]
    scaling_lengths: list[int]
    scaling_dim: int = 128
    scaling_batch: int = 1
    warmup: int = 3
    repeats: int = 15
    loop_steps: int = 50
    loop_batch: int = 64
    loop_samples: int = 4000
    variants: list[str] = field(default_factory=list)  # empty: all discovered


def full_settings() -> Settings:
    lengths = [64, 256, 1024, 4096]
    return Settings(
        module_sizes=[(max(1, 4096 // n), n, c) for n in lengths for c in (64, 128)],
        scaling_lengths=[2**p for p in range(6, 13)],
    )


def smoke_settings() -> Settings:
    return Settings(
        module_sizes=[(2, 16, 32), (2, 64, 32)],
        scaling_lengths=[16, 64, 256],
        scaling_dim=32,
        warmup=1,
        repeats=3,
        loop_steps=3,
        loop_batch=16,
        loop_samples=64,
    )


# --- building ----------------------------------------------------------------------------------


def discover_variants(conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(path.stem for path in conf_dir.glob("*.yaml"))


def build(name: str, dim: int, grid_ndim: int, conf_dir: Path = CONF_DIR) -> AttentionModule:
    """What a backbone does: instantiate the partial and call it with the slot's ``dim`` (and the
    grid rank, for modules whose constructor takes ``grid_ndim``)."""
    factory = hydra.utils.instantiate(OmegaConf.load(conf_dir / f"{name}.yaml"))
    kwargs = {"dim": dim}
    if "grid_ndim" in inspect.signature(factory).parameters:
        kwargs["grid_ndim"] = grid_ndim
    return factory(**kwargs)


def grid_for(module: AttentionModule, n: int) -> tuple[int, ...]:
    """Gates (SE, CBAM) are image modules and their references take images: a square grid."""
    if module.kind is not Kind.GATE:
        return (n,)
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"gates run on a square image: positions N={n} is not a square")
    return (side, side)


@torch.no_grad()
def randomise_constants(module: nn.Module, seed: int = 0) -> None:
    """Fill every constant-initialised parameter or buffer (mixing logits, norm affine and
    running statistics, zero-initialised layers) with values in [0.5, 1.5), so the numeric checks
    exercise them; a check against constants could pass for the wrong formula."""
    generator = torch.Generator().manual_seed(seed)
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point() and tensor.numel() and (tensor == tensor.flatten()[0]).all():
            tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)


def to_layout(x: Tensor, layout: str) -> Tensor:
    return x if layout == "tokens_last" else x.movedim(-1, 1).contiguous()


def from_layout(y: Tensor, layout: str) -> Tensor:
    return y if layout == "tokens_last" else y.movedim(1, -1)


# --- numeric checks ------------------------------------------------------------------------------


def numeric_check(module: nn.Module, reference: Reference, x: Tensor) -> dict:
    """Our output against the reference's on ``x`` (eval mode), to ``TOLERANCE``."""
    module.eval()
    reference.module.eval()
    with torch.no_grad():
        ours = module(x)
        theirs = from_layout(reference.module(to_layout(x, reference.layout)), reference.layout)
    error = (ours - theirs).abs().max().item()
    return {
        "reference": reference.label,
        "max_abs_error": error,
        "ok": bool(torch.allclose(ours, theirs, atol=TOLERANCE, rtol=TOLERANCE)),
    }


# --- module benchmarks ---------------------------------------------------------------------------


def bench_module(
    name: str, batch: int, n: int, dim: int, settings: Settings, device: torch.device
) -> tuple[list[dict], list[dict]]:
    """Rows (ours, then each reference) and numeric checks for one variant at one size."""
    torch.manual_seed(0)
    probe = build(name, dim, 1)
    grid = grid_for(probe, n)
    module = build(name, dim, len(grid))
    randomise_constants(module)
    references = references_for(name, module)
    x = torch.randn(batch, *grid, dim)
    checks = [
        {
            "variant": name,
            "batch": batch,
            "grid": list(grid),
            "dim": dim,
            **numeric_check(module, ref, x),
        }
        for ref in references
    ]
    candidates = {
        OURS: (module, "tokens_last"),
        **{r.label: (r.module, r.layout) for r in references},
    }
    with torch.no_grad():  # one fixed upstream gradient, shaped as the output, for everyone
        grad = torch.randn(module(x).shape, generator=torch.Generator().manual_seed(1))
    steps = {}
    for label, (candidate, layout) in candidates.items():
        candidate.to(device).train()
        inp = to_layout(x, layout).to(device).requires_grad_()
        steps[label] = training_step(candidate, inp, to_layout(grad, layout).to(device))
    seconds = median_times(steps, settings.warmup, settings.repeats, device)
    flops = 3 * module.flops(grid) * batch
    rows = []
    for label, step in steps.items():
        rows.append(
            {
                "variant": name,
                "implementation": label,
                "batch": batch,
                "grid": list(grid),
                "dim": dim,
                "ms": 1e3 * seconds[label],
                "peak_mb": peak_memory_bytes(step, device) / 2**20,
                "gflop_per_s": flops / seconds[label] / 1e9,
                "ours_over_ref": None if label == OURS else seconds[OURS] / seconds[label],
            }
        )
    return rows, checks


def bench_scaling(settings: Settings, variants: list[str], device: torch.device) -> list[dict]:
    """One training step of each of ``variants`` against sequence length, timed interleaved."""
    rows = []
    for n in settings.scaling_lengths:
        steps = {}
        for name in variants:
            torch.manual_seed(0)
            module = build(name, settings.scaling_dim, 1).to(device).train()
            x = torch.randn(settings.scaling_batch, n, settings.scaling_dim, device=device)
            steps[name] = training_step(module, x.requires_grad_(), torch.randn_like(x))
        seconds = median_times(steps, settings.warmup, settings.repeats, device)
        for name, step in steps.items():
            rows.append(
                {
                    "variant": name,
                    "n": n,
                    "batch": settings.scaling_batch,
                    "dim": settings.scaling_dim,
                    "ms": 1e3 * seconds[name],
                    "peak_mb": peak_memory_bytes(step, device) / 2**20,
                }
            )
        progress(
            f"scaling N={n}: "
            + ", ".join(f"{r['variant']} {r['ms']:.2f} ms" for r in rows[-len(variants) :])
        )
    return rows


# --- plain loop ----------------------------------------------------------------------------------


class StandInClassifier(nn.Module):
    """An MNIST-1D-shaped classifier (40-sample signals, 10 classes) around one attention module,
    so the plain loop runs until the training pipeline's own models are hooked up."""

    def __init__(self, attention: AttentionModule, dim: int, classes: int = 10) -> None:
        super().__init__()
        self.embed, self.attention = nn.Linear(1, dim), attention
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x.unsqueeze(-1))
        h = h + self.attention(self.norm(h))
        return self.head(h.mean(dim=1))


def bench_plain_loop(settings: Settings, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(settings.loop_samples, 40, generator=generator).to(device)
    targets = torch.randint(0, 10, (settings.loop_samples,), generator=generator).to(device)
    result = plain_loop_throughput(
        lambda: StandInClassifier(build("mha", 64, 1), 64),
        inputs,
        targets,
        batch_size=settings.loop_batch,
        optimizer_factory=lambda p: torch.optim.AdamW(p, lr=1e-3),
        steps=settings.loop_steps,
    )
    return {"model": "StandInClassifier(mha, dim=64) on (40,) signals", **result}


# --- running ---------------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_suite(settings: Settings, device: torch.device, conf_dir: Path = CONF_DIR) -> dict:
    variants = discover_variants(conf_dir)
    unknown = set(settings.variants) - set(variants)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; discovered: {variants}")
    chosen = [v for v in variants if not settings.variants or v in settings.variants]
    modules, checks, started = [], [], time.perf_counter()
    for name in chosen:
        for batch, n, dim in settings.module_sizes:
            rows, found = bench_module(name, batch, n, dim, settings, device)
            modules += rows
            checks += found
            progress(
                f"[{time.perf_counter() - started:6.1f} s] {name} B={batch} N={n} C={dim}: "
                + ", ".join(f"{r['implementation']} {r['ms']:.2f} ms" for r in rows)
            )
    scaling = bench_scaling(settings, [v for v in SCALING_VARIANTS if v in chosen], device)
    _, timm_reason = timm_or_reason()
    return {
        "meta": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "timm": timm_reason or "imported",
            "settings": asdict(settings),
            "conventions": {
                "ms": "median wall time of one forward + backward step after warm-up",
                "gflop_per_s": "3 x analytic forward FLOPs x batch / time (same count for references)",
                "peak_mb": "peak tensor memory allocated during one step above the level before it "
                "(CPU: profiler allocation events; GPU: max_memory_allocated)",
                "ours_over_ref": "our time / the reference's time (< 1: ours is faster)",
            },
        },
        "modules": modules,
        "checks": checks,
        "scaling": scaling,
        "targets": evaluate_targets(modules),
        "plain_loop": bench_plain_loop(settings, device),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, few steps (CI)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/benchmark/benchmark.json"),
        help="JSON file; the scaling plot goes beside it",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch.set_num_threads (default: all cores; 1 with --smoke, whose timings do not "
        "matter and which more threads than free cores slow down many times on a shared machine)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--variants", nargs="*", default=[], choices=discover_variants(), help="default: all"
    )
    parser.add_argument("--repeats", type=int, help="timed steps per case (default 15; smoke 3)")
    args = parser.parse_args(argv)
    for key in ("threads", "repeats"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            parser.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    if args.threads is None:
        args.threads = 1 if args.smoke else len(os.sched_getaffinity(0))
    torch.set_num_threads(args.threads)
    settings = smoke_settings() if args.smoke else full_settings()
    settings.variants = args.variants
    if args.repeats is not None:
        settings.repeats = args.repeats
    results = run_suite(settings, torch.device(args.device))
    results["meta"]["command"] = " ".join(
        ["benchmark.py", *(argv if argv is not None else sys.argv[1:])]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    save_scaling_plot(results["scaling"], args.out.with_name(args.out.stem + "_scaling.png"))
    print(markdown_report(results))
    failed = [c for c in results["checks"] if not c["ok"]]
    for check in failed:
        progress(
            f"MISMATCH: {check['variant']} vs {check['reference']}: max abs error {check['max_abs_error']:.3g}"
        )
    return 1 if failed else 0
