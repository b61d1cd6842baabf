"""The attention design space: each knob's formula, checked against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from attnexp.attention.design import (
    NORMALIZATIONS,
    SCORES,
    AttentionCore,
    AttentionDesign,
    GridDepthwiseConv,
    Scorer,
    attend,
    attention_mask,
    crop_valid,
    global_mask,
    normalize_scores,
    select_kv,
    window_mask,
)

GRIDS = [(7,), (3, 4)]
HEADS, HEAD_DIM = 2, 4


def qkv(n: int, m: int | None = None, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    m = n if m is None else m
    q = torch.randn(batch, HEADS, n, HEAD_DIM, generator=gen)
    k = torch.randn(batch, HEADS, m, HEAD_DIM, generator=gen)
    v = torch.randn(batch, HEADS, m, HEAD_DIM, generator=gen)
    return q, k, v


def core(grid, **knobs) -> AttentionCore:
    torch.manual_seed(0)
    return AttentionCore(
        AttentionDesign(**knobs), num_heads=HEADS, head_dim=HEAD_DIM, grid_ndim=len(grid)
    )


# ---------------------------------------------------------------- every knob: shapes, gradients


KNOB_SETTINGS = (
    [{"score": s} for s in SCORES]
    + [{"normalize": n} for n in NORMALIZATIONS]
    + [
        {"window": 1},
        {"window": 1, "global_tokens": 2},
        {"window": 0, "global_tokens": 1, "normalize": "max"},
        {"kv_stride": 2},
        {"kv_stride": 3, "kv_select": "random"},
        {"qk_conv": 3},
        {"qk_conv": 3, "qk_conv_target": "q"},
        {"qk_conv": 3, "qk_conv_target": "qk", "qk_conv_padding": "valid"},
        {"qk_conv": 3, "qk_conv_padding": "valid", "kv_stride": 2, "score": "cosine"},
    ]
)


@pytest.mark.parametrize("grid", [(9,), (4, 5)], ids=str)  # >= 2 keys left after every knob
@pytest.mark.parametrize("knobs", KNOB_SETTINGS, ids=str)
def test_every_knob_has_the_right_shapes_and_gradients(grid, knobs):
    module = core(grid, **knobs).train()
    n = math.prod(grid)
    q, k, v = (t.requires_grad_() for t in qkv(n))
    out, weights = module(q, k, v, grid, need_weights=True)
    assert out.shape == (2, HEADS, n, HEAD_DIM)
    assert weights.shape == (2, HEADS, n, module.key_count(grid))
    (out.square().sum() + weights.sum()).backward()
    for t in (q, k, v, *module.parameters()):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    assert v.grad.abs().sum() > 0 and q.grad.abs().sum() > 0
    assert module.flops(grid) > 0


# ---------------------------------------------------------------- scores


def test_dot_score_is_the_scaled_dot_product():
    q, k, _ = qkv(5, 6)
    expected = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(HEAD_DIM)
    scores = Scorer("dot", num_heads=HEADS, head_dim=HEAD_DIM)(q, k)
    torch.testing.assert_close(scores, expected)


def test_cosine_scores_of_unit_vectors_are_dot_products_times_the_temperature():
    q, k, _ = qkv(5, 6)
    q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    scorer = Scorer("cosine", num_heads=HEADS, head_dim=HEAD_DIM, temperature=3.0)
    with torch.no_grad():
        scorer.log_temperature[1] = math.log(7.0)  # heads keep their own temperature
    scores = scorer(q, k)
    dots = q @ k.transpose(-2, -1)
    torch.testing.assert_close(scores[:, 0], 3.0 * dots[:, 0])
    torch.testing.assert_close(scores[:, 1], 7.0 * dots[:, 1])


def test_cosine_ignores_the_length_of_q_and_k():
    q, k, _ = qkv(5, 6)
    scorer = Scorer("cosine", num_heads=HEADS, head_dim=HEAD_DIM)
    torch.testing.assert_close(scorer(3.0 * q, 0.5 * k), scorer(q, k))


def test_l2_score_of_a_vector_with_itself_is_the_row_maximum_and_equals_the_formula():
    q, _, _ = qkv(6)
    scores = Scorer("l2", num_heads=HEADS, head_dim=HEAD_DIM)(q, q)
    n = q.shape[-2]
    assert torch.equal(scores.argmax(-1), torch.arange(n).expand(2, HEADS, n))
    torch.testing.assert_close(torch.diagonal(scores, dim1=-2, dim2=-1), torch.zeros(2, HEADS, n))
    q2, k2, _ = qkv(4, 5, seed=1)
    expected = -torch.cdist(q2, k2).square() / math.sqrt(HEAD_DIM)
    scores2 = Scorer("l2", num_heads=HEADS, head_dim=HEAD_DIM)(q2, k2)
    torch.testing.assert_close(scores2, expected, atol=1e-5, rtol=1e-5)


def test_pearson_score_is_the_correlation_coefficient_times_the_temperature():
    q, k, _ = qkv(4, 5)
    scorer = Scorer("pearson", num_heads=HEADS, head_dim=HEAD_DIM, temperature=2.0)
    scores = scorer(q, k).detach().numpy()
    qn, kn = q.numpy(), k.numpy()
    for b in range(2):
        for h in range(HEADS):
            for i in range(4):
                for j in range(5):
                    r = np.corrcoef(qn[b, h, i], kn[b, h, j])[0, 1]
                    assert scores[b, h, i, j] == pytest.approx(2.0 * r, abs=1e-5)


def test_additive_score_is_the_mlp_formula_by_hand():
    q, k, _ = qkv(3, 4)
    scorer = Scorer("additive", num_heads=HEADS, head_dim=HEAD_DIM, additive_dim=5)
    wq, wk, bk = scorer.w_q.weight, scorer.w_k.weight, scorer.w_k.bias
    w, c = scorer.w.weight[0], scorer.w.bias[0]
    expected = torch.empty(2, HEADS, 3, 4)
    for b in range(2):
        for h in range(HEADS):
            for i in range(3):
                for j in range(4):
                    hidden = torch.tanh(wq @ q[b, h, i] + wk @ k[b, h, j] + bk)
                    expected[b, h, i, j] = w @ hidden + c
    torch.testing.assert_close(scorer(q, k), expected)
    # With the sigmoid normalisation this is alpha = sigmoid(MLP(q, k) - log M).
    _, weights = attend(q, k, k, scorer=scorer, normalize="sigmoid", need_weights=True)
    torch.testing.assert_close(weights, torch.sigmoid(expected - math.log(4)))


# ---------------------------------------------------------------- normalisations


def test_sigmoid_rows_at_zero_scores_sum_to_n_over_n_plus_one():
    n = 9
    weights = normalize_scores(torch.zeros(2, HEADS, 5, n), "sigmoid")
    torch.testing.assert_close(weights.sum(-1), torch.full((2, HEADS, 5), n / (n + 1)))
    # Under a mask the offset uses each row's own allowed count n_i: rows sum to n_i / (n_i + 1).
    mask = window_mask((n,), 1)
    masked = normalize_scores(torch.zeros(n, n), "sigmoid", mask)
    counts = mask.sum(-1).double()
    torch.testing.assert_close(masked.sum(-1).double(), counts / (counts + 1))


def test_max_normalisation_has_row_max_one_and_non_negative_entries():
    scores = torch.randn(2, HEADS, 5, 7)
    weights = normalize_scores(scores, "max")
    torch.testing.assert_close(weights.amax(-1), torch.ones(2, HEADS, 5))
    assert (weights >= 0).all()
    low, high = scores.amin(-1, keepdim=True), scores.amax(-1, keepdim=True)
    torch.testing.assert_close(weights, (scores - low) / (high - low))
    constant = normalize_scores(torch.full((3, 4), 2.5), "max")
    assert torch.equal(constant, torch.ones(3, 4))


def test_softmax_normalisation_is_softmax():
    scores = torch.randn(3, 6)
    torch.testing.assert_close(normalize_scores(scores, "softmax"), scores.softmax(-1))


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_masked_positions_get_exactly_zero_weight(normalize):
    scores = torch.randn(2, HEADS, 12, 12) * 5
    mask = attention_mask((3, 4), window=1, global_tokens=1)
    weights = normalize_scores(scores, normalize, mask)
    assert torch.equal(weights[..., ~mask], torch.zeros_like(weights[..., ~mask]))
    assert (weights[..., mask] > 0).any()
    if normalize == "max":  # the best allowed key gets 1 even when a masked score is larger
        torch.testing.assert_close(weights.amax(-1), torch.ones(2, HEADS, 12))


# ---------------------------------------------------------------- masks


def test_window_mask_1d_is_distance_at_most_w():
    mask = window_mask((6,), 2)
    i, j = np.meshgrid(np.arange(6), np.arange(6), indexing="ij")
    assert np.array_equal(mask.numpy(), np.abs(i - j) <= 2)


def test_window_mask_2d_is_a_chebyshev_square():
    h, w = 4, 5
    mask = window_mask((h, w), 1).reshape(h, w, h, w)
    for r in range(h):
        for c in range(w):
            expected = np.zeros((h, w), dtype=bool)
            expected[max(0, r - 1) : r + 2, max(0, c - 1) : c + 2] = True
            assert np.array_equal(mask[r, c].numpy(), expected)


def test_global_tokens_attend_and_are_attended_by_all():
    mask = attention_mask((8,), window=0, global_tokens=2)
    assert mask[:2].all() and mask[:, :2].all()
    rest = mask[2:, 2:]
    assert torch.equal(rest, torch.eye(6, dtype=torch.bool))
    assert torch.equal(global_mask(3, 1), torch.tensor([[1, 1, 1], [1, 0, 0], [1, 0, 0]]).bool())
    assert attention_mask((8,)) is None


@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize("normalize", ["softmax", "max"])
def test_window_zero_attends_only_to_itself(grid, normalize):
    module = core(grid, window=0, normalize=normalize).eval()
    q, k, v = qkv(math.prod(grid))
    out, weights = module(q, k, v, grid, need_weights=True)
    torch.testing.assert_close(out, v)
    assert torch.equal(weights, torch.eye(math.prod(grid)).expand_as(weights))
    fast, _ = core(grid, window=0).eval()(q, k, v, grid)
    torch.testing.assert_close(fast, v)


def test_window_zero_with_sigmoid_scales_each_value_by_sigmoid_of_its_own_score():
    grid = (5,)
    q, k, v = qkv(5)
    out, _ = core(grid, window=0, normalize="sigmoid")(q, k, v, grid)
    own = (q * k).sum(-1, keepdim=True) / math.sqrt(HEAD_DIM)
    torch.testing.assert_close(out, torch.sigmoid(own) * v)  # offset -log 1 = 0


# ---------------------------------------------------------------- fast path equals explicit path


@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize("window", [None, 1])
def test_dot_softmax_fused_path_equals_explicit_path(grid, window):
    n = math.prod(grid)
    q, k, v = qkv(n)
    mask = attention_mask(grid, window, global_tokens=1 if window is not None else 0)
    fused, none = attend(q, k, v, mask=mask)
    explicit, weights = attend(q, k, v, mask=mask, need_weights=True)
    assert none is None and weights is not None
    torch.testing.assert_close(fused, explicit)
    scores = q @ k.transpose(-2, -1) / math.sqrt(HEAD_DIM)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(explicit, scores.softmax(-1) @ v)
    assert AttentionDesign(window=window).fast_path


def test_dropout_acts_only_in_training():
    q, k, v = qkv(6)
    a, _ = attend(q, k, v, dropout_p=0.9, training=False)
    b, _ = attend(q, k, v, dropout_p=0.9, training=False, need_weights=True)
    torch.testing.assert_close(a, b)
    torch.manual_seed(0)
    c, _ = attend(q, k, v, dropout_p=0.9, training=True, need_weights=True)
    assert not torch.allclose(b, c)


# ---------------------------------------------------------------- keys and values


@pytest.mark.parametrize("n,stride", [(7, 2), (12, 3), (10, 4), (5, 1)])
def test_kv_stride_keeps_every_sth_position(n, stride):
    _, k, v = qkv(n)
    ks, vs = select_kv(k, v, stride, "stride")
    assert ks.shape[-2] == math.ceil(n / stride)
    torch.testing.assert_close(ks, k[..., ::stride, :])
    torch.testing.assert_close(vs, v[..., ::stride, :])
    grid = (n,)
    assert core(grid, kv_stride=stride).key_count(grid) == math.ceil(n / stride)


def test_random_selection_keeps_key_value_pairs_together_with_the_stride_count():
    n, stride = 11, 3
    _, k, _ = qkv(n)
    positions = torch.arange(n, dtype=torch.float).expand(2, HEADS, n).unsqueeze(-1)
    for training in (False, True):
        ks, vs = select_kv(k, positions, stride, "random", training=training)
        assert ks.shape[-2] == vs.shape[-2] == math.ceil(n / stride) == 4
        index = vs[..., 0].long()  # the position of each kept value
        assert (index.diff(dim=-1) > 0).all()  # distinct and in grid order
        torch.testing.assert_close(ks, k.gather(2, index.unsqueeze(-1).expand_as(ks)))
        if not training:  # one subset per forward call, shared by the batch and the heads
            assert torch.equal(index, index[:1, :1].expand_as(index))


def test_random_selection_is_shared_by_the_batch_in_eval_and_per_sample_in_training():
    grid = (30,)
    module = core(grid, kv_stride=3, kv_select="random")
    assert module.key_count(grid) == 10
    q, k, v = (t[:1].expand(2, -1, -1, -1) for t in qkv(30))  # two identical samples
    torch.manual_seed(1)
    out, weights = module.eval()(q, k, v, grid, need_weights=True)
    assert weights.shape[-1] == 10
    torch.testing.assert_close(out[0], out[1])  # one subset for the whole forward call
    again, _ = module(q, k, v, grid)
    assert not torch.allclose(out, again)  # a fresh subset on the next call
    trained, _ = module.train()(q, k, v, grid)
    assert not torch.allclose(trained[0], trained[1])  # one subset per sample


def test_qk_conv_starts_at_the_identity_and_is_depthwise():
    for grid in GRIDS:
        conv = GridDepthwiseConv(HEADS * HEAD_DIM, 3, grid_ndim=len(grid))
        x, _, _ = qkv(math.prod(grid))
        y, out_grid = conv(x, grid)
        assert out_grid == grid
        torch.testing.assert_close(y, x)


def test_qk_conv_2d_same_matches_conv2d_and_valid_shrinks_the_key_grid():
    grid, width = (4, 5), 3
    x, _, _ = qkv(20)
    conv = GridDepthwiseConv(HEADS * HEAD_DIM, width, grid_ndim=2)
    torch.nn.init.normal_(conv.conv.weight)
    image = x.transpose(-2, -1).reshape(2, HEADS * HEAD_DIM, *grid)
    expected = F.conv2d(image, conv.conv.weight, conv.conv.bias, padding=1, groups=HEADS * HEAD_DIM)
    y, _ = conv(x, grid)
    torch.testing.assert_close(y, expected.reshape(2, HEADS, HEAD_DIM, 20).transpose(-2, -1))
    module = core(grid, qk_conv=width, qk_conv_padding="valid")
    assert module.key_count(grid) == 2 * 3
    _, weights = module(*qkv(20), grid, need_weights=True)
    assert weights.shape[-1] == 6


def test_valid_conv_values_are_the_centre_positions_of_the_keys():
    grid = (4, 5)
    positions = torch.arange(20, dtype=torch.float).reshape(1, 1, 20, 1)
    cropped = crop_valid(positions, grid, 3).flatten().tolist()
    assert cropped == [6.0, 7.0, 8.0, 11.0, 12.0, 13.0]
    assert crop_valid(torch.arange(7.0).reshape(1, 1, 7, 1), (7,), 5).flatten().tolist() == [
        2,
        3,
        4,
    ]


def test_qk_conv_on_the_wrong_grid_rank_names_grid_ndim():
    module = core((3, 4), qk_conv=3)
    with pytest.raises(ValueError, match="grid_ndim"):
        module(*qkv(12), (12,))


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "knobs,key",
    [
        ({"score": "dotty"}, "score must be one of dot, cosine, l2, pearson, additive"),
        ({"normalize": "relu"}, "normalize must be one of softmax, sigmoid, max"),
        ({"window": -1}, "window"),
        ({"kv_stride": 0}, "kv_stride"),
        ({"kv_select": "every"}, "kv_select must be one of stride, random"),
        ({"qk_conv": 4}, "qk_conv"),
        ({"qk_conv": -3}, "qk_conv"),
        ({"qk_conv_padding": "full"}, "qk_conv_padding must be one of same, valid"),
        ({"qk_conv_target": "v"}, "qk_conv_target must be one of k, q, qk"),
        ({"global_tokens": 2}, "global_tokens"),
        ({"global_tokens": -1, "window": 1}, "global_tokens"),
        ({"window": 2, "kv_stride": 2}, "window"),
        ({"window": 2, "kv_stride": 2, "kv_select": "random"}, "window"),
        ({"window": 2, "qk_conv": 3, "qk_conv_padding": "valid"}, "window"),
        ({"qk_conv": 3, "qk_conv_padding": "valid", "qk_conv_target": "q"}, "qk_conv_target"),
        ({"additive_dim": 0, "score": "additive"}, "additive_dim"),
        ({"window": 1.5}, "window"),
    ],
)
def test_invalid_combinations_are_refused_naming_the_key(knobs, key):
    with pytest.raises(ValueError, match=key):
        AttentionDesign(**knobs)


def test_valid_combinations_are_accepted():
    AttentionDesign(window=3, qk_conv=3)  # same padding keeps positions aligned
    AttentionDesign(window=0, global_tokens=4, score="l2", normalize="max")
    AttentionDesign(kv_stride=2, qk_conv=5, qk_conv_padding="valid", qk_conv_target="qk")
    assert AttentionDesign(score="cosine").fast_path  # softmax scores take the fused kernel
    assert not AttentionDesign(score="additive").fast_path
    assert not AttentionDesign(normalize="sigmoid").fast_path


def test_flops_follow_the_key_count():
    grid = (16,)
    full, strided = core(grid).flops(grid), core(grid, kv_stride=4).flops(grid)
    n, d = 16, HEAD_DIM
    assert full == HEADS * (2 * n * n * d + 4 * n * n + 2 * n * n * d)
    assert strided == HEADS * (2 * n * 4 * d + 4 * n * 4 + 2 * n * 4 * d)
