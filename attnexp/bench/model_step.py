"""A real training step of a composed model: the MQAR scaling curve, model FLOP utilisation and
the causal variants' step time in the language models.

Each builds what ``train.py`` builds (``attention=<name> backbone=transformer dataset=mqar``, or
``experiment=shakespeare_char_cpu attention=<name> lm_backbone=<backbone>``, composed with Hydra)
and times one optimizer step (forward, the task's loss, backward, AdamW) on a batch from the real
MQAR generator, or of random token windows, at the sequence length asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.nn import functional as F

from attnexp.bench.measure import (
    LOSSES,
    config_task,
    median_times,
    peak_memory_bytes,
    timed_peak_memory,
)
from attnexp.config.compose import compose_train_config
from attnexp.data.mqar import make_mqar
from attnexp.models import (
    build_model,  # not attnexp.training.pipeline: timing a model needs no Lightning
)
from attnexp.models.common import AttentionSlot, Readout

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM, per NVIDIA's specification
LM_EXPERIMENT = "shakespeare_char_cpu"  # the language model of the LM figures (nanoGPT's CPU one)
CAUSAL_LIMIT = 2.0  # target: every causal variant's LM step within 2x mha's at context 256 on CPU
CAUSAL_BASELINE = "mha"


def mqar_config(attention: str, seq_len: int, overrides: Sequence[str] = ()) -> DictConfig:
    """The transformer-on-MQAR config of ``attention`` at sequence length ``seq_len``."""
    return compose_train_config(
        [
            f"attention={attention}",
            "backbone=transformer",
            "dataset=mqar",
            f"dataset.source.seq_len={seq_len}",
            "logger=none",
            *overrides,
        ],
        Path("unused"),  # nothing is written
    )


def lm_config(
    attention: str, backbone: str, context_len: int, overrides: Sequence[str] = ()
) -> DictConfig:
    """The ``LM_EXPERIMENT`` language model of ``attention`` on ``backbone`` (an
    ``lm_backbone`` preset) at context length ``context_len``; needs no text file."""
    return compose_train_config(
        [
            f"experiment={LM_EXPERIMENT}",
            f"attention={attention}",
            f"lm_backbone={backbone}",
            f"dataset.context_len={context_len}",
            "logger=none",
            *overrides,
        ],
        Path("unused"),  # nothing is written
    )


def lm_batch(cfg: DictConfig, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``batch`` windows of uniform random tokens of ``cfg.dataset``'s context and vocabulary,
    with their next tokens (the step time of a model does not depend on the text)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    size = (batch, cfg.dataset.context_len + 1)
    windows = torch.randint(cfg.dataset.shape.vocab_size, size, generator=generator).to(device)
    return windows[:, :-1], windows[:, 1:]


def mqar_batch(cfg: DictConfig, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``batch`` sequences from the MQAR generator with ``cfg.dataset.source``'s sizes."""
    src = cfg.dataset.source
    x, y = make_mqar(batch, src.seq_len, src.vocab_size, src.num_classes, src.num_pairs, src.seed)
    return torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)


def optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    autocast_dtype: torch.dtype | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> Callable[[], None]:
    """One training step: forward (under autocast when a dtype is given), loss, backward, step."""
    device_type = x.device.type

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()

    return step


def build_step(
    cfg: DictConfig,
    batch: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    make_batch: Callable[[DictConfig, int, torch.device], tuple[Tensor, Tensor]] = mqar_batch,
) -> tuple[nn.Module, Callable[[], None]]:
    """The model of ``cfg`` and one optimizer step of it on ``make_batch(cfg, batch, device)``,
    with the loss of the config's task."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device).train()
    optimizer = instantiate(cfg.optim.optimizer)(params=model.parameters())
    x, y = make_batch(cfg, batch, device)
    loss = LOSSES[config_task(cfg)]
    return model, optimizer_step(model, optimizer, x, y, autocast_dtype, loss)


# --- scaling in sequence length --------------------------------------------------------------------


DESIGN_BASELINE = "dot+softmax"  # the design-space scaling's ratios are to this cell
DESIGN_MEMORY_EXPONENT = 1.2  # target: peak memory ~ N^p with p at most this (1 = linear)
DESIGN_TIME_LIMIT = 1.3  # target: fused softmax cells within 1.3x of dot+softmax's step at N = 4096


def design_cells(variant: str = "mha") -> dict[str, tuple[str, list[str]]]:
    """Every score x normalisation of ``variant``'s design space, ``"score+normalize"`` ->
    ``(variant, overrides)``, the ``DESIGN_BASELINE`` first."""
    from attnexp.attention.design import NORMALIZATIONS, SCORES

    return {
        f"{score}+{norm}": (variant, [f"attention.score={score}", f"attention.normalize={norm}"])
        for score in SCORES
        for norm in NORMALIZATIONS
    }


def bench_mqar_scaling(
    variants: Sequence[str] | Mapping[str, tuple[str, Sequence[str]]],
    lengths: Sequence[int],
    *,
    batch: int,
    warmup: int,
    repeats: int,
    budget_s: float,
    device: torch.device,
    progress: Callable[[str], None] = lambda message: None,
    overrides: Sequence[str] = (),
    single_step: bool = False,
) -> list[dict]:
    """Time and peak memory of one training step of each variant at each length (``overrides``
    go to each config), the variants timed interleaved at each length. ``variants``: attention
    names, or labels -> ``(attention, its own overrides)`` (``design_cells``). Once a variant's
    step takes longer than ``budget_s`` its longer lengths are skipped (a row with ``ms`` None
    and the reason). ``single_step`` (for steps of minutes): one step per variant, timed while
    its memory is recorded, instead of ``warmup`` + ``repeats`` timed steps and one more for
    the memory."""
    if not isinstance(variants, Mapping):
        variants = {name: (name, ()) for name in variants}
    rows, too_slow = [], {}
    for n in lengths:
        steps = {
            label: build_step(mqar_config(name, n, [*overrides, *own]), batch, device)[1]
            for label, (name, own) in variants.items()
            if label not in too_slow
        }
        peak: dict[str, int] = {}  # bytes
        if single_step:
            seconds = {}
            for name, step in steps.items():
                seconds[name], peak[name] = timed_peak_memory(step, device)
                progress(f"MQAR scaling N={n}: {name} {seconds[name]:.1f} s")
        else:
            seconds = median_times(steps, warmup, repeats, device) if steps else {}
            peak = {name: peak_memory_bytes(step, device) for name, step in steps.items()}
        for name in variants:
            row = {"variant": name, "n": n, "batch": batch, "ms": None, "peak_mb": None}
            if name in steps:
                row.update(ms=1e3 * seconds[name], peak_mb=peak[name] / 2**20, skipped=None)
                if seconds[name] > budget_s:
                    too_slow[name] = f"a step took {seconds[name]:.2f} s > {budget_s:g} s at N={n}"
            else:
                row["skipped"] = too_slow[name]
            rows.append(row)
        progress(
            f"MQAR scaling N={n}: "
            + ", ".join(f"{name} {1e3 * s:.1f} ms" for name, s in seconds.items())
            + "".join(f"; {name} skipped" for name in variants if name not in steps)
        )
    return rows


# --- causal variants in the language models -------------------------------------------------------


def bench_causal(
    variants: Sequence[str],
    backbones: Sequence[str],
    *,
    context_len: int,
    warmup: int,
    repeats: int,
    device: torch.device,
    overrides: Sequence[str] = (),
    progress: Callable[[str], None] = lambda message: None,
) -> list[dict]:
    """One training step of the ``LM_EXPERIMENT`` language model (its batch size and sizes, or
    ``overrides``) with each variant on each backbone at ``context_len``, the variants of a
    backbone timed interleaved, each against ``CAUSAL_BASELINE`` on the same backbone. A variant
    that refuses ``causal`` gets a row with ``ms`` None and its message."""
    rows = []
    for backbone in backbones:
        steps, refused, batch = {}, {}, None
        for name in variants:
            cfg = lm_config(name, backbone, context_len, overrides)
            batch = cfg.dataset.batch_size
            try:
                steps[name] = build_step(cfg, batch, device, make_batch=lm_batch)[1]
            except (ValueError, InstantiationException) as e:
                why = str(e.__cause__ or e)  # Hydra wraps the module's own ValueError
                if "causal" not in why:  # pool's refusal names causal; anything else is a bug
                    raise
                refused[name] = why
        if CAUSAL_BASELINE not in steps:
            raise ValueError(f"the causal step times are relative to {CAUSAL_BASELINE}: include it")
        seconds = median_times(steps, warmup, repeats, device)
        for name in variants:
            row = {"variant": name, "backbone": backbone, "context_len": context_len,
                   "batch": batch, "ms": None, "over_baseline": None, "limit": CAUSAL_LIMIT}  # fmt: skip
            if name in refused:
                row.update(met=None, refused=refused[name])
            else:
                ratio = seconds[name] / seconds[CAUSAL_BASELINE]
                row.update(ms=1e3 * seconds[name], over_baseline=ratio,
                           met=ratio <= CAUSAL_LIMIT, refused=None)  # fmt: skip
            rows.append(row)
        progress(
            f"causal {backbone} N={context_len}: "
            + ", ".join(f"{name} {1e3 * s:.1f} ms" for name, s in seconds.items())
        )
    return rows


# --- model FLOP utilisation --------------------------------------------------------------------------


def dense_flops_per_sample(model: nn.Module, tokens: int) -> int:
    """Forward FLOPs of the dense layers outside the attention slots, for one sample: 2 x the
    parameters of every linear or convolution layer x the tokens it sees (``tokens`` for the
    embedding and the blocks, 1 for the readout head, which sees the pooled vector). Norms and
    position embeddings are not matmuls and are left out; so are lookup tables."""
    per_sample = {id(m.head) for m in model.modules() if isinstance(m, Readout)}
    in_slots = {
        id(p) for m in model.modules() if isinstance(m, AttentionSlot) for p in m.parameters()
    }
    total = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            params = sum(p.numel() for p in module.parameters() if id(p) not in in_slots)
            total += 2 * params * (1 if id(module) in per_sample else tokens)
    return total


def training_flops_per_sample(model: nn.Module, tokens: int) -> int:
    """Model FLOPs of one training step per sample: 3 x forward (backward ~ 2 x forward), the
    forward being the dense layers (``dense_flops_per_sample``, i.e. 6 x params x tokens over the
    step) plus the attention slots' analytic ``flops`` (SDPA is invisible to FLOP counters)."""
    return 3 * (dense_flops_per_sample(model, tokens) + model.attention_flops())


def sdpa_backends(device: torch.device, heads: int, seq_len: int, head_dim: int) -> dict[str, str]:
    """Which fused SDPA kernels run forward + backward at this shape in bf16, each enabled alone."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    found = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        q = torch.randn(1, heads, seq_len, head_dim, device=device, dtype=torch.bfloat16)
        q.requires_grad_()
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, q, q).sum().backward()
            found[backend.name] = "runs"
        except RuntimeError as e:
            found[backend.name] = f"unavailable: {str(e).splitlines()[0]}"
    return found


def fused_sdpa_only(device: torch.device):
    """A context allowing only the flash and cuDNN SDPA kernels (CUDA); a no-op elsewhere."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION])


def measure_mfu(
    *,
    dim: int,
    depth: int,
    heads: int,
    seq_len: int,
    batch: int,
    peak_flops: float,
    device: torch.device,
    bf16: bool = True,
    warmup: int = 3,
    repeats: int = 10,
) -> dict:
    """Achieved model FLOP/s of a transformer + ``mha`` training step on MQAR, and its fraction
    of ``peak_flops`` (reported on CUDA only: a CPU has no comparable peak here)."""
    cfg = mqar_config(
        "mha",
        seq_len,
        [f"backbone.dim={dim}", f"backbone.depth={depth}", f"attention.num_heads={heads}"],
    )
    autocast = torch.bfloat16 if bf16 else None
    model, step = build_step(cfg, batch, device, autocast)
    flops = training_flops_per_sample(model, seq_len) * batch
    result = {
        "config": {"dim": dim, "depth": depth, "heads": heads, "seq_len": seq_len,
                   "batch": batch, "bf16": bf16, "device": str(device)},
        "params": sum(p.numel() for p in model.parameters()),
        "flops_per_step": flops,
        "sdpa": None,
    }  # fmt: skip
    context = fused_sdpa_only(device)
    if device.type == "cuda":
        result["sdpa"] = sdpa_backends(device, heads, seq_len, dim // heads)
        try:
            with fused_sdpa_only(device):
                step()
            result["sdpa"]["model_step"] = "runs with only FLASH_ATTENTION and CUDNN_ATTENTION"
        except RuntimeError as e:
            result["sdpa"]["model_step"] = f"needs another backend: {str(e).splitlines()[0]}"
            context = contextlib.nullcontext()
    with context:
        seconds = median_times({"step": step}, warmup, repeats, device)["step"]
    achieved = flops / seconds
    return {
        **result,
        "ms": 1e3 * seconds,
        "achieved_tflop_per_s": achieved / 1e12,
        "peak_tflop_per_s": peak_flops / 1e12,
        "mfu": achieved / peak_flops if device.type == "cuda" else None,
        "tokens_per_s": batch * seq_len / seconds,
        "note": None if device.type == "cuda" else "MFU is reported on CUDA only",
    }
