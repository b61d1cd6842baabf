"""The benchmark suite: every attention variant against the references a user would
pick instead, the MQAR scaling curve of a real training step (of every mixer, and of every
score x normalisation of mha's design space at a small width), the framework overhead of
``train.py`` against a plain loop (classification, and the language model in tokens/s), every
causal variant's language-model step time against mha's, and (on CUDA) model FLOP utilisation.

``python scripts/benchmark.py [--smoke] [--out FILE]`` (or ``attnexp-bench``) prints Markdown
tables and writes JSON plus scaling plots beside it; ``--scaling``, ``--design-scaling``, ``--overhead``,
``--lm-overhead``, ``--causal``, ``--mfu`` and ``--ablation-timing`` run one section alone. Conventions (also stored in the JSON):
time is the median of one forward + backward step; FLOP/s = 3 x the module's analytic forward
FLOPs (``flops(grid)``, backward ~ 2 x forward) x batch / time, the same count for a module and its
references; peak memory as in ``measure``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnexp.attention import AttentionModule, Kind
from attnexp.bench import ablation, knob_scaling, position_bias, process_memory
from attnexp.bench.augment import bench_pipeline
from attnexp.bench.measure import (
    median_times,
    peak_memory_bytes,
    training_step,
)
from attnexp.bench.model_step import (
    CAUSAL_BASELINE,
    H100_BF16_PEAK,
    LM_EXPERIMENT,
    bench_causal,
    bench_mqar_scaling,
    design_cells,
    measure_mfu,
)
from attnexp.bench.overhead import measure_overhead, synthetic_text, text_overrides
from attnexp.bench.references import Reference, references_for, timm_or_reason
from attnexp.bench.tables import (
    ablation_report,
    causal_report,
    design_scaling_report,
    evaluate_targets,
    mfu_report,
    modules_report,
    overhead_report,
    pipeline_report,
    save_scaling_plot,
    scaling_report,
)
from attnexp.config.attention import available, create, searchpath_override, variant_kind
from attnexp.util.cores import available_cores
from attnexp.util.memory import LARGE_ALLOCATION_BYTES, mmap_large_allocations
from attnexp.util.terminal import quiet_dependencies

OURS = "attnexp"
TINY_LM = ["dataset.batch_size=4", "backbone.depth=1", "backbone.dim=32"]  # smoke sizes
TOLERANCE = 1e-5  # atol and rtol of the numeric checks


@dataclass
class Settings:
    """One suite run. ``module_sizes``: (batch, positions N, dim); gates run on a sqrt(N) x
    sqrt(N) image, everything else on a length-N sequence. Scaling: one training step of the
    transformer backbone on MQAR at each of ``scaling_lengths``; a variant whose step exceeds
    ``step_budget_s`` is skipped at longer lengths. Overhead: ``train.py``'s default config plus
    ``overhead_overrides``, ``overhead_epochs`` epochs, ``overhead_rounds`` alternating rounds.
    LM overhead: the same for ``experiment=shakespeare_char_cpu`` on the UTF-8 file ``text`` (None:
    a small synthetic text) plus ``lm_overhead_overrides``, ``lm_overhead_steps`` steps per round.
    Causal: one training step of that experiment's language model on each of ``causal_backbones``
    at context ``causal_context_len`` (plus ``causal_overrides``), each variant against mha.
    MFU: a transformer + mha training step of ``mfu`` sizes. ``search_path``: extra config roots
    whose ``attention/<name>.yaml`` variants join the discovered ones. Design scaling: the same
    step for every score x normalisation of mha (``design_cells``) at ``design_lengths``, batch
    1, with ``design_overrides`` (a small width), never skipped for time; lengths above
    ``design_once_above`` are timed by one step."""

    module_sizes: list[tuple[int, int, int]]
    scaling_lengths: list[int]
    scaling_batch: int = 4
    scaling_repeats: int = 5
    design_lengths: list[int] = field(default_factory=lambda: [1024, 4096, 16384])
    design_overrides: list[str] = field(
        default_factory=lambda: ["backbone.dim=32", "backbone.depth=1", "attention.num_heads=2"]
    )
    design_repeats: int = 3
    design_once_above: int = 4096
    step_budget_s: float = 2.0
    warmup: int = 3
    repeats: int = 15
    overhead_overrides: list[str] = field(default_factory=list)
    overhead_epochs: int = 3
    overhead_rounds: int = 3
    text: str | None = None
    lm_overhead_overrides: list[str] = field(default_factory=list)
    lm_overhead_steps: int = 200
    causal_context_len: int = 256
    causal_backbones: list[str] = field(default_factory=lambda: ["transformer", "cnn"])
    causal_overrides: list[str] = field(default_factory=list)
    mfu: dict = field(
        default_factory=lambda: {"dim": 1024, "depth": 8, "heads": 16, "seq_len": 2048, "batch": 16}
    )
    mfu_on_cpu: bool = False  # the full sizes are for a GPU; smoke checks the arithmetic on CPU
    variants: list[str] = field(default_factory=list)  # empty: all discovered
    search_path: list[str] = field(default_factory=list)


def full_settings() -> Settings:
    lengths = [64, 256, 1024, 4096]
    return Settings(
        module_sizes=[(max(1, 4096 // n), n, c) for n in lengths for c in (64, 128)],
        scaling_lengths=[2**p for p in range(6, 13)],
    )


def smoke_settings() -> Settings:
    return Settings(
        module_sizes=[(2, 16, 32), (2, 64, 32)],
        scaling_lengths=[16, 64],
        scaling_batch=2,
        scaling_repeats=2,
        design_lengths=[16, 64],
        design_repeats=1,
        warmup=1,
        repeats=3,
        # A small MNIST-1D (360 training samples, batches of 32), one epoch, one round.
        overhead_overrides=["dataset.source.num_samples=400", "dataset.batch_size=32"],
        overhead_epochs=1,
        overhead_rounds=1,
        # The LM experiment shrunk: a synthetic text, context 16, 4 windows a batch, 4 steps.
        lm_overhead_overrides=[*TINY_LM, "dataset.context_len=16"],
        lm_overhead_steps=4,
        causal_context_len=16,
        causal_overrides=TINY_LM,
        mfu={"dim": 32, "depth": 1, "heads": 4, "seq_len": 64, "batch": 2},
        mfu_on_cpu=True,
    )


# --- building ----------------------------------------------------------------------------------


def mixers(names: list[str], search_path: list[str]) -> list[str]:
    """The ``names`` whose module is a MIXER: the variants the scaling curve takes."""
    return [name for name in names if variant_kind(name, search_path) is Kind.MIXER]


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
    probe = create(name, dim, search_path=settings.search_path)
    grid = grid_for(probe, n)
    module = create(name, dim, len(grid), search_path=settings.search_path)
    randomise_constants(module)
    references = references_for(module)
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
    targets = {r.label: r.target for r in references}
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
                "target": targets.get(label),
            }
        )
    return rows, checks


# --- running ---------------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def chosen_variants(settings: Settings) -> list[str]:
    """``settings.variants`` (all discovered if empty), refusing an unknown one."""
    variants = available(settings.search_path)
    unknown = set(settings.variants) - set(variants)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; discovered: {', '.join(variants)}")
    return [v for v in variants if not settings.variants or v in settings.variants]


def run_suite(
    settings: Settings, device: torch.device, peak_flops: float = H100_BF16_PEAK
) -> dict:
    """The module benchmarks and numeric checks, then every section of ``SECTIONS`` that runs in
    the suite; a section that does not apply here (MFU on a CPU at full sizes) records None."""
    chosen = chosen_variants(settings)
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
    _, timm_reason = timm_or_reason()
    results = {
        "meta": meta(settings, device, timm=timm_reason or "imported"),
        "modules": modules,
        "checks": checks,
        "targets": evaluate_targets(modules),
    }
    job = Job(settings, device, peak_flops=peak_flops)
    for section in SECTIONS:
        if section.in_suite:
            results[section.name] = section.measure(job)
    return results


def markdown_report(results: dict) -> str:
    """The whole suite's Markdown: modules, checks, targets, then each section it ran."""
    parts = [modules_report(results)]
    for section in SECTIONS:
        if section.in_suite and results.get(section.name) is not None:
            parts.append(section.report(results[section.name]))
    return "\n\n".join(parts)


def meta(settings: Settings, device: torch.device, **extra) -> dict:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        **extra,
        "settings": asdict(settings),
        "conventions": {
            "ms": "median wall time of one forward + backward step after warm-up",
            "gflop_per_s": "3 x analytic forward FLOPs x batch / time (same count for references)",
            "peak_mb": "peak tensor memory allocated during one step above the level before it "
            "(CPU: profiler allocation events; GPU: max_memory_allocated)",
            "ours_over_ref": "our time / the reference's time (< 1: ours is faster)",
            "scaling": "one optimizer step (forward, loss, backward, AdamW) of the transformer "
            "backbone on an MQAR batch of the given length",
            "design_scaling": "as scaling, batch 1, a small width, for every score x "
            "normalisation of mha; ratios to dot+softmax at the same N, measured in the same run; "
            "memory exponent p: peak ~ N^p fitted between the shortest and longest N",
            "overhead.ratio": "median over rounds of train.py samples/s / plain-loop samples/s",
            "lm_overhead": "as overhead for the language model; a sample is a window, tokens/s "
            "= windows/s x context_len",
            "causal.over_baseline": "a variant's LM training step time / mha's on the same "
            "backbone (timed interleaved); pool refuses causal",
            "mfu": "3 x (2 x dense params x tokens + attention flops()) x batch / step time / peak",
        },
    }


def run_scaling(settings: Settings, variants: list[str], device: torch.device) -> list[dict]:
    return bench_mqar_scaling(
        variants,
        settings.scaling_lengths,
        batch=settings.scaling_batch,
        warmup=1,
        repeats=settings.scaling_repeats,
        budget_s=settings.step_budget_s,
        device=device,
        progress=progress,
        overrides=searchpath_override(settings.search_path),
    )



def run_design_scaling(
    settings: Settings,
    device: torch.device,
    on_length: Callable[[list[dict]], None] = lambda rows: None,
) -> list[dict]:
    """Lengths up to ``design_once_above``: one warm-up and ``design_repeats`` timed steps;
    longer ones (minutes a step for the slowest cells on a CPU): one step, timed while its
    memory is recorded, with large CPU allocations mmapped (``mmap_large_allocations``: without
    it glibc's heap grows by the freed score blocks until the machine runs out of memory at N =
    16,384). Each row's ``method`` says which. ``on_length`` gets the rows so far after each
    length, so a run stopped midway keeps what it measured."""
    rows: list[dict] = []
    for n in settings.design_lengths:
        once = n > settings.design_once_above
        mmapped = once and device.type == "cpu" and mmap_large_allocations(LARGE_ALLOCATION_BYTES)
        measured = bench_mqar_scaling(
            design_cells(),
            [n],
            batch=1,
            warmup=1,
            repeats=settings.design_repeats,
            budget_s=math.inf,
            device=device,
            progress=progress,
            overrides=[*searchpath_override(settings.search_path), *settings.design_overrides],
            single_step=once,
        )
        method = (
            "one step, timed while profiled" if once
            else f"median of {settings.design_repeats} after 1 warm-up"
        )  # fmt: skip
        if mmapped:
            method += f", allocations >= {LARGE_ALLOCATION_BYTES >> 20} MiB mmapped"
        rows += [{**row, "method": method} for row in measured]
        on_length(list(rows))
    return rows


def run_overhead(settings: Settings) -> dict:
    progress("framework overhead: train() and the plain loop, alternating ...")
    result = measure_overhead(
        settings.overhead_overrides, settings.overhead_epochs, settings.overhead_rounds
    )
    progress(f"framework overhead: ratio {result['ratio']:.3f}")
    return result


def run_lm_overhead(settings: Settings, work_dir: Path | None = None) -> dict:
    progress("LM framework overhead: train() and the plain loop, alternating ...")
    with tempfile.TemporaryDirectory(prefix="lm-overhead-", dir=work_dir) as tmp:
        text = settings.text or synthetic_text(Path(tmp) / "text.txt")
        # A synthetic text's encoding is cached beside it, never in the project's data dir.
        cache = [] if settings.text else [f"paths.data_dir={tmp}"]
        overrides = text_overrides(
            Path(text),
            [f"experiment={LM_EXPERIMENT}", *cache, *settings.lm_overhead_overrides],
        )
        result = measure_overhead(
            overrides, settings.lm_overhead_steps, settings.overhead_rounds, Path(tmp)
        )
    result["text"] = str(settings.text) if settings.text else "synthetic"
    progress(f"LM framework overhead: ratio {result['ratio']:.3f}")
    return result


def run_causal(settings: Settings, variants: list[str], device: torch.device) -> list[dict]:
    if CAUSAL_BASELINE not in variants:
        variants = [CAUSAL_BASELINE, *variants]  # the ratios are to mha's step
    return bench_causal(
        variants,
        settings.causal_backbones,
        context_len=settings.causal_context_len,
        warmup=settings.warmup,
        repeats=settings.repeats,
        device=device,
        overrides=[*searchpath_override(settings.search_path), *settings.causal_overrides],
        progress=progress,
    )


def run_mfu(settings: Settings, device: torch.device, peak_flops: float) -> dict:
    sizes = settings.mfu
    if sizes["dim"] % sizes["heads"]:
        raise ValueError(f"MFU heads must divide dim: {sizes['heads']} heads, dim {sizes['dim']}")
    return measure_mfu(
        **sizes,
        peak_flops=peak_flops,
        device=device,
        bf16=device.type == "cuda",
        warmup=settings.warmup,
        repeats=settings.repeats,
    )


# --- the sections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """What one run of the suite or of one section was asked for."""

    settings: Settings
    device: torch.device
    peak_flops: float = H100_BF16_PEAK
    n_jobs: int = 2  # the ablation's joblib jobs
    overrides: tuple[str, ...] = ()  # extra train.py overrides of the ablation
    out: Path | None = None  # the JSON file; a long section saves its partial results there
    command: str = ""  # the command line, recorded in the JSON
    alone: bool = False  # one section run by its flag, not the whole suite

    @property
    def variants(self) -> list[str]:
        return chosen_variants(self.settings)

    def meta(self) -> dict:
        return {**meta(self.settings, self.device), "command": self.command}


@dataclass(frozen=True)
class Section:
    """One part of the benchmark: ``measure`` returns its JSON result, ``report`` its Markdown.
    Adding a section is one entry of ``SECTIONS``: its flag, the suite and the report follow."""

    name: str  # the JSON key; ``--name-with-dashes`` runs it alone
    help: str
    measure: Callable[[Job], Any]
    report: Callable[[Any], str]
    in_suite: bool = True  # False: only run alone (it trains, or needs what a CPU suite lacks)
    plot: bool = False  # a time and memory plot against N goes beside the JSON
    passed: Callable[[Any], bool] = lambda result: True  # the exit status of a run alone


def measure_scaling(job: Job) -> list[dict]:
    return run_scaling(job.settings, mixers(job.variants, job.settings.search_path), job.device)


def measure_design_scaling(job: Job) -> list[dict]:
    def save_partial(rows: list[dict]) -> None:  # a stopped run keeps its lengths
        if job.alone and job.out is not None:
            partial = {"meta": {**job.meta(), "partial": True}, "design_scaling": rows}
            job.out.write_text(json.dumps(partial, indent=2))

    return run_design_scaling(job.settings, job.device, on_length=save_partial)


def measure_mfu_section(job: Job) -> dict | None:
    settings = job.settings
    if job.device.type != "cuda":
        if not job.alone and not settings.mfu_on_cpu:
            return None
        if job.alone:  # the large sizes are for a GPU: check the arithmetic only
            settings = replace(settings, mfu=smoke_settings().mfu)
            progress(f"--mfu on {job.device}: tiny size {settings.mfu}, FLOP/s only")
    return run_mfu(settings, job.device, job.peak_flops)


def measure_ablation(job: Job) -> dict:
    where = (job.out.parent if job.out else Path("outputs/benchmark"))
    return ablation.time_ablation(
        ablation.ablation_command(n_jobs=job.n_jobs, overrides=list(job.overrides)),
        where / f"ablation-{datetime.now():%Y-%m-%d_%H-%M-%S}",
    )


SECTIONS = (
    Section("scaling", "only the MQAR scaling curve (every mixer)", measure_scaling,
            scaling_report, plot=True),
    Section("design_scaling", "only the scaling curve of every score x normalisation of mha "
            "(N = 1k, 4k, 16k, batch 1, dim 32, 2 heads, 1 block)", measure_design_scaling,
            design_scaling_report, plot=True),
    Section("overhead", "only the framework-overhead ratio",
            lambda job: run_overhead(job.settings), overhead_report),
    Section("lm_overhead", "only the language model's framework-overhead ratio and tokens/s "
            "(experiment=shakespeare_char_cpu on --text)",
            lambda job: run_lm_overhead(job.settings), overhead_report),
    Section("causal", "only every causal variant's LM training step time against mha's "
            "(context 256)", lambda job: run_causal(job.settings, job.variants, job.device),
            causal_report),
    Section("mfu", "only model FLOP utilisation (the figure on CUDA only)",
            measure_mfu_section, mfu_report),
    Section("pipeline", "only the image input pipeline: on-device augmentation in images/s "
            "against bare tensor loops and the ResNet-20 step (CIFAR-shaped uint8 batches)",
            lambda job: bench_pipeline(job.device, warmup=job.settings.warmup,
                                       repeats=job.settings.repeats),
            pipeline_report, in_suite=False),
    Section("process_memory", "only: how much the process grows in one training step of mha at "
            "N = 8,192 over N = 256, per score x normalisation, with the chunked path's mmap and "
            "without, and the step time of each (a fresh process per figure)",
            lambda job: process_memory.measure(threads=torch.get_num_threads(), progress=progress),
            process_memory.to_markdown, in_suite=False),
    Section("position_bias", "only: the error of the fused kernel's forget-gate and causal ALiBi "
            "biases (offsets relative to each block, and absolute) in float32 and bf16 against "
            "float64, at N = 1,024 and 16,384", lambda job: position_bias.measure(progress=progress),
            position_bias.to_markdown, in_suite=False),
    Section("knob_scaling", "only: time and peak memory of one causal training step of mha with "
            "each preset of conf/attention_knob at N = 1k, 4k and 16k",
            lambda job: knob_scaling.measure(progress=progress), knob_scaling.to_markdown,
            in_suite=False),
    Section("ablation_timing", "only: run the full MNIST-1D ablation (train.py -m, joblib "
            "launcher) and time it", measure_ablation, ablation_report, in_suite=False,
            passed=lambda result: result["returncode"] == 0),
)  # fmt: skip
BY_NAME = {section.name: section for section in SECTIONS}


def section_report(name: str, result: Any) -> str:
    """The Markdown of one section's result."""
    if name not in BY_NAME:
        raise ValueError(f"unknown section {name!r}; one of {', '.join(BY_NAME)}")
    return BY_NAME[name].report(result)


# --- the command --------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--variants", nargs="*", default=[], help="default: all discovered")
    parser.add_argument(
        "--search-path",
        action="append",
        default=[],
        metavar="DIR",
        help="extra config root whose attention/<name>.yaml variants join (repeatable; as Hydra's "
        "hydra.searchpath, the variant's module must be importable)",
    )
    parser.add_argument("--repeats", type=int, help="timed steps per case (default 15; smoke 3)")
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        metavar="N",
        help="sequence lengths of --scaling and --design-scaling (default: 64 to 4096, and 1024 "
        "4096 16384)",
    )
    alone = parser.add_mutually_exclusive_group()
    for section in SECTIONS:
        flag = "--" + section.name.replace("_", "-")
        alone.add_argument(flag, action="store_true", dest=section.name, help=section.help)
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra train.py override for --overhead, --lm-overhead and --ablation-timing "
        "(repeatable; the whole suite gives it to both overhead sections)",
    )
    parser.add_argument("--epochs", type=int, help="overhead: epochs per round (default 3)")
    parser.add_argument(
        "--steps", type=int, help="LM overhead: training steps per round (default 200; smoke 4)"
    )
    parser.add_argument("--rounds", type=int, help="overhead: alternating rounds (default 3)")
    parser.add_argument(
        "--text",
        type=Path,
        help="LM overhead: the UTF-8 text to train on, e.g. tinyshakespeare's input.txt "
        "(default: a small synthetic text)",
    )
    parser.add_argument("--n-jobs", type=int, default=2, help="ablation: joblib jobs (default 2)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=H100_BF16_PEAK / 1e12,
        help="MFU: the device's peak TFLOP/s (default: H100 dense bf16, 989)",
    )
    return parser


def settings_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    """The suite's settings with the command line's choices; a bad one ends in ``parser.error``."""
    for key in ("threads", "repeats", "epochs", "steps", "rounds", "n_jobs", "peak_tflops"):
        value = getattr(args, key)
        if value is not None and value <= 0:
            parser.error(f"--{key.replace('_', '-')} must be positive, got {value}")
    if args.lengths is not None and min(args.lengths) < 2:
        parser.error(f"--lengths must be at least 2 each, got {args.lengths}")
    settings = smoke_settings() if args.smoke else full_settings()
    settings.variants, settings.search_path = args.variants, args.search_path
    try:
        chosen_variants(settings)
    except ValueError as error:
        parser.error(str(error))
    if args.text is not None and not args.text.is_file():
        parser.error(f"--text {args.text}: no such file")
    settings.text = str(args.text.resolve()) if args.text else None
    if args.lengths is not None:
        settings.scaling_lengths = settings.design_lengths = sorted(set(args.lengths))
    settings.overhead_overrides += args.override
    settings.lm_overhead_overrides += args.override
    for key, field_name in (("repeats", "repeats"), ("epochs", "overhead_epochs"),
                            ("steps", "lm_overhead_steps"),
                            ("rounds", "overhead_rounds")):  # fmt: skip
        if getattr(args, key) is not None:
            setattr(settings, field_name, getattr(args, key))
    return settings


def main(argv: list[str] | None = None) -> int:
    quiet_dependencies()
    command_line = parser()
    args = command_line.parse_args(argv)
    settings = settings_from(args, command_line)
    torch.set_num_threads(args.threads or (1 if args.smoke else available_cores()))
    device = torch.device(args.device)
    command = " ".join(["benchmark.py", *(argv if argv is not None else sys.argv[1:])])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    chosen = next((section for section in SECTIONS if getattr(args, section.name)), None)
    if chosen is not None:
        job = Job(settings, device, args.peak_tflops * 1e12, args.n_jobs, tuple(args.override),
                  args.out, command, alone=True)  # fmt: skip
        result = chosen.measure(job)
        args.out.write_text(json.dumps({"meta": job.meta(), chosen.name: result}, indent=2))
        if chosen.plot:
            save_scaling_plot(result, args.out.with_name(f"{args.out.stem}_{chosen.name}.png"))
        print(chosen.report(result))
        return 0 if chosen.passed(result) else 1
    results = run_suite(settings, device, peak_flops=args.peak_tflops * 1e12)
    results["meta"]["command"] = command
    args.out.write_text(json.dumps(results, indent=2))
    for section in SECTIONS:
        if section.in_suite and section.plot:
            plot = args.out.with_name(f"{args.out.stem}_{section.name}.png")
            save_scaling_plot(results[section.name], plot)
    print(markdown_report(results))
    failed = [c for c in results["checks"] if not c["ok"]]
    for check in failed:
        progress(
            f"MISMATCH: {check['variant']} vs {check['reference']}: max abs error {check['max_abs_error']:.3g}"
        )
    return 1 if failed else 0
