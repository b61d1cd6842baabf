"""Text from a causal language model: ``generate`` (token ids), ``sample_run`` (a trained run, as
``sample.py`` does) and ``record_samples`` (the samples a finished LM run keeps).

A transformer whose every slot decodes from a cache (``mha`` without qk convolution or key selection
keeps its keys and values; ``retnet`` and ``gla`` their state) runs the prompt once, then each new
token alone. Every other model recomputes itself over the
last ``context_len`` tokens for each new token, right-padded to exactly ``context_len`` (an LM
backbone is built for that grid, and under the causal contract the padding after the last real
token cannot change that token's logits), so every variant generates as it was trained
(``decode_steps``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from attnexp.util.checks import check_int
from attnexp.util.files import atomic_write_text

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from attnexp.data.vocab import Vocabulary
    from attnexp.models.common import Backbone

SEPARATOR = "-" * 40  # between samples, on its own line (nanoGPT's sample.py prints one too)


@dataclass
class SampleSettings:
    """What to sample; the defaults of ``sample.py`` and of the samples an LM run ends with.

    ``temperature`` 0 (or ``top_k`` 1) is greedy; ``seed`` None means the run's own seed.
    """

    prompt: str = "\n"
    num_samples: int = 3
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 200
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt:
            raise ValueError(f"prompt must be a non-empty string, got {self.prompt!r}")
        check_int("num_samples", self.num_samples, 1)
        check_int("max_new_tokens", self.max_new_tokens, 0)
        _check_sampling(self.temperature, self.top_k)


@torch.no_grad()
def generate(
    model: nn.Module,
    ids: Tensor,
    max_new_tokens: int,
    context_len: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    cache: bool | None = None,
    slide: bool | None = None,
) -> Tensor:
    """``ids`` ``(B, T)`` followed by ``max_new_tokens`` sampled tokens: ``(B, T + max_new_tokens)``.

    ``model(x)`` maps ids ``(B, L)`` to per-position logits ``(B, L, V)`` and must be causal;
    ``context_len`` is the ``L`` it was built for (an LM backbone's ``shape.grid``). Each
    step reads the logits at the last real position, divides them by ``temperature``, keeps the
    ``top_k`` largest and draws from their softmax with ``generator`` (on the model's device).
    ``cache`` (None: whenever the model can, ``decodable``) decodes with a KV cache or a
    recurrent state, and ``slide`` says what happens past the context (``decode_steps``). Runs
    in eval mode and gives the model back in the mode it came in.
    """
    check_int("context_len", context_len, 1)
    check_int("max_new_tokens", max_new_tokens, 0)
    _check_sampling(temperature, top_k)
    if ids.dim() != 2 or ids.shape[1] < 1 or ids.dtype != torch.long:
        raise ValueError(
            f"ids must be int64 token ids of shape (batch, length >= 1), got {ids.dtype} "
            f"{tuple(ids.shape)}"
        )
    if max_new_tokens == 0:
        return ids
    was_training = model.training
    model.eval()
    steps = decode_steps(model, ids, context_len, cache, slide)
    try:
        logits = next(steps)
        for step in range(max_new_tokens):
            next_id = _pick(logits.float(), temperature, top_k, generator)
            ids = torch.cat([ids, next_id], dim=1)
            if step < max_new_tokens - 1:
                logits = steps.send(next_id)
    finally:
        steps.close()
        model.train(was_training)
    return ids


def decode_steps(
    model: nn.Module, ids: Tensor, context_len: int, cache: bool | None = None,
    slide: bool | None = None,
) -> Generator[Tensor, Tensor, None]:  # fmt: skip
    """The next-token logits ``(B, V)`` after ``ids``, then after each id ``(B, 1)`` sent in.

    Without a cache each step recomputes the model over the last ``context_len`` tokens,
    right-padded to exactly ``context_len`` (an LM backbone is built for that grid; under the
    causal contract the padding cannot change the last real token's logits). With one
    (``cache``; None: whenever ``model.decodable``) the prompt's last ``context_len`` tokens run
    once and each new token alone, every slot reading what it keeps (``model.decoding()``: keys
    and values, or a recurrent state), so a step costs O(context) at most instead of
    O(context²). Once the cache holds ``context_len`` positions, the next step starts it
    again over the last ``context_len`` tokens (``slide``): recomputation's sliding window, so
    both give the same logits at every step (tests/test_kv_cache.py) up to float rounding. A
    model that ``continues`` (no learned positions, every slot's state bounded) goes on from its
    state instead unless ``slide`` is true (``slide=None``: whether it continues), each token
    at the same cost for ever; past the context its logits are those of the whole sequence,
    where recomputation's window has forgotten the start."""
    decodable = bool(getattr(model, "decodable", False))
    if cache and not decodable:
        raise ValueError("cache=true needs a model whose every attention slot decodes from a cache (mha, the recurrent mixers)")
    if cache is False or not decodable:
        yield from _recomputed(model, ids, context_len)
        return
    if slide is False and not model.continues:
        raise ValueError("slide=false needs a model that continues past its context: no learned "
                         "positions (backbone.positions=none) and a recurrent state in every slot")  # fmt: skip
    if not (model.continues if slide is None else not slide):
        yield from _sliding(model, ids, context_len)
        return
    with model.decoding():
        logits = model(ids[:, -context_len:])[:, -1]
        while True:
            next_id = yield logits
            logits = model(next_id)[:, -1]


def _sliding(model: nn.Module, ids: Tensor, context_len: int) -> Generator[Tensor, Tensor, None]:
    """Cached decoding that starts again over the last ``context_len`` tokens once the cache
    holds ``context_len`` positions (``decode_steps``)."""
    while True:
        with model.decoding():
            logits = model(ids[:, -context_len:])[:, -1]
            while model.decoded < context_len:
                next_id = yield logits
                ids = torch.cat([ids, next_id], dim=1)
                logits = model(next_id)[:, -1]
            next_id = yield logits  # the cache is full: the next step slides the window
            ids = torch.cat([ids, next_id], dim=1)


def _recomputed(model: nn.Module, ids: Tensor, context_len: int) -> Generator[Tensor, Tensor, None]:
    while True:
        window = ids[:, -context_len:]
        logits = model(nn.functional.pad(window, (0, context_len - window.shape[1])))
        if logits.dim() != 3 or logits.shape[:2] != (ids.shape[0], context_len):
            raise ValueError(
                f"generate needs a language model: logits (batch, {context_len}, vocab) for "
                f"ids (batch, {context_len}), got {tuple(logits.shape)}"
            )
        next_id = yield logits[:, window.shape[1] - 1]
        ids = torch.cat([ids, next_id], dim=1)


def _pick(
    logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> Tensor:
    """One id per row of ``logits`` ``(B, V)``: the argmax when greedy, else a draw."""
    if temperature == 0 or top_k == 1:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


def sample_texts(
    model: nn.Module,
    vocab: Vocabulary,
    context_len: int,
    settings: SampleSettings,
    seed: int,
) -> list[str]:
    """``settings.num_samples`` texts, each the prompt and its continuation; ``seed`` seeds the
    draws (on the model's device) and leaves the global random state alone."""
    device = next(model.parameters()).device
    try:
        prompt = torch.as_tensor(vocab.encode(settings.prompt), device=device)
    except ValueError as e:
        raise ValueError(f"prompt={settings.prompt!r}: {e}") from e
    ids = prompt.expand(settings.num_samples, -1)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = generate(model, ids, settings.max_new_tokens, context_len, settings.temperature,
                   settings.top_k, generator)  # fmt: skip
    return [vocab.decode(row.tolist()) for row in out.cpu()]


def format_samples(samples: Sequence[str]) -> str:
    """The samples as printed and saved: each followed by a line of dashes."""
    return "".join(f"{s}\n{SEPARATOR}\n" for s in samples)


def write_samples(
    model: nn.Module,
    vocab: Vocabulary,
    path: str | Path,
    context_len: int,
    settings: SampleSettings,
    seed: int,
) -> list[str]:
    """Sample as ``sample_texts`` does and write the texts to ``path``; returns them."""
    samples = sample_texts(model, vocab, context_len, settings, seed)
    atomic_write_text(path, format_samples(samples))
    return samples


def record_samples(
    model: Backbone, vocab: Vocabulary, path: str | Path, seed: int, loggers: Sequence[Any] = ()
) -> list[str]:
    """The end of an LM run: ``SampleSettings()`` samples seeded with the run's ``seed``, written
    to ``path`` (the run dir's ``samples.txt``) and logged as a text table on every W&B logger in
    ``loggers``."""
    from attnexp.training.tracking import publish_samples

    settings = SampleSettings()
    samples = write_samples(
        model, vocab, path, context_len_of(model), settings, seed
    )
    publish_samples(loggers, settings.prompt, samples)
    return samples


def sample_run(run_cfg: DictConfig, ckpt: str | Path, settings: SampleSettings,
               device: str = "cpu", say: Callable[[str], None] | None = None) -> list[str]:  # fmt: skip
    """Samples from the language model a run trained: its saved config ``run_cfg`` (resolved)
    rebuilds its data (for the vocabulary) and its network, which gets the weights in ``ckpt``.
    ``settings.seed`` None takes the run's seed. A classification run is refused. ``say`` gets
    how it decodes (``decoding_mode``)."""
    from hydra.utils import instantiate

    from attnexp.data.shape import CLASSIFICATION, LM
    from attnexp.models import build_model
    from attnexp.runs.checkpoint import load_checkpoint

    task = run_cfg.dataset.shape.get("task", CLASSIFICATION)  # runs from before LM: classifiers
    if task != LM:
        raise ValueError(
            f"ckpt_path={ckpt} is from a run with dataset.shape.task={task}: sampling needs a "
            f"language model (dataset.shape.task={LM}, e.g. experiment=shakespeare_char_cpu)"
        )
    try:
        target = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device must be a torch device such as cpu or cuda, got {device!r}") from e
    datamodule = instantiate(run_cfg.dataset)
    datamodule.load()
    if datamodule.vocab is None:
        raise ValueError(
            f"ckpt_path={ckpt}: the run's token files came without a tokenizer, so a prompt cannot "
            "be encoded nor samples decoded: put its tokenizer.json beside them or set "
            "dataset.source.tokenizer in the run's config"
        )
    model = build_model(run_cfg)
    model.load_state_dict(network_weights(load_checkpoint(ckpt), ckpt))
    seed = run_cfg.seed if settings.seed is None else settings.seed
    if say is not None:
        say(f"decoding {decoding_mode(model)}")
    return sample_texts(model.to(target), datamodule.vocab, context_len_of(model), settings, seed)


def decoding_mode(model: nn.Module) -> str:
    """How ``generate`` decodes ``model`` by default, in words (``decode_steps``)."""
    if not getattr(model, "decodable", False):
        return "by recomputing the last context_len tokens for each new token (a slot keeps no cache)"
    if model.continues:
        return "from each slot's state, on past the context at the same cost per token"
    return "from each slot's cache, started again over the last context_len tokens when full"


# The LightningModule holds the network as its attribute ``model``.
NETWORK_PREFIX = "model."


def network_weights(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Tensor]:
    """The network's state dict inside a Lightning checkpoint (keys without ``model.``)."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or not any(k.startswith(NETWORK_PREFIX) for k in state):
        raise ValueError(f"checkpoint {path} holds no network weights (state_dict with model.*)")
    return {k.removeprefix(NETWORK_PREFIX): v for k, v in state.items() if k.startswith(NETWORK_PREFIX)}  # fmt: skip


def context_len_of(model: Backbone) -> int:
    """The context length an LM backbone was built for: its 1-D grid."""
    (length,) = model.shape.grid
    return length


def _check_sampling(temperature: float, top_k: int | None) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not (
        math.isfinite(temperature) and temperature >= 0
    ):
        raise ValueError(f"temperature must be a number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None:
        check_int("top_k", top_k, 1, why=" or null (no limit)")

