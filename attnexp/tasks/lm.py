"""The causal language-modelling task: next-token cross-entropy at every position.

Batches are ``(x, y)``: token ids ``(B, L)`` and the next token at each position, or
``IGNORE_INDEX`` where a position is not scored (the padding of a last, short evaluation window;
MQAR's non-query positions). The model returns per-position logits ``(B, L, V)``; training and
evaluation compute them at the scored positions only (``scored_logits``): the same numbers, for a
fraction of the head's cost where few positions are scored (MQAR: ~4 of 64, at vocabulary 8192).

Validation and test metrics are exact over the whole split: sums of token losses and of correct
tokens divided by the number of scored tokens (never a mean of batch means, which would weight a
short last window like a full one). ``loss`` is nats per token, ``bpt`` = loss / ln 2 (bits per
token), ``ppl`` = e^loss, ``acc`` the next-token accuracy. Where the vocabulary says how many
UTF-8 bytes each id stands for (characters, bytes, a byte-level BPE), ``bpb`` is bits per byte: the
summed loss over ln 2, divided by the scored tokens' bytes, so runs with different tokenizers
compare; with a character vocabulary ``bpc`` (bits per character) is ``bpt`` under its own name.
Where no byte count exists (token files without a tokenizer, MQAR) ``bpb`` is not logged: null in
the record, never guessed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric, Metric, MinMetric

from attnexp.data.shape import IGNORE_INDEX
from attnexp.tasks.losses import next_token_loss
from attnexp.tasks.module import TrainingModule

VAL_METRIC = "val/loss"  # its best is val/loss_best; the progress bar shows it


class TokenMetrics(Metric):
    """Summed loss, correct predictions, scored tokens and their bytes; ``compute`` gives
    ``loss``, ``bpt``, ``ppl``, ``acc`` and, with ``byte_lengths`` (the UTF-8 bytes of each id),
    ``bpb``; with ``per_character``, ``bpc`` (the keys ``attnexp.tasks.spec.language_modelling``
    declares; tests/test_lm_task.py checks that they agree), and ``tokens``, the count."""

    full_state_update = False

    def __init__(self, byte_lengths: Tensor | None = None, per_character: bool = False) -> None:
        super().__init__()
        for name in ("loss_sum", "correct", "tokens", "bytes"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        # A buffer: it moves with the metric to the model's device once, not every batch.
        self.register_buffer("byte_lengths", byte_lengths, persistent=False)
        self.per_character = per_character

    def update(self, logits: Tensor, y: Tensor) -> None:
        logits, y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
        scored = y != IGNORE_INDEX
        loss = F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX, reduction="sum")
        self.loss_sum += loss.double()
        self.correct += ((logits.argmax(-1) == y) & scored).sum()
        self.tokens += scored.sum()
        if self.byte_lengths is not None:
            self.bytes += self.byte_lengths[y[scored]].sum()

    def compute(self) -> dict[str, Tensor]:
        loss = self.loss_sum / self.tokens
        bits = loss / math.log(2)
        out = {
            "loss": loss.float(),
            "bpt": bits.float(),
            "ppl": loss.exp().float(),
            "acc": (self.correct / self.tokens).float(),
            "tokens": self.tokens,
        }
        if self.byte_lengths is not None:
            out["bpb"] = (self.loss_sum / math.log(2) / self.bytes).float()
        if self.per_character:
            out["bpc"] = bits.float()
        return out


def scored_logits(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Logits ``(N, V)`` and labels ``(N,)`` of the ``N`` scored positions of a batch: the head
    (``model.readout``) reads only the hidden states ``model.features(x)`` that carry a label.
    ``model(x)`` at those positions, without the head's cost elsewhere."""
    keep = y != IGNORE_INDEX
    return model.readout(model.features(x)[keep]), y[keep]


class LanguageModel(TrainingModule):
    """Next-token prediction at every scored position of ``model`` (a backbone: ``features`` and
    ``readout``, with ``model(x) == model.readout(model.features(x))``); logs ``train/loss``, per stage ``loss``, ``bpt``
    (and ``bpb``, ``bpc`` where the vocabulary gives their unit), ``ppl``, ``acc``, ``val/loss_best`` and ``val/acc_best`` (Zoology picks by accuracy). ``scored_tokens[stage]`` holds the number of tokens
    the last validation or test scored (for the held-out loss over both splits)."""

    def __init__(self, *args: Any, vocab: Any = None, **kwargs: Any) -> None:
        """``vocab``: the data's (``attnexp.data.vocab.Vocabulary``,
        ``attnexp.data.tokenizer.Tokenizer`` or None): its ``byte_lengths`` give bits per byte, its
        ``per_character`` bits per character.
        The rest are ``TrainingModule``'s arguments."""
        super().__init__(*args, **kwargs)
        lengths = getattr(vocab, "byte_lengths", None)
        units = {
            "byte_lengths": None if lengths is None else torch.as_tensor(lengths),
            "per_character": bool(getattr(vocab, "per_character", False)),
        }
        self.token_metrics = nn.ModuleDict({s: TokenMetrics(**units) for s in ("val", "test")})
        self.val_loss_best = MinMetric()
        self.val_acc_best = MaxMetric()
        for best in (self.val_loss_best, self.val_acc_best):
            best.persistent(True)  # in checkpoints: a resumed run keeps its best so far
        self.scored_tokens: dict[str, int] = {}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = next_token_loss(*scored_logits(self.model, *batch))
        self.log_train_loss(loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.token_metrics["val"].update(*scored_logits(self.model, *batch))

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.token_metrics["test"].update(*scored_logits(self.model, *batch))

    def on_validation_epoch_end(self) -> None:
        values = self._log_stage("val")
        if not self.trainer.sanity_checking:  # the sanity check's untrained score is no "best"
            self.val_loss_best.update(values[VAL_METRIC])
            self.val_acc_best.update(values["val/acc"])
            self.log("val/loss_best", self.val_loss_best.compute(), sync_dist=True)
            self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._log_stage("test")

    def _log_stage(self, stage: str) -> dict[str, Tensor]:
        metric = self.token_metrics[stage]
        computed = metric.compute()
        metric.reset()
        self.scored_tokens[stage] = int(computed.pop("tokens"))
        values = {f"{stage}/{name}": value for name, value in computed.items()}
        self.log_stage(values, VAL_METRIC)
        return values


def heldout_loss(losses: dict[str, float], tokens: dict[str, int]) -> float:
    """The loss over the val and test splits together, as if one split: the token-weighted mean
    (L_val n_val + L_test n_test) / (n_val + n_test). nanoGPT's "val loss" is over its whole
    held-out 10%, which this project halves into val and test."""
    n = tokens["val"] + tokens["test"]
    return (losses["val"] * tokens["val"] + losses["test"] * tokens["test"]) / n
