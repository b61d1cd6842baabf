"""Framework overhead: training throughput of a ``train.py`` configuration against a plain PyTorch
loop on the same model, data, batch size, optimizer, schedule and gradient clipping, run in the
same process, for either task (``dataset.shape.task``).

The framework side is ``attnexp.training.pipeline.train`` itself (what ``train.py`` runs: the configured
trainer, callbacks and loggers, then the test); its samples/s is the ``RunStats`` figure it
writes to results.json (a sample is a training window for a language model, whose tokens/s is
samples/s x ``dataset.context_len``). The plain side is ``measure.plain_loop_throughput`` on a
fresh model built from the same config with the same seed, over the same number of samples:
shuffled mini-batches of the training split (classification) or windows at random starts of the
training tokens (a language model). Each round runs both, framework first in even rounds and
plain first in odd ones (A B B A ...), so a drift in machine load hits both alike. A run's length
is epochs (classification) or optimizer steps (a language model, one validation at the end).
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from attnexp.bench.measure import (
    LOSSES,
    config_task,
    plain_loop_throughput,
    random_windows,
    shuffled_batches,
)
from attnexp.config.compose import compose_train_config
from attnexp.data.shape import CLASSIFICATION, LM
from attnexp.tasks.optim import param_groups

TARGET_RATIO = 0.95  # target: >= 0.95x the plain loop (MNIST-1D default; shakespeare_char_cpu)
# Measured as a run writes to files (no progress bar), with the CSV logger (W&B starts a service
# process; pass logger=many to include it).
DEFAULT_OVERRIDES = ("logger=csv", "trainer.enable_progress_bar=false")
UNITS = {CLASSIFICATION: "epochs", LM: "steps"}  # what a run's length counts, per task


def length_overrides(task: str, length: int) -> list[str]:
    """A fit of ``length`` epochs, or for a language model ``length`` steps validated once."""
    if task == LM:
        return [f"trainer.max_steps={length}", f"dataset.steps_per_epoch={length}"]
    return [f"trainer.max_epochs={length}"]


def fit_steps(cfg: DictConfig, n_train: int) -> int:
    """Optimizer steps of the fit (Lightning's ``estimated_stepping_batches``)."""
    if config_task(cfg) == LM:
        return cfg.trainer.max_steps
    return cfg.trainer.max_epochs * -(-n_train // cfg.dataset.batch_size)


def counted_samples(cfg: DictConfig, n_train: int) -> int:
    """Samples ``RunStats`` times in the fit: every training sample (window) of every step but
    the first batch's (its warm-up)."""
    batch = cfg.dataset.batch_size
    if config_task(cfg) == LM:
        return (cfg.trainer.max_steps - 1) * batch
    return cfg.trainer.max_epochs * n_train - min(batch, n_train)


def text_overrides(text: Path, overrides: Sequence[str] = ()) -> list[str]:
    """``overrides`` (an LM config) pointed at the UTF-8 file ``text``, never downloading, with
    the vocabulary size its training split has (cached as the run will read it)."""
    text = Path(text).resolve()
    if not text.is_file():
        raise ValueError(f"--text {text}: no such file (a UTF-8 text, e.g. tinyshakespeare)")
    found = [*overrides, f"dataset.path={text}", "dataset.download=false"]
    cfg = compose_train_config(found, Path("unused"))  # nothing is written
    vocab = instantiate(cfg.dataset.source)(path=str(text), download=False).vocab
    return [*found, f"dataset.shape.vocab_size={vocab.size}"]


def synthetic_text(path: Path, chars: int = 20_000, seed: int = 0) -> Path:
    """A small made-up text of words on lines (the smoke run's corpus: it runs anywhere)."""
    generator = torch.Generator().manual_seed(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words, size = [], 0
    while size < chars:
        n = int(torch.randint(1, 9, (1,), generator=generator))
        word = "".join(letters[i] for i in torch.randint(26, (n,), generator=generator).tolist())
        words.append(word + ("\n" if len(words) % 12 == 11 else " "))
        size += len(words[-1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(words), encoding="utf-8")
    return path


def framework_round(overrides: Sequence[str], work_dir: Path) -> dict:
    """One ``train`` run of the composed config; its samples/s as results.json records it."""
    from attnexp.training.pipeline import train

    run_dir = Path(tempfile.mkdtemp(prefix="framework-", dir=work_dir))
    cfg = compose_train_config(overrides, run_dir)
    # Keep the benchmark's output to its figures: Lightning's banner and test table go nowhere.
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            results = train(cfg, overrides=list(overrides))
    finally:
        lightning_log.setLevel(level)
    return {"samples_per_s": results["throughput"], "wall_time_s": results["wall_time_s"]}


def uses_cuda(accelerator: str) -> bool:
    """Where Lightning trains for ``trainer.accelerator``: the plain loop must run there too."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def plain_round(cfg: DictConfig) -> dict:
    """The plain loop on what ``cfg`` trains: same model (same seed), training data, batch
    size, optimizer (and its weight-decay groups), per-step schedule and gradient clipping, as
    many timed samples as the framework's fit."""
    from attnexp.data.augment import model_inputs
    from attnexp.models import build_model
    from attnexp.training.pipeline import (
        build_data,  # a LightningDataModule: this section runs train.py
    )

    task = config_task(cfg)
    device = torch.device("cuda" if uses_cuda(cfg.trainer.accelerator) else "cpu")
    batch = cfg.dataset.batch_size
    train = build_data(cfg).load()["train"]
    if task == LM:  # the training stream's first piece (a text's only one)
        piece = train.pieces[0]
        tokens = piece if isinstance(piece, Tensor) else torch.from_numpy(piece.astype("int64"))
        n_train = len(tokens)
        batches = random_windows(tokens.to(device), cfg.dataset.context_len, batch, cfg.seed)
    else:
        x, y = train
        n_train = len(y)
        stored = shuffled_batches(x.to(device), y.to(device), batch, cfg.seed)
        batches = ((model_inputs(x), y) for x, y in stored)  # as the data module converts them
    make_optimizer = instantiate(cfg.optim.optimizer)
    decay_matrices_only = cfg.optim.get("decay_matrices_only", False)
    scheduler = None
    if cfg.optim.get("scheduler"):
        make = instantiate(cfg.optim.scheduler)
        total_steps = fit_steps(cfg, n_train)
        scheduler = lambda opt: make(optimizer=opt, total_steps=total_steps)  # noqa: E731
    return plain_loop_throughput(
        lambda: build_model(cfg),
        batches,
        optimizer_factory=lambda params: make_optimizer(
            params=param_groups(params, decay_matrices_only)
        ),
        scheduler_factory=scheduler,
        clip_grad_norm=cfg.trainer.get("gradient_clip_val"),
        loss_fn=LOSSES[task],
        steps=max(1, counted_samples(cfg, n_train) // batch),
        warmup_steps=1,
        seed=cfg.seed,
        device=device,
    )


def measure_overhead(
    overrides: Sequence[str] = (), length: int = 3, rounds: int = 2, work_dir: Path | None = None
) -> dict:
    """Framework and plain-loop samples/s (and tokens/s for a language model) over ``rounds``
    alternating rounds of ``length`` epochs or steps (``UNITS``), and their ratio: the median
    over rounds of framework / plain within a round (neighbours in time see the same load);
    >= ``TARGET_RATIO`` is the target."""
    if length < 1 or rounds < 1:
        raise ValueError(f"need length >= 1 and rounds >= 1, got {length}, {rounds}")
    overrides = [*DEFAULT_OVERRIDES, *overrides]
    with tempfile.TemporaryDirectory(prefix="overhead-", dir=work_dir) as tmp:
        task = config_task(compose_train_config(overrides, Path(tmp) / "plain"))
        overrides += length_overrides(task, length)
        cfg = compose_train_config(overrides, Path(tmp) / "plain")
        framework, plain = [], []
        for i in range(rounds):
            # Order A B, then B A, ...: a steady drift in load favours neither side over a pair.
            if i % 2 == 0:
                framework.append(framework_round(overrides, Path(tmp)))
                plain.append(plain_round(cfg))
            else:
                plain.append(plain_round(cfg))
                framework.append(framework_round(overrides, Path(tmp)))
    fw = [r["samples_per_s"] for r in framework]
    pl = [r["samples_per_s"] for r in plain]
    result = {
        "task": task,
        "overrides": overrides,
        "choices": OmegaConf.to_container(cfg.choices),
        "loggers": sorted((cfg.get("logger") or {}).keys()),
        "callbacks": sorted(k for k, v in (cfg.get("callbacks") or {}).items() if v is not None),
        "batch_size": cfg.dataset.batch_size,
        "length": length,
        "unit": UNITS[task],
        "framework_samples_per_s": fw,
        "plain_samples_per_s": pl,
        "framework": statistics.median(fw),
        "plain": statistics.median(pl),
        "ratio": statistics.median(f / p for f, p in zip(fw, pl, strict=True)),
        "target": TARGET_RATIO,
    }
    result["met"] = result["ratio"] >= TARGET_RATIO
    if task == LM:  # a sample is a window of context_len scored tokens
        context = cfg.dataset.context_len
        result.update(
            context_len=context,
            framework_tokens_per_s=[s * context for s in fw],
            plain_tokens_per_s=[s * context for s in pl],
        )
    return result
