"""Padding masks: appended padding, whatever fills it, never changes a real position's output or
the pooled output, in every variant of conf/attention, both backbones and the readouts."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from torch import nn

from attnexp.attention import factory
from attnexp.attention.base import Kind
from attnexp.attention.masking import MaskedBatchNorm
from attnexp.config.attention import attention_config, create, variant_kind
from attnexp.config.validate import validate
from attnexp.models import build_model
from tests.conftest import ATTENTIONS, BACKBONES, TINY, compose_cfg
from tests.test_lm_models import L as LM_CONTEXT
from tests.test_lm_models import V as LM_VOCAB
from tests.test_lm_models import lm_config

PAD = 0  # the pad id of the token data below
VOCAB = 25  # mqar's
REAL = 7  # real positions per sample
GRID = 32  # the data's grid: room for 17 padded positions and a CLS token
EXTRA = (1, 3, 17)  # padded positions appended
DIM = 8
SMALL = [o for o in TINY if not o.startswith("backbone.depth")] + ["backbone.depth=2"]


def assert_same(actual, expected):
    """Equal to 1e-5, or to 1e-9 of the value: the models run in float64, where a leak shows far
    above 1e-9, and a cubic gate (hyena's) with perturbed weights reaches 1e11 in eval mode."""
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-9)


def perturb(model: nn.Module) -> nn.Module:
    """Every parameter moved off its init (zero-initialised layers such as node's last Linear
    would hide a leak), in float64 and eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.double().eval()


@functools.cache
def token_model(attention: str, backbone: str, *overrides: str) -> nn.Module:
    """The real configs of ``attention`` and ``backbone`` on mqar's token data with a pad id."""
    cfg = compose_cfg(
        [
            f"attention={attention}",
            f"backbone={backbone}",
            "dataset=mqar",
            f"dataset.source.seq_len={GRID}",
            f"++dataset.shape.pad_index={PAD}",
            *SMALL,
            *overrides,
        ]
    )
    return perturb(build_model(cfg))


def real_tokens(batch: int = 3, length: int = REAL) -> torch.Tensor:
    return torch.randint(PAD + 1, VOCAB, (batch, length))  # never the pad id


def trailing_mask(batch: int, real: int, extra: int) -> torch.Tensor:
    mask = torch.ones(batch, real + extra, dtype=torch.bool)
    mask[:, real:] = False
    return mask


# --- backbones: every yaml of conf/attention x both backbones ------------------------------------


@pytest.mark.parametrize("attention,backbone", itertools.product(ATTENTIONS, BACKBONES))
def test_appended_padding_leaves_real_features_and_logits_unchanged(attention, backbone):
    model = token_model(attention, backbone)
    torch.manual_seed(1)
    x = real_tokens()
    features, logits = model.features(x), model(x)
    for extra in EXTRA:
        # Padded with the pad id: the backbone derives the mask itself.
        padded = torch.cat([x, torch.full((3, extra), PAD)], dim=1)
        assert_same(model.features(padded)[:, :REAL], features)
        assert_same(model(padded), logits)
        # Padded with random ids, the mask given.
        noisy = torch.cat([x, torch.randint(0, VOCAB, (3, extra))], dim=1)
        mask = trailing_mask(3, REAL, extra)
        assert_same(model.features(noisy, mask)[:, :REAL], features)
        assert_same(model(noisy, mask), logits)
        # The mask is what keeps them equal: read as all real, the padding changes the logits.
        assert not torch.allclose(model(noisy, torch.ones_like(mask)), logits, atol=1e-4)


@pytest.mark.parametrize("attention,backbone", itertools.product(ATTENTIONS, BACKBONES))
def test_a_fully_padded_sample_gives_finite_logits(attention, backbone):
    model = token_model(attention, backbone)
    x = real_tokens()
    x[1] = PAD
    logits = model(x)
    assert torch.isfinite(logits).all()
    assert_same(logits[[0, 2]], model(x[[0, 2]]))  # its batch-mates are unaffected


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_cnn_and_transformer_in_training_mode_ignore_padding(backbone):
    """Training mode: the CNN's BatchNorm takes its batch statistics over real positions only."""
    model = token_model("se", backbone).train()
    try:
        x = real_tokens(4)
        logits = model(x)
        padded = torch.cat([x, torch.randint(0, VOCAB, (4, 5))], dim=1)
        assert_same(model(padded, trailing_mask(4, REAL, 5)), logits)
    finally:
        model.eval()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_bad_mask_is_refused_by_the_backbone(backbone):
    model = token_model("mha", backbone)
    x = real_tokens()
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(B, \*grid\)"):
        model(x, torch.ones(3, REAL + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="got torch.int64"):
        model(x, torch.ones(3, REAL, dtype=torch.long))


# --- modules: every yaml of conf/attention, on sequences and images ------------------------------


def module(name: str, grid_ndim: int = 1, **knobs) -> nn.Module:
    return perturb(create(name, DIM, grid_ndim, **knobs))


def mixed_batch(grid_ndim: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[slice, ...]]]:
    """Three samples of mixed sizes in one batch with random float values at padding: the
    input, its mask and each sample's real region (trailing positions; on images trailing
    columns, rows or both)."""
    torch.manual_seed(2)
    if grid_ndim == 1:
        regions = [(slice(0, 10),), (slice(0, 6),), (slice(0, 3),)]
        grid = (10,)
    else:
        regions = [
            (slice(0, 4), slice(0, 5)),
            (slice(0, 4), slice(0, 3)),
            (slice(0, 3), slice(0, 3)),
        ]
        grid = (4, 5)
    x = 5 * torch.randn(3, *grid, DIM, dtype=torch.double)
    mask = torch.zeros(3, *grid, dtype=torch.bool)
    for i, region in enumerate(regions):
        mask[(i, *region)] = True
    return x, mask, regions


def assert_each_sample_as_if_alone(m: nn.Module, grid_ndim: int) -> None:
    x, mask, regions = mixed_batch(grid_ndim)
    y = m(x, mask=mask)
    for i, region in enumerate(regions):
        alone = m(x[(slice(i, i + 1), *region)])[0]
        assert_same(y[i] if y.dim() == 2 else y[(i, *region)], alone)


@pytest.mark.parametrize("grid_ndim", [1, 2])
@pytest.mark.parametrize("name", ATTENTIONS)
def test_every_variant_reads_each_sample_of_a_mixed_batch_as_if_alone(name, grid_ndim):
    m = module(name, grid_ndim)
    assert_each_sample_as_if_alone(m, grid_ndim)
    x, mask, _ = mixed_batch(grid_ndim)
    assert_same(m(x, mask=torch.ones_like(mask)), m(x))  # an all-real mask changes nothing


MHA_KNOBS = [
    {"window": 2},
    {"window": 1, "global_tokens": 2},
    {"kv_stride": 2},
    {"qk_conv": 3, "qk_conv_target": "qk"},
    {"qk_conv": 3, "qk_conv_padding": "valid"},
    {"rope": True},
    {"score": "cosine", "normalize": "sigmoid"},
    {"score": "l2", "normalize": "max"},
    {"score": "pearson"},
    {"score": "additive", "normalize": "sigmoid"},
]


@pytest.mark.parametrize(
    "knobs", MHA_KNOBS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items())
)
def test_every_attention_design_knob_honours_the_mask_on_sequences(knobs):
    assert_each_sample_as_if_alone(module("mha", **knobs), grid_ndim=1)
    assert_each_sample_as_if_alone(module("muse", **knobs), grid_ndim=1)


@pytest.mark.parametrize("knobs", [{"qk_conv": 3, "qk_conv_padding": "valid"}, {"window": 1}])
def test_images_with_padded_rows_and_columns_under_grid_knobs(knobs):
    assert_each_sample_as_if_alone(module("mha", 2, **knobs), grid_ndim=2)


@pytest.mark.parametrize("name", ATTENTIONS)
def test_a_fully_padded_sample_gives_no_nan_forward_or_backward(name):
    m = module(name).train()
    x = torch.randn(2, 6, DIM, dtype=torch.double, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1] = False
    y = m(x, mask=mask)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


CAUSAL = [a for a in ATTENTIONS if variant_kind(a) is not Kind.POOL]


@pytest.mark.parametrize("name", CAUSAL)
def test_a_causal_variant_ignores_padding_before_real_positions(name):
    """Leading padding (which a causal module sees before the real positions) leaves its real
    positions as the unpadded sequence gives them: the causal convs read zeros there, as at their
    left border."""
    m = perturb(factory(attention_config(name))(dim=DIM, grid_ndim=1, causal=True))
    torch.manual_seed(3)
    x = torch.randn(1, 8, DIM, dtype=torch.double)
    keep = torch.arange(8) >= 3
    y = m(x, mask=keep[None])
    assert torch.isfinite(y).all()
    assert_same(y[0, keep], m(x[:, keep])[0])


@pytest.mark.parametrize("name", ATTENTIONS)
def test_a_bad_mask_is_refused_by_every_variant(name):
    m = create(name, DIM)
    x = torch.randn(2, 6, DIM)
    with pytest.raises(ValueError, match=r"shape \(B, \*grid\) = \(2, 6\), True at real"):
        m(x, mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="got torch.float32"):
        m(x, mask=torch.ones(2, 6))


# --- the CNN's masked BatchNorm ------------------------------------------------------------------


def batch_norm_pair(channels: int = 4) -> tuple[MaskedBatchNorm, nn.BatchNorm1d]:
    torch.manual_seed(4)
    masked, plain = MaskedBatchNorm(channels).double(), nn.BatchNorm1d(channels).double()
    with torch.no_grad():
        masked.weight.normal_(), masked.bias.normal_()
    plain.load_state_dict(masked.state_dict())  # the same keys
    return masked, plain


def test_masked_batch_norm_in_training_is_batch_norm_over_the_real_positions():
    masked, plain = batch_norm_pair()
    lengths = [9, 4, 6]
    x = 3 * torch.randn(3, 4, 9, dtype=torch.double) + 1
    mask = torch.arange(9) < torch.tensor(lengths)[:, None]
    for _ in range(2):  # the running statistics follow too
        y = masked(x, mask)
        # BatchNorm on the real positions alone, laid side by side as one sample.
        real = torch.cat([x[i, :, :n] for i, n in enumerate(lengths)], dim=-1)
        expected = plain(real[None])[0]
        assert_same(torch.cat([y[i, :, :n] for i, n in enumerate(lengths)], dim=-1), expected)
    for key, value in plain.state_dict().items():
        assert_same(masked.state_dict()[key], value)


def test_masked_batch_norm_with_an_all_real_mask_or_none_is_batch_norm():
    masked, plain = batch_norm_pair()
    x = torch.randn(2, 4, 5, 5, dtype=torch.double)  # an image grid too
    plain = nn.BatchNorm2d(4).double()
    plain.load_state_dict(masked.state_dict())
    assert_same(masked(x, torch.ones(2, 5, 5, dtype=torch.bool)), plain(x))
    assert_same(masked(x), plain(x))
    assert_same(masked.running_var, plain.running_var)
    masked.eval(), plain.eval()
    assert_same(masked(x, torch.zeros(2, 5, 5, dtype=torch.bool)), plain(x))  # eval: per element


# --- language models -----------------------------------------------------------------------------


@pytest.mark.parametrize("attention,backbone", itertools.product(CAUSAL, BACKBONES))
def test_a_causal_lm_is_unaffected_by_trailing_padding(attention, backbone):
    model = perturb(build_model(lm_config(attention, backbone)))
    torch.manual_seed(5)
    x = torch.randint(0, LM_VOCAB, (2, LM_CONTEXT - 5))
    padded = torch.cat([x, torch.randint(0, LM_VOCAB, (2, 5))], dim=1)
    mask = trailing_mask(2, x.shape[1], 5)
    logits = model(padded, mask)
    assert_same(logits[:, : x.shape[1]], model(x))
    assert_same(model.features(padded, mask)[:, : x.shape[1]], model.features(x))


# --- the transformer's CLS readout ---------------------------------------------------------------


def test_cls_adds_one_token_and_one_position_and_reads_the_head_from_it():
    mean, cls = (
        token_model("mha", "transformer"),
        token_model("mha", "transformer", "backbone.readout=cls"),
    )
    dim = mean.readout.head.in_features
    assert cls.trainable_params() == mean.trainable_params() + 2 * dim  # the token, its position
    x = real_tokens()
    features = cls.features(x)
    assert features.shape[1] == REAL + 1
    assert_same(cls(x), cls.readout.head(features[:, 0]))


def test_cls_logits_ignore_appended_padding():
    model = token_model("muse", "transformer", "backbone.readout=cls")
    x = real_tokens()
    for extra in EXTRA:
        noisy = torch.cat([x, torch.randint(0, VOCAB, (3, extra))], dim=1)
        assert_same(model(noisy, trailing_mask(3, REAL, extra)), model(x))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["attention=pool", "backbone=transformer", "dataset=mqar"],
            "POOL attention is the readout",
        ),
        (["attention=mha", "backbone=transformer", "dataset=digits"], "needs a 1-D grid"),
    ],
)
def test_cls_is_refused_where_it_means_nothing(overrides, message):
    cfg = compose_cfg([*overrides, *TINY, "backbone.readout=cls"])
    with pytest.raises(ValueError, match=rf"backbone\.readout=cls .*{message}"):
        validate(cfg)


def test_cls_is_refused_for_a_language_model_and_a_bad_readout_by_name():
    with pytest.raises(ValueError, match=r"backbone\.readout=cls .* task=lm"):
        validate(lm_config("mha", "transformer", "backbone.readout=cls"))
    with pytest.raises(ValueError, match=r"backbone\.readout must be one of mean, cls, got 'max'"):
        validate(lm_config("mha", "transformer", "backbone.readout=max"))
