"""``mha``: known answers against PyTorch's own MultiheadAttention, and its properties."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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
    module = MultiHeadAttention(dim=32, num_heads=4).eval()
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
    module = MultiHeadAttention(dim=48, num_heads=3, head_dim=8).eval()  # head_dim != dim / heads
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


def test_mha_flops_match_hand_count():
    module = MultiHeadAttention(dim=64, num_heads=4, head_dim=8)  # inner width 32
    n = 7 * 5
    qkv = 2 * n * 64 * (3 * 32)
    scores = 2 * n * n * 32
    weighted_values = 2 * n * n * 32
    projection = 2 * n * 32 * 64
    assert module.flops((7, 5)) == qkv + scores + weighted_values + projection
    assert module.flops((35,)) == module.flops((7, 5))


def test_attention_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    module = MultiHeadAttention(dim=16, num_heads=2, attn_drop=0.5)
    x = torch.randn(2, 8, 16)
    assert not torch.allclose(module.train()(x), module.train()(x))
    module.eval()
    torch.testing.assert_close(module(x), module(x))
