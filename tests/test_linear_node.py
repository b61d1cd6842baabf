"""``linear`` and ``node``: their formulas, computed independently here, and the contract."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from attnexp.attention import Kind
from attnexp.attention.linear import LinearAttention
from attnexp.attention.node import NodeAttention
from attnexp.config.attention import create

DIM = 8
SHAPES = [(2, 6, DIM), (2, 3, 4, DIM)]


@pytest.mark.parametrize("name", ["linear", "node"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_config_builds_a_mixer_that_keeps_the_shape_and_learns(name, shape):
    module = create(name, DIM, grid_ndim=len(shape) - 2)
    assert module.kind is Kind.MIXER
    torch.manual_seed(0)
    if name == "node":  # the zero-initialised last layer would hide the other gradients
        torch.nn.init.normal_(module.transform[-1].weight)
    x = torch.randn(shape, requires_grad=True)
    y, weights = module(x, return_weights=True)
    assert y.shape == shape and weights
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name_, p in module.named_parameters():
        assert p.grad is not None, name_
        # node's score bias shifts every position's logit of one softmax alike: its gradient is 0
        # analytically (float rounding leaves ~1e-9 or exactly 0), so it cannot be asked to learn.
        if (name, name_) != ("node", "score.bias"):
            assert p.grad.abs().sum() > 0, name_
    assert torch.equal(module(x), y)
    assert isinstance(module.flops(shape[1:-1]), int) and module.flops(shape[1:-1]) > 0


# ---------------------------------------------------------------- linear


def quadratic_linear_attention(module: LinearAttention, x):
    """The O(N^2) form: out_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j)."""
    tokens = x.reshape(x.shape[0], -1, DIM)
    q, k, v = module.qkv(tokens).split(DIM, dim=-1)
    heads, d = module.num_heads, DIM // module.num_heads
    outs, maps = [], []
    for h in range(heads):
        part = slice(h * d, (h + 1) * d)
        fq, fk = F.elu(q[..., part]) + 1, F.elu(k[..., part]) + 1
        similarity = fq @ fk.transpose(-2, -1)  # (B, N, N)
        attn = similarity / (similarity.sum(-1, keepdim=True) + module.eps)
        maps.append(attn)
        outs.append(attn @ v[..., part])
    return module.proj(torch.cat(outs, dim=-1)).reshape(x.shape), torch.stack(maps, 1)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_linear_attention_matches_its_quadratic_formula(shape):
    torch.manual_seed(0)
    module = LinearAttention(DIM, grid_ndim=len(shape) - 2, num_heads=2)
    x = torch.randn(shape)
    y, weights = module(x, return_weights=True)
    expected, expected_maps = quadratic_linear_attention(module, x)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights["attn"], expected_maps, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights["attn"].sum(-1), torch.ones(2, 2, math.prod(shape[1:-1])))


def test_linear_attention_flops_grow_linearly_with_length():
    module = LinearAttention(DIM, num_heads=2)
    f1, f2, f4 = (module.flops((n,)) for n in (100, 200, 400))
    assert f2 == 2 * f1 and f4 == 4 * f1
    d, n = DIM // 2, 100
    projections = 2 * n * DIM * 3 * DIM + 2 * n * DIM * DIM
    features = 2 * 2 * n * DIM  # elu + 1 on q and k
    summaries = 2 * (2 * n * d * d) * 2  # S = sum phi(k) v^T and phi(q) S, for 2 heads
    normaliser = n * DIM + 2 * n * DIM + n * DIM  # z = sum phi(k), phi(q).z, divide
    expected = projections + features + summaries + normaliser
    assert f1 == expected


def test_linear_attention_refuses_heads_that_do_not_divide_dim():
    with pytest.raises(ValueError, match="num_heads"):
        LinearAttention(DIM, num_heads=3)


# ---------------------------------------------------------------- node


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("value_proj", [False, True])
def test_node_output_is_the_input_plus_one_position_independent_vector(shape, value_proj):
    torch.manual_seed(0)
    module = NodeAttention(DIM, len(shape) - 2, reduction=2, value_proj=value_proj)
    torch.nn.init.normal_(module.transform[-1].weight)
    x = torch.randn(shape)
    y, weights = module(x, return_weights=True)
    delta = (y - x).reshape(2, -1, DIM)
    torch.testing.assert_close(delta, delta[:, :1].expand_as(delta))
    assert delta.abs().sum() > 0
    # The vector, by hand: softmax of the linear scores pools the tokens, then the transform.
    tokens = x.reshape(2, -1, DIM)
    p = (tokens @ module.score.weight[0] + module.score.bias).softmax(-1)
    context = (p.unsqueeze(-1) * tokens).sum(1)
    if value_proj:
        context = context @ module.value.weight.T + module.value.bias
    first, norm, _, last = module.transform
    hidden = torch.relu(norm(context @ first.weight.T + first.bias))
    torch.testing.assert_close(delta[:, 0], hidden @ last.weight.T + last.bias)
    torch.testing.assert_close(weights["node"], p.unsqueeze(1))


def test_node_starts_as_the_identity_and_counts_linear_flops():
    module = NodeAttention(DIM, reduction=4)
    x = torch.randn(2, 5, DIM)
    torch.testing.assert_close(module(x), x)
    f1, f2 = module.flops((100,)), module.flops((200,))
    per_position = 2 * DIM + 4 + 2 * DIM + DIM
    assert f2 - f1 == 100 * per_position
    with pytest.raises(ValueError, match="reduction"):
        NodeAttention(DIM, reduction=0)
