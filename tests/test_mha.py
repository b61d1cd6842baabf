"""``mha``: known answers against PyTorch's own MultiheadAttention, and its properties."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnexp.attention.design import NORMALIZATIONS, SCORES
from attnexp.attention.mha import MultiHeadAttention


def reference_for(module: MultiHeadAttention) -> nn.MultiheadAttention:
    ref = nn.MultiheadAttention(module.dim, module.num_heads, batch_first=True)
    ref.in_proj_weight.data.copy_(module.qkv.weight)
    ref.in_proj_bias.data.copy_(module.qkv.bias)
    ref.out_proj.weight.data.copy_(module.proj.weight)
    ref.out_proj.bias.data.copy_(module.proj.bias)
    return ref.eval()


@pytest.mark.parametrize("grid", [(9,), (7, 5)])
def test_mha_equals_torch_multihead_attention(grid):
    torch.manual_seed(0)
    module = MultiHeadAttention(dim=32, grid_ndim=len(grid), num_heads=4).eval()
    x = torch.randn(3, *grid, 32)
    tokens = x.reshape(3, -1, 32)  # attends over all H*W positions
    expected, expected_weights = reference_for(module)(
        tokens, tokens, tokens, average_attn_weights=False
    )
    y, weights = module(x, return_weights=True)
    torch.testing.assert_close(y, expected.reshape(x.shape), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(module(x), expected.reshape(x.shape), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights["attn"], expected_weights, atol=1e-6, rtol=1e-5)


def test_explicit_path_equals_fused_path_and_weights_are_distributions():
    torch.manual_seed(0)
    module = MultiHeadAttention(
        dim=48, grid_ndim=2, num_heads=3, head_dim=8
    ).eval()  # head_dim != dim / heads
    x = torch.randn(2, 4, 6, 48)
    y, weights = module(x, return_weights=True)
    torch.testing.assert_close(y, module(x), atol=1e-5, rtol=1e-5)
    assert weights["attn"].shape == (2, 3, 24, 24)
    torch.testing.assert_close(weights["attn"].sum(-1), torch.ones(2, 3, 24))


def test_mha_is_permutation_equivariant_over_positions():
    torch.manual_seed(0)
    module = MultiHeadAttention(dim=32, num_heads=4).eval()
    x = torch.randn(2, 10, 32)
    perm = torch.randperm(10)
    torch.testing.assert_close(module(x[:, perm]), module(x)[:, perm], atol=1e-5, rtol=1e-5)


def hand_flops(n: int, m: int, c: int = 64, heads: int = 4, d: int = 8) -> int:
    """N queries, M keys: qkv 2*N*C*3hd + scores 2*N*M*hd + softmax 4*N*M*h + weighted values
    2*N*M*hd + projection 2*N*hd*C."""
    inner = heads * d
    return (
        2 * n * c * 3 * inner
        + 2 * n * m * inner
        + 4 * n * m * heads
        + 2 * n * m * inner
        + (2 * n * inner * c)
    )


@pytest.mark.parametrize("grid", [(7, 5), (35,)], ids=str)
def test_mha_flops_match_hand_count(grid):
    module = MultiHeadAttention(dim=64, grid_ndim=len(grid), num_heads=4, head_dim=8)
    assert module.flops(grid) == hand_flops(35, 35)


@pytest.mark.parametrize("grid,stride", [((35,), 3), ((7, 5), 4), ((16,), 2)], ids=str)
def test_kv_stride_flops_count_ceil_n_over_s_keys(grid, stride):
    module = MultiHeadAttention(dim=64, grid_ndim=len(grid), head_dim=8, kv_stride=stride)
    n = math.prod(grid)
    assert module.flops(grid) == hand_flops(n, -(-n // stride))


def test_valid_qk_conv_flops_count_the_conv_and_the_shorter_keys():
    grid, width = (7, 5), 3
    module = MultiHeadAttention(
        dim=64, grid_ndim=2, head_dim=8, qk_conv=width, qk_conv_padding="valid"
    )
    m = (7 - 2) * (5 - 2)
    conv = 2 * width * width * 32 * m  # depthwise over 32 channels, one output per key
    assert module.flops(grid) == hand_flops(35, m) + conv


def test_attention_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    module = MultiHeadAttention(dim=16, num_heads=2, attn_drop=0.5)
    x = torch.randn(2, 8, 16)
    assert not torch.allclose(module.train()(x), module.train()(x))
    module.eval()
    torch.testing.assert_close(module(x), module(x))


# ---------------------------------------------------------------- the design knobs through mha


KNOBS = (
    [{"score": s} for s in SCORES]
    + [{"normalize": n} for n in NORMALIZATIONS]
    + [
        {"score": "additive", "additive_dim": 5, "normalize": "sigmoid"},
        {"window": 1},
        {"window": 1, "global_tokens": 2, "normalize": "max"},
        {"kv_stride": 2},
        {"kv_stride": 3, "kv_select": "random", "score": "l2"},
        {"qk_conv": 3, "qk_conv_target": "qk"},
        {"qk_conv": 3, "qk_conv_padding": "valid", "score": "pearson"},
    ]
)


@pytest.mark.parametrize("grid", [(9,), (4, 5)], ids=str)
@pytest.mark.parametrize("knobs", KNOBS, ids=str)
def test_every_knob_through_mha_keeps_the_shape_and_trains_every_parameter(grid, knobs):
    torch.manual_seed(0)
    module = MultiHeadAttention(dim=16, grid_ndim=len(grid), num_heads=2, **knobs).train()
    x = torch.randn(2, *grid, 16, requires_grad=True)
    y, weights = module(x, return_weights=True)
    assert y.shape == x.shape
    n = math.prod(grid)
    assert weights["attn"].shape == (2, 2, n, module.core.key_count(grid))
    (y * torch.randn(y.shape)).sum().backward()
    assert x.grad.abs().sum() > 0
    for name, param in module.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    module.eval()
    if knobs.get("kv_select") != "random":  # random keys differ between calls
        torch.testing.assert_close(module(x), module(x, return_weights=True)[0])


def value_projection(module: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """proj(W_v x + b_v): what attention returns when each position sees only itself."""
    _, _, wv = module.qkv.weight.chunk(3)
    _, _, bv = module.qkv.bias.chunk(3)
    return module.proj(x @ wv.T + bv)


@pytest.mark.parametrize("grid", [(6,), (3, 4)], ids=str)
@pytest.mark.parametrize("score", ["dot", "cosine"])
def test_window_zero_attends_only_to_itself(grid, score):
    torch.manual_seed(0)
    module = MultiHeadAttention(dim=16, grid_ndim=len(grid), num_heads=2, window=0, score=score)
    x = torch.randn(2, *grid, 16)
    y, weights = module.eval()(x, return_weights=True)
    n = math.prod(grid)
    assert torch.equal(weights["attn"], torch.eye(n).expand(2, 2, n, n))
    torch.testing.assert_close(y, value_projection(module, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(module(x), y, atol=1e-5, rtol=1e-5)  # the fused masked path


def keys_at(module: MultiHeadAttention, x: torch.Tensor, positions) -> torch.Tensor:
    """torch.nn.MultiheadAttention with every query and only the keys/values at ``positions``."""
    tokens = x.reshape(x.shape[0], -1, module.dim)
    kv = tokens[:, positions]
    return reference_for(module)(tokens, kv, kv, need_weights=False)[0].reshape(x.shape)


@pytest.mark.parametrize("grid,stride", [((10,), 3), ((3, 5), 2)], ids=str)
def test_kv_stride_attends_to_every_sth_position(grid, stride):
    torch.manual_seed(0)
    module = MultiHeadAttention(dim=32, grid_ndim=len(grid), kv_stride=stride).eval()
    x = torch.randn(2, *grid, 32)
    n = math.prod(grid)
    y, weights = module(x, return_weights=True)
    assert weights["attn"].shape[-1] == math.ceil(n / stride)
    expected = keys_at(module, x, slice(None, None, stride))
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "grid,centre",
    [((7,), [1, 2, 3, 4, 5]), ((4, 5), [6, 7, 8, 11, 12, 13])],
    ids=str,
)
def test_valid_qk_conv_shortens_the_keys_to_the_centre_positions(grid, centre):
    """At initialisation the conv is the identity, so a valid conv of width 3 is attention over
    the positions whose 3-wide (3 x 3) neighbourhood lies inside the grid."""
    torch.manual_seed(0)
    module = MultiHeadAttention(
        dim=32, grid_ndim=len(grid), qk_conv=3, qk_conv_padding="valid"
    ).eval()
    x = torch.randn(2, *grid, 32)
    y, weights = module(x, return_weights=True)
    assert weights["attn"].shape[-1] == len(centre)
    torch.testing.assert_close(y, keys_at(module, x, centre), atol=1e-5, rtol=1e-5)


def test_qk_conv_kernel_has_the_grid_rank():
    for grid_ndim in (1, 2):
        module = MultiHeadAttention(dim=32, grid_ndim=grid_ndim, qk_conv=5, qk_conv_target="qk")
        assert module.core.k_conv.conv.weight.shape == (32, 1, *[5] * grid_ndim)
        assert module.core.q_conv.conv.weight.shape == (32, 1, *[5] * grid_ndim)


@pytest.mark.parametrize(
    "knobs,fused",
    [
        ({}, True),
        ({"window": 1, "global_tokens": 1}, True),
        ({"kv_stride": 2}, True),
        ({"score": "cosine"}, True),
        ({"score": "l2", "window": 1}, True),
        ({"score": "pearson"}, True),
        ({"score": "additive"}, False),
        ({"normalize": "sigmoid"}, False),
    ],
    ids=str,
)
def test_softmax_scores_run_the_fused_kernel_with_or_without_a_mask(monkeypatch, knobs, fused):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    module = MultiHeadAttention(dim=16, grid_ndim=2, num_heads=2, **knobs).eval()
    x = torch.randn(2, 3, 4, 16)
    y = module(x)
    assert len(calls) == int(fused)
    if fused and "window" in knobs:
        assert calls[0] is not None and calls[0].dtype == torch.bool
    torch.testing.assert_close(y, module(x, return_weights=True)[0], atol=1e-5, rtol=1e-5)
    assert len(calls) == int(fused)  # asking for the weights takes the explicit path
