"""``pool``: learned-query attention pooling against its formula, and its properties."""

from __future__ import annotations

import pytest
import torch

from attnexp.attention.pool import AttentionPool


def pool_formula(module: AttentionPool, x: torch.Tensor) -> torch.Tensor:
    """Per head h and query q: softmax_n(q_h . k_{n,h} / sqrt(d)) weighted sum of v_{n,h}."""
    tokens = x.reshape(x.shape[0], -1, module.dim)
    k, v = (tokens @ module.kv.weight.T + module.kv.bias).chunk(2, dim=-1)
    heads, d = module.num_heads, module.head_dim
    outs = []
    for query in module.query:  # each of num_queries
        per_head = []
        for h in range(heads):
            part = slice(h * d, (h + 1) * d)
            scores = k[..., part] @ query[part] / d**0.5  # (B, N)
            per_head.append((scores.softmax(-1).unsqueeze(-1) * v[..., part]).sum(1))
        outs.append(torch.cat(per_head, dim=-1))
    pooled = torch.stack(outs).mean(0)
    return pooled @ module.proj.weight.T + module.proj.bias


@pytest.mark.parametrize("num_queries", [1, 3])
@pytest.mark.parametrize("shape", [(2, 10, 32), (1, 7, 5, 32)])
def test_pool_equals_formula(num_queries, shape):
    torch.manual_seed(0)
    module = AttentionPool(dim=32, num_heads=4, num_queries=num_queries)
    x = torch.randn(*shape)
    torch.testing.assert_close(module(x), pool_formula(module, x), atol=1e-5, rtol=1e-5)


def test_pool_weights_sum_to_one_over_positions():
    torch.manual_seed(0)
    module = AttentionPool(dim=32, num_heads=4, num_queries=2)
    y, weights = module(torch.randn(3, 7, 5, 32), return_weights=True)
    assert y.shape == (3, 32)
    assert weights["pool"].shape == (3, 4, 35)
    assert (weights["pool"] >= 0).all()
    torch.testing.assert_close(weights["pool"].sum(-1), torch.ones(3, 4))


def test_pool_is_permutation_invariant():
    torch.manual_seed(0)
    module = AttentionPool(dim=32, num_heads=4)
    x = torch.randn(2, 12, 32)
    torch.testing.assert_close(module(x[:, torch.randperm(12)]), module(x), atol=1e-5, rtol=1e-5)


def test_residual_adds_mean_pooling():
    torch.manual_seed(0)
    plain = AttentionPool(dim=32, num_heads=2)
    residual = AttentionPool(dim=32, num_heads=2, residual=True)
    residual.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, 6, 32)
    torch.testing.assert_close(residual(x), plain(x) + x.mean(dim=(1, 2)), atol=1e-5, rtol=1e-5)


def test_query_init_scale():
    torch.manual_seed(0)
    query = AttentionPool(dim=256, num_queries=64).query
    assert query.abs().max() <= 2 * 256**-0.5 + 1e-6  # truncated at two standard deviations
    assert abs(query.std().item() - 256**-0.5 * 0.88) < 0.01  # std of a normal cut at +-2 sd


def test_pool_flops_match_hand_count():
    n, c = 35, 64
    assert AttentionPool(dim=c, num_queries=2).flops((7, 5)) == (
        2 * n * c * 2 * c + 2 * 2 * n * c + 2 * 2 * n * c + 2 * c * c
    )
