"""Causal ``mha`` and ``muse``: the output at position t depends on inputs <= t only, under every
design knob, on the fused and the explicit path; the masks, convs and rotary positions that make
it so, each checked against an independent computation."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from attnexp.attention import AttentionModule, factory
from attnexp.attention.causal import causal_conv1d
from attnexp.attention.design import (
    NORMALIZATIONS,
    SCORES,
    AttentionCore,
    AttentionDesign,
    GridDepthwiseConv,
    attend,
    causal_mask,
    kv_positions,
    normalize_scores,
    rotary,
)
from attnexp.config.attention import attention_config

DIM, LENGTH, HEADS = 16, 12, 2
CUTS = [0, 4, 10]  # the last position kept: the inputs after it change
# Every knob under the causal mask (the list); the empty design is the fused default.
KNOBS = {
    "default": {},
    "window": {"window": 2},
    "window+global": {"window": 2, "global_tokens": 2},
    "global": {"window": 0, "global_tokens": 3},
    "kv_stride": {"kv_stride": 2},
    "kv_random": {"kv_stride": 3, "kv_select": "random"},
    "qk_conv_k": {"qk_conv": 3},
    "qk_conv_q": {"qk_conv": 3, "qk_conv_target": "q"},
    "qk_conv_qk": {"qk_conv": 5, "qk_conv_target": "qk"},
    "rope": {"rope": True},
    "rope+window+qk_conv": {"rope": True, "window": 3, "qk_conv": 3},
    "rope+kv_stride": {"rope": True, "kv_stride": 2},
    **{
        f"{score}-{normalize}": {"score": score, "normalize": normalize}
        for score in SCORES
        for normalize in NORMALIZATIONS
    },
    "cosine-max-window": {"score": "cosine", "normalize": "max", "window": 1, "global_tokens": 1},
    "l2-sigmoid-kv_stride": {"score": "l2", "normalize": "sigmoid", "kv_stride": 3},
}


@functools.cache
def yaml(name: str):
    """The variant's config, composed once (composing costs more than the forward passes)."""
    return attention_config(name)


def build(name: str, grid_ndim: int = 1, **knobs) -> AttentionModule:
    """What a language model's backbone does: the variant's partial, called with ``causal=True``;
    every parameter perturbed so identity-initialised convs are not trivially causal."""
    torch.manual_seed(0)
    node = OmegaConf.merge(yaml(name), {"num_heads": HEADS, **knobs})
    module = factory(node)(dim=DIM, grid_ndim=grid_ndim, causal=True)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


def run(module: AttentionModule, x: torch.Tensor, explicit: bool, seed: int = 1) -> torch.Tensor:
    """One forward, the fused path or the explicit one; the seed fixes a random key subset."""
    torch.manual_seed(seed)
    return module(x, return_weights=True)[0] if explicit else module(x)


def inputs(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, LENGTH, DIM, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the causal property


@pytest.mark.parametrize("explicit", [False, True], ids=["fused", "explicit"])
@pytest.mark.parametrize("knobs", KNOBS.values(), ids=KNOBS.keys())
@pytest.mark.parametrize("name", ["mha", "muse"])
def test_changing_the_future_leaves_the_past_unchanged(name, knobs, explicit):
    module = build(name, **knobs).train()  # training mode: dropout is 0, random keys per sample
    x = inputs()
    y = run(module, x, explicit)
    assert torch.isfinite(y).all()
    for t in CUTS:
        changed = x.clone()
        changed[:, t + 1 :] = torch.randn_like(changed[:, t + 1 :])
        torch.testing.assert_close(
            run(module, changed, explicit)[:, : t + 1], y[:, : t + 1], atol=1e-6, rtol=0
        )
        # The test can fail: the positions after t do see the change.
        assert not torch.allclose(run(module, changed, explicit)[:, t + 1 :], y[:, t + 1 :])


@pytest.mark.parametrize("knobs", KNOBS.values(), ids=KNOBS.keys())
def test_non_causal_attention_sees_the_future(knobs):
    """The property above is not vacuous: without ``causal`` position 0 sees later ones."""
    torch.manual_seed(0)
    node = OmegaConf.merge(yaml("mha"), {"num_heads": HEADS, **knobs})
    module = factory(node)(dim=DIM, grid_ndim=1).eval()
    x = inputs()
    changed = x.clone()
    changed[:, 1:] += 1.0
    torch.manual_seed(1)
    y = module(x)
    torch.manual_seed(1)
    assert not torch.allclose(module(changed)[:, 0], y[:, 0])


@pytest.mark.parametrize("knobs", KNOBS.values(), ids=KNOBS.keys())
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_under_the_causal_mask_the_fused_path_equals_the_explicit_one(knobs, mode):
    module = build("muse", **knobs).train(mode == "train")
    x = inputs()
    torch.testing.assert_close(run(module, x, False), run(module, x, True), atol=1e-5, rtol=1e-5)


def test_default_causal_attention_runs_the_fused_kernel_with_is_causal(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append((kwargs.get("attn_mask"), kwargs.get("is_causal")))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    build("mha").train()(inputs())
    assert calls == [(None, True)]  # no mask tensor: the kernel's own causal path
    calls.clear()
    build("mha", window=2).train()(inputs())
    ((mask, is_causal),) = calls
    assert not is_causal and mask.dtype == torch.bool
    assert torch.equal(mask, torch.ones(LENGTH, LENGTH).tril().triu(-2).bool())


# ---------------------------------------------------------------- known answers


def core(**knobs) -> AttentionCore:
    return AttentionCore(
        AttentionDesign(**knobs), num_heads=HEADS, head_dim=4, grid_ndim=1, causal=True
    )


def causal_weights(q: torch.Tensor, k: torch.Tensor, **knobs) -> torch.Tensor:
    v = torch.randn_like(k)
    torch.manual_seed(1)
    return core(**knobs)(q, k, v, (q.shape[-2],), need_weights=True)[1]


def qk(n: int = LENGTH, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, HEADS, n, 4, generator=gen) for _ in range(2))


@pytest.mark.parametrize(
    "knobs",
    [{"score": s, "normalize": n} for s in SCORES for n in ("softmax", "max")],
    ids=[f"{s}-{n}" for s in SCORES for n in ("softmax", "max")],
)
def test_the_first_position_outputs_its_own_value_through_the_projection(knobs):
    """Position 0 sees only itself: its one weight is 1 (softmax; max of a one-key row)."""
    torch.manual_seed(0)
    module = factory(OmegaConf.merge(yaml("mha"), knobs))(
        dim=DIM, grid_ndim=1, causal=True
    )
    x = inputs()
    value = module.qkv(x[:, 0]).chunk(3, dim=-1)[2]
    torch.testing.assert_close(module(x)[:, 0], module.proj(value), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("window", [None, 2])
def test_sigmoid_counts_only_the_allowed_keys(window):
    """Zero scores give ``sigmoid(-log n_i) = 1 / (n_i + 1)`` on the n_i keys row i may see."""
    q, k = qk()
    weights = causal_weights(torch.zeros_like(q), k, normalize="sigmoid", window=window)
    i, j = torch.arange(LENGTH)[:, None], torch.arange(LENGTH)[None, :]
    allowed = (j <= i) & ((i - j <= window) if window is not None else True)
    n_i = allowed.sum(-1, keepdim=True)
    expected = torch.where(allowed, 1 / (n_i + 1), torch.zeros(()))
    torch.testing.assert_close(weights, expected.expand_as(weights))


def test_max_normalises_over_the_allowed_keys_only():
    q, k = qk()
    weights = causal_weights(q, k, normalize="max")
    allowed = causal_mask(LENGTH)
    assert (weights[..., ~allowed] == 0).all()
    assert (weights[..., 0, 0] == 1).all()  # a one-key row
    past = weights[..., 1:, :].masked_fill(~allowed[1:], float("nan"))
    torch.testing.assert_close(past.nan_to_num(-1).amax(-1), torch.ones(2, HEADS, LENGTH - 1))
    torch.testing.assert_close(past.nan_to_num(2).amin(-1), torch.zeros(2, HEADS, LENGTH - 1))


@pytest.mark.parametrize(
    "window,global_tokens", [(None, 0), (0, 0), (2, 0), (2, 2), (0, 3), (20, 0)]
)
def test_the_allowed_keys_are_the_past_within_the_window_or_global(window, global_tokens):
    """Softmax weights are positive exactly on the allowed set, read off the issue's rules."""
    q, k = qk()
    weights = causal_weights(q, k, window=window, global_tokens=global_tokens)
    expected = torch.tensor(
        [
            [
                j <= i and (window is None or i - j <= window or j < global_tokens)
                for j in range(LENGTH)
            ]
            for i in range(LENGTH)
        ]
    )
    assert torch.equal(weights > 0, expected.expand_as(weights))


@pytest.mark.parametrize("stride", [2, 3, 5])
def test_a_query_sees_the_kept_keys_at_its_position_or_before(stride):
    q, k = qk()
    weights = causal_weights(q, k, kv_stride=stride)
    kept = torch.arange(0, LENGTH, stride)
    expected = kept[None, :] <= torch.arange(LENGTH)[:, None]
    assert weights.shape[-1] == math.ceil(LENGTH / stride)
    assert torch.equal(weights > 0, expected.expand_as(weights))


@pytest.mark.parametrize("training", [False, True])
def test_random_causal_keys_always_keep_the_first_position(training):
    """Position 0 is kept (the first query's only key), the rest drawn: no empty row, no NaN."""
    for seed in range(20):
        torch.manual_seed(seed)
        index = kv_positions(LENGTH, 4, "random", batch=3, training=training, keep_first=True)
        assert index.shape[-1] == 3 and (index[..., 0] == 0).all()
        assert (index.diff(dim=-1) > 0).all()  # distinct, in position order
    seen = {
        int(p) for s in range(50) for p in kv_positions(LENGTH, 4, "random", keep_first=True)
    }
    assert seen == set(range(LENGTH))  # the others are drawn from every position
    q, k = qk()
    weights = causal_weights(q, k, kv_stride=4, kv_select="random")
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, HEADS, LENGTH))


def test_the_causal_qk_conv_pads_on_the_left_and_starts_at_the_identity():
    channels, width = 3, 3
    conv = GridDepthwiseConv(channels, width, causal=True)
    x = torch.randn(2, 1, LENGTH, channels)
    torch.testing.assert_close(conv(x, (LENGTH,))[0], x)  # identity at initialisation
    with torch.no_grad():
        conv.conv.weight.normal_()
        conv.conv.bias.normal_()
    y, grid = conv(x, (LENGTH,))
    assert grid == (LENGTH,)
    w, b = conv.conv.weight[:, 0], conv.conv.bias  # (channels, width)
    for t in range(LENGTH):
        # tap j reads position t - (width - 1) + j; positions before 0 are zeros
        expected = b + sum(
            w[:, j] * x[:, 0, t - width + 1 + j] for j in range(width) if t - width + 1 + j >= 0
        )
        torch.testing.assert_close(y[:, 0, t], expected)


def test_causal_conv1d_is_a_left_padded_convolution():
    x, weight, bias = torch.randn(2, 4, 9), torch.randn(4, 1, 5), torch.randn(4)
    y = causal_conv1d(x, weight, bias, groups=4)
    assert y.shape == x.shape
    for t in range(9):
        taps = [(j, t - 4 + j) for j in range(5) if t - 4 + j >= 0]
        expected = bias + sum(weight[:, 0, j] * x[..., s] for j, s in taps)
        torch.testing.assert_close(y[..., t], expected)


def test_muse_conv_branches_are_causal_and_the_non_causal_ones_are_not():
    x = inputs()
    changed = x.clone()
    changed[:, 6:] += 1.0
    module = build("muse", kernel_sizes=[3, 15])

    def branches(x: torch.Tensor) -> list[torch.Tensor]:
        return module.branch_inputs(module.qkv(x).chunk(3, -1)[2], (LENGTH,))

    for before, after in zip(branches(x), branches(changed), strict=True):
        torch.testing.assert_close(after[:, :6], before[:, :6])
    module.causal = False  # the same weights, same-padded: position 5 sees position 6
    for before, after in zip(branches(x), branches(changed), strict=True):
        assert not torch.allclose(after[:, 5], before[:, 5])


# ---------------------------------------------------------------- rotary positions


def test_rotary_is_the_complex_rotation_of_feature_pairs():
    """GPT-NeoX form: pair (f, f + d/2) at position p as a complex number times e^(i p theta_f),
    theta_f = 10000^(-2f/d)."""
    d, n = 8, 6
    x = torch.randn(2, n, d, dtype=torch.float64)
    positions = torch.arange(n)
    theta = 10000.0 ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
    z = torch.complex(x[..., : d // 2], x[..., d // 2 :]) * torch.polar(
        torch.ones(n, d // 2, dtype=torch.float64), positions[:, None] * theta
    )
    torch.testing.assert_close(rotary(x, positions), torch.cat([z.real, z.imag], dim=-1))
    torch.testing.assert_close(rotary(x, torch.zeros(n, dtype=torch.long)), x)  # p = 0: identity


def test_rotary_scores_depend_on_the_relative_position_only():
    q, k = torch.randn(2, 1, 8), torch.randn(2, 1, 8)

    def score(i: int, j: int) -> torch.Tensor:
        return (rotary(q, torch.tensor([i])) * rotary(k, torch.tensor([j]))).sum(-1)

    torch.testing.assert_close(score(3, 1), score(10, 8))
    torch.testing.assert_close(score(0, 5), score(7, 12))
    assert not torch.allclose(score(3, 1), score(3, 2))


def test_rope_rotates_q_and_k_inside_the_core():
    """With rope the core's dot scores are the scores of the rotated q and k (keys kept by a
    stride keep their own positions)."""
    q, k = qk()
    weights = causal_weights(q, k, rope=True, normalize="max", kv_stride=2)
    kept = torch.arange(0, LENGTH, 2)
    qr, kr = rotary(q, torch.arange(LENGTH)), rotary(k, torch.arange(LENGTH))[..., kept, :]
    scores = qr @ kr.transpose(-2, -1) / 2  # sqrt(head_dim = 4)
    mask = kept[None, :] <= torch.arange(LENGTH)[:, None]
    torch.testing.assert_close(weights, normalize_scores(scores, "max", mask))


def test_rope_costs_three_flops_per_rotated_feature():
    plain, rope = (core(rope=r) for r in (False, True))
    assert rope.flops((LENGTH,)) - plain.flops((LENGTH,)) == 3 * 2 * LENGTH * HEADS * 4


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("name", ["mha", "muse"])
def test_causal_needs_a_sequence(name):
    with pytest.raises(ValueError, match=r"causal=True needs a sequence \(grid_ndim=1\)"):
        build(name, grid_ndim=2)


def test_a_valid_qk_conv_cannot_be_causal_naming_both_keys():
    with pytest.raises(ValueError, match="qk_conv_padding=valid cannot be causal.*causal=True"):
        build("mha", qk_conv=3, qk_conv_padding="valid")


def test_rope_needs_a_sequence_and_an_even_head_dim():
    with pytest.raises(ValueError, match="rope rotates by position along a sequence"):
        factory(OmegaConf.merge(yaml("mha"), {"rope": True}))(dim=DIM, grid_ndim=2)
    with pytest.raises(ValueError, match="rope rotates feature pairs: it needs an even head_dim"):
        factory(OmegaConf.merge(yaml("mha"), {"rope": True, "head_dim": 3}))(dim=DIM)
    with pytest.raises(ValueError, match="rope must be true or false"):
        AttentionDesign(rope="yes")


def test_attend_takes_a_mask_or_is_causal_not_both():
    q, k = qk()
    with pytest.raises(ValueError, match="mask or is_causal"):
        attend(q, k, k, mask=causal_mask(LENGTH), is_causal=True)
