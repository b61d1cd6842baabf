"""A language model scores only the labelled positions: the head reads ``features`` where ``y`` is
not IGNORE_INDEX. The loss, the metrics and every gradient equal those of the full ``(B, L, V)``
logits, whether every position is scored (text) or a few (MQAR's queries, a padded last window)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from attnexp.data.shape import IGNORE_INDEX
from attnexp.models import build_model
from attnexp.tasks.lm import LanguageModel, TokenMetrics, scored_logits
from attnexp.tasks.losses import next_token_loss as lm_loss
from tests.conftest import BACKBONES
from tests.test_lm_models import L, V, lm_config

TEXT = "itwasthebestoftimesitwastheworstoftimesitwastheageofwisdom"  # letters a..y: V = 25


def text_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of a text: every position scored with the next letter."""
    ids = torch.tensor([ord(c) - ord("a") for c in TEXT])
    assert int(ids.max()) < V
    starts = range(0, 3 * 5, 5)
    x = torch.stack([ids[s : s + L] for s in starts])
    y = torch.stack([ids[s + 1 : s + L + 1] for s in starts])
    return x, y


def sparse_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """MQAR-like: a label at three positions of a row, and a last window padded after 5 tokens."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (3, L), generator=gen)
    y = torch.full_like(x, IGNORE_INDEX)
    y[:2, [4, 9, L - 1]] = torch.randint(0, V, (2, 3), generator=gen)
    y[2, :5] = torch.randint(0, V, (5,), generator=gen)
    x[2, 5:] = 0
    return x, y


BATCHES = {"text": text_batch, "sparse": sparse_batch}


def module_and_batch(backbone: str, batch: str) -> tuple[LanguageModel, tuple]:
    torch.manual_seed(0)
    model = build_model(lm_config("mha", backbone))
    return LanguageModel(model, optimizer=torch.optim.AdamW), BATCHES[batch]()


def loss_and_grads(module: LanguageModel, compute) -> tuple[torch.Tensor, list[torch.Tensor]]:
    module.zero_grad()
    loss = compute()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("backbone", BACKBONES)
def test_training_loss_and_every_gradient_equal_the_full_logits(backbone, batch, monkeypatch):
    module, (x, y) = module_and_batch(backbone, batch)
    module.train()
    monkeypatch.setattr(module, "log_train_loss", lambda loss: None)  # no Trainer here
    rows = []
    hook = module.model.readout.register_forward_hook(lambda m, i, o: rows.append(i[0].shape))
    loss, grads = loss_and_grads(module, lambda: module.training_step((x, y), 0))
    hook.remove()
    assert rows == [(int((y != IGNORE_INDEX).sum()), module.model.readout.head.in_features)]
    full, full_grads = loss_and_grads(module, lambda: lm_loss(module(x), y))

    assert torch.isfinite(loss) and loss > 0
    torch.testing.assert_close(loss, full, rtol=1e-6, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads)
    for (name, _), g, expected in zip(module.named_parameters(), grads, full_grads, strict=True):
        torch.testing.assert_close(g, expected, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize(("stage", "step"), [("val", "validation_step"), ("test", "test_step")])
def test_stage_metrics_equal_the_full_logits(backbone, batch, stage, step):
    module, (x, y) = module_and_batch(backbone, batch)
    module.eval()
    full = TokenMetrics()
    with torch.no_grad():
        getattr(module, step)((x, y), 0)
        full.update(module(x), y)
    scored, expected = module.token_metrics[stage].compute(), full.compute()
    assert int(scored["tokens"]) == int((y != IGNORE_INDEX).sum())
    for name, value in expected.items():
        torch.testing.assert_close(scored[name], value, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_forward_is_the_readout_of_the_features(backbone):
    """What sampling and figures call, ``model(x)``, is the head over every position of
    ``features``: the scored path changes no logit it computes."""
    torch.manual_seed(0)
    model = build_model(lm_config("mha", backbone)).eval()
    x, _ = text_batch()
    h = model.features(x)
    assert h.shape == (3, L, model.readout.head.in_features)
    torch.testing.assert_close(model(x), model.readout(h))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_compile_covers_features_and_the_scored_step_matches_eager(backbone):
    """``compile=true`` compiles ``features`` as one graph (the steps call it, not ``forward``);
    the scored rows, whose number varies per batch, are picked outside the graph."""
    module, (x, y) = module_and_batch(backbone, "sparse")
    expected = lm_loss(module(x), y)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    module.model.compile(fullgraph=True, backend="eager")
    loss = lm_loss(*scored_logits(module.model, x, y))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(module.model(x), module.model.readout(module.model.features(x)))
