"""Backbones as causal language models: logits at every position, none of which sees the future."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
import torch._dynamo
from torch import nn
from torch.nn import functional as F

from attnexp.attention import factory
from attnexp.attention.base import AttentionModule, Kind
from attnexp.config.attention import attention_config
from attnexp.config.validate import validate
from attnexp.data.shape import DataShape
from attnexp.models import build_model
from attnexp.models.cnn import CNN, CausalConv1d
from attnexp.models.transformer import Transformer
from tests.conftest import ATTENTIONS, BACKBONES, TINY, compose_cfg

L, V = 16, 25
LM = DataShape("tokens", [L], num_classes=V, vocab_size=V, task="lm")
CLASSES = DataShape("tokens", [L], num_classes=4, vocab_size=V)
BUILDERS = {"transformer": Transformer, "cnn": CNN}


# --- stand-ins: what a causal variant of each kind must do, and one that leaks -----------------


class StandIn(AttentionModule):
    weight_kinds = {}  # none returned

    def __init__(self, dim: int, grid_ndim: int = 1, causal: bool = False) -> None:
        super().__init__(dim, grid_ndim, causal)
        self.proj = nn.Linear(dim, dim)

    def flops(self, grid):
        return 0


class PrefixMeanMixer(StandIn):
    """Each position adds the mean of the positions up to it (causal) or of all (not)."""

    kind = Kind.MIXER

    def forward(self, x, return_weights=False):
        self.check_input(x)
        if self.causal:
            counts = torch.arange(1, x.shape[1] + 1, device=x.device).view(1, -1, 1)
            context = x.cumsum(1) / counts
        else:
            context = x.mean(1, keepdim=True).expand_as(x)
        y = self.proj(context)
        return (y, {}) if return_weights else y


class LeakyMixer(PrefixMeanMixer):
    """Says yes to ``causal`` and mixes all positions anyway: the tests must catch it."""

    def __init__(self, dim: int, grid_ndim: int = 1, causal: bool = False) -> None:
        super().__init__(dim, grid_ndim, causal=False)


class RunningMeanGate(StandIn):
    kind = Kind.GATE

    def forward(self, x, return_weights=False):
        self.check_input(x)
        counts = torch.arange(1, x.shape[1] + 1, device=x.device).view(1, -1, 1)
        y = x * torch.sigmoid(self.proj(x.cumsum(1) / counts))
        return (y, {}) if return_weights else y


class RefusingPool(StandIn):
    kind = Kind.POOL

    def __init__(self, dim: int, grid_ndim: int = 1, causal: bool = False) -> None:
        if causal:
            raise ValueError("causal=True is not supported by this pooling stand-in")
        super().__init__(dim, grid_ndim, causal)


class SilentPool(StandIn):
    """Accepts ``causal`` without refusing it: the backbone still has no place for it."""

    kind = Kind.POOL


def stand_in(backbone: str, cls: type, **kw) -> nn.Module:
    torch.manual_seed(0)
    return BUILDERS[backbone](functools.partial(cls), LM, dim=16, depth=2, **kw)


def lm_config(attention: str, backbone: str, *overrides: str):
    """The real configs of ``attention`` and ``backbone`` on a token task turned into an LM."""
    return compose_cfg(
        [
            f"attention={attention}",
            f"backbone={backbone}",
            "dataset=mqar",
            "++dataset.shape.task=lm",
            f"dataset.source.seq_len={L}",
            f"dataset.shape.vocab_size={V}",
            f"dataset.shape.num_classes={V}",
            *TINY,
            *overrides,
        ]
    )


# --- the causality check -------------------------------------------------------------------------


def assert_causal(model: nn.Module, cuts=(0, 5, L - 2)) -> None:
    """In training mode, changing the tokens after position t leaves the logits up to t unchanged,
    and does change some later logit (so the model reads the tokens it is tested on)."""
    model.train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (3, L), generator=gen)
    logits = model(x)
    assert logits.shape == (3, L, V)
    for t in cuts:
        changed = x.clone()
        changed[:, t + 1 :] = (x[:, t + 1 :] + torch.randint(1, V, (1,), generator=gen)) % V
        again = model(changed)
        torch.testing.assert_close(again[:, : t + 1], logits[:, : t + 1], atol=1e-6, rtol=0)
        assert not torch.allclose(again[:, t + 1 :], logits[:, t + 1 :], atol=1e-4), t


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("cls", [PrefixMeanMixer, RunningMeanGate])
def test_a_causal_stand_in_makes_a_causal_model(backbone, cls):
    model = stand_in(backbone, cls)
    assert len(list(model.slots())) == 2
    assert all(slot.module.causal for _, slot in model.slots())
    assert_causal(model)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_check_catches_a_slot_that_sees_the_future(backbone):
    with pytest.raises(AssertionError):
        assert_causal(stand_in(backbone, LeakyMixer))


def test_batch_norm_in_training_would_leak_the_future():
    """Why the cnn uses a per-position norm: a batch mean over time carries later tokens back."""
    model = stand_in("cnn", PrefixMeanMixer)
    model.stem[1] = nn.BatchNorm1d(16)
    with pytest.raises(AssertionError):
        assert_causal(model)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_pool_is_refused_with_its_own_message(backbone):
    with pytest.raises(ValueError, match="not supported by this pooling stand-in"):
        stand_in(backbone, RefusingPool)
    with pytest.raises(ValueError, match="causal=True: SilentPool pools the sequence"):
        stand_in(backbone, SilentPool)


# --- every variant of conf/attention in both backbones -------------------------------------------


@pytest.mark.parametrize(
    "attention,backbone",
    [c for c in itertools.product(ATTENTIONS, BACKBONES) if c[0] != "pool"],
)
def test_every_variant_is_causal_in_both_backbones(attention, backbone):
    cfg = lm_config(attention, backbone)
    assert cfg.attention.get("attn_drop", 0) == cfg.attention.get("proj_drop", 0) == 0
    torch.manual_seed(0)
    assert_causal(build_model(cfg))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_pool_is_refused_before_training_with_the_modules_message(backbone):
    with pytest.raises(ValueError, match="causal") as own:
        factory(attention_config("pool"))(dim=16, grid_ndim=1, causal=True)
    with pytest.raises(ValueError, match="bad model config") as refused:
        validate(lm_config("pool", backbone))
    assert str(own.value) in str(refused.value)


# --- what each backbone is in LM mode -------------------------------------------------------------


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_prompt_shorter_than_the_context_reads_as_the_same_prefix(backbone):
    model = stand_in(backbone, PrefixMeanMixer).eval()
    x = torch.randint(0, V, (2, L))
    torch.testing.assert_close(model(x[:, :5]), model(x)[:, :5], atol=1e-6, rtol=0)
    longer = torch.randint(0, V, (2, L + 1))
    if backbone == "transformer":  # learned positions: no row past the context
        with pytest.raises(ValueError, match=f"context length {L}"):
            model(longer)
    else:  # a causal convolution reads any length (an evaluation at a longer context)
        torch.testing.assert_close(model(longer)[:, :L], model(longer[:, :L]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_tied_weights_share_the_embeddings_storage(backbone):
    tied = stand_in(backbone, PrefixMeanMixer, tie_weights=True)
    head, embed = tied.readout.head.weight, tied.embed.embed.weight
    assert head is embed and head.data_ptr() == embed.data_ptr()
    untied = stand_in(backbone, PrefixMeanMixer)
    assert untied.readout.head.weight.data_ptr() != untied.embed.embed.weight.data_ptr()
    count = sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters())
    assert count == V * 16
    tied(torch.randint(0, V, (2, L))).sum().backward()
    assert embed.grad is not None and torch.count_nonzero(embed.grad) > 0


def test_the_cnn_in_lm_mode_has_no_batch_norm_and_sees_exactly_its_receptive_field():
    model = stand_in("cnn", RunningMeanGate)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    # no slot: only the convs reach back, k - 1 positions each (stem + 2 per block)
    plain = CNN(factory(attention_config("none")), LM, dim=16, depth=2, kernel_size=3)
    reach = (3 - 1) * (1 + 2 * 2)
    x = torch.randint(0, V, (1, L))
    t = L - 1
    for position, moves in [(t - reach, True), (t - reach - 1, False)]:
        changed = x.clone()
        changed[0, position] = (x[0, position] + 1) % V
        moved = not torch.allclose(plain(changed)[0, t], plain(x)[0, t], atol=1e-6)
        assert moved is moves, position


def test_a_causal_conv_sums_the_current_and_previous_positions():
    conv = CausalConv1d(1, 1, 3, bias=False)
    nn.init.ones_(conv.weight)
    x = torch.arange(1.0, 6.0).view(1, 1, 5)
    assert conv(x).flatten().tolist() == [1.0, 3.0, 6.0, 9.0, 12.0]


def test_positions_none_leaves_order_to_the_attention():
    model = stand_in("transformer", PrefixMeanMixer, positions="none")
    assert model.pos is None
    assert "pos" not in dict(model.named_parameters())
    assert_causal(model)


def test_gpt_init_starts_at_the_uniform_loss_with_tied_weights():
    """PyTorch's N(0, 1) embedding as a tied head starts far above ln V; nanoGPT's init near it."""
    depth, dim = 4, 128

    def tied(init):
        torch.manual_seed(0)
        mixer = functools.partial(PrefixMeanMixer)
        return Transformer(mixer, LM, dim=dim, depth=depth, tie_weights=True, init=init)

    model = tied("gpt")
    residual = 0.02 / math.sqrt(2 * depth)
    for block in model.blocks:
        for layer in block.residual_projections():
            assert layer.weight.std().item() == pytest.approx(residual, rel=0.05)
            assert not layer.bias.any()
    assert model.embed.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)
    x, next_tokens = torch.randint(0, V, (2, 8, L))

    def loss(m):
        return F.cross_entropy(m(x).flatten(0, 1), next_tokens.flatten()).item()

    assert loss(model) == pytest.approx(math.log(V), abs=0.1)
    assert loss(tied("default")) > math.log(V) + 1


@pytest.mark.parametrize(
    "build,kw,message",
    [
        (Transformer, {"positions": "rope"}, r"backbone\.positions must be one of learned, none"),
        (Transformer, {"init": "xavier"}, r"backbone\.init must be one of default, gpt"),
        (CNN, {"init": "xavier"}, r"backbone\.init must be one of default, gpt"),
        (Transformer, {"tie_weights": "yes"}, r"backbone\.tie_weights must be true or false"),
    ],
)
def test_bad_lm_keys_are_refused_with_the_key_named(build, kw, message):
    with pytest.raises(ValueError, match=message):
        build(functools.partial(PrefixMeanMixer), LM, dim=16, **kw)


@pytest.mark.parametrize("build", [Transformer, CNN])
def test_tied_weights_are_refused_for_classification(build):
    with pytest.raises(ValueError, match=r"tie_weights=true .* needs dataset\.shape\.task=lm"):
        build(functools.partial(PrefixMeanMixer), CLASSES, dim=16, tie_weights=True)


def test_patches_are_refused_for_a_language_model():
    with pytest.raises(ValueError, match=r"backbone\.patch_size must be 1 for task=lm"):
        Transformer(functools.partial(PrefixMeanMixer), LM, dim=16, patch_size=2)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_an_lm_compiles_as_one_graph(backbone):
    """``compile=true`` for a language model: the context check and the head break no graph."""
    torch._dynamo.reset()
    model = stand_in(backbone, PrefixMeanMixer, tie_weights=True).eval()
    x = torch.randint(0, V, (2, L))
    expected = model(x)
    model.compile(fullgraph=True, backend="eager")
    torch.testing.assert_close(model(x), expected)
