"""Causal attention (``causal=True``): for every variant in conf/attention/ the output at position t
depends on inputs at positions <= t only, in training mode; ``pool`` refuses; and the causal forms
of ``linear``, ``node``, ``se`` and ``cbam`` against explicit per-prefix references."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from attnexp.attention import Kind, factory
from attnexp.attention.cbam import CBAM
from attnexp.attention.linear import LinearAttention
from attnexp.attention.node import NodeAttention
from attnexp.attention.se import SqueezeExcite
from attnexp.config.attention import attention_config, available, create, variant_kind

DIM, L = 16, 12
CUTS = [0, 3, 7, 10]  # positions t: inputs after t are replaced
POOL_MESSAGE = (
    "pool cannot be causal: it collapses the sequence into one vector, and a language model "
    "reads out every position"
)


SEQUENCE_VARIANTS = [n for n in available() if variant_kind(n) is not Kind.POOL]
POOL_VARIANTS = [n for n in available() if variant_kind(n) is Kind.POOL]


def causal(name: str, grid_ndim: int = 1):
    """What a backbone in a language model builds: the variant's partial with ``causal=True``."""
    return factory(attention_config(name))(dim=DIM, grid_ndim=grid_ndim, causal=True)


def randomised(module: torch.nn.Module) -> torch.nn.Module:
    """Every parameter drawn afresh, so no zero init (node's last layer) hides a leak."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(std=0.5)
    return module.train()


def future_leak(module: torch.nn.Module, t: int) -> float:
    """How much outputs at positions <= t move when every input after t is replaced."""
    torch.manual_seed(2)
    x = torch.randn(3, L, DIM)
    changed = x.clone()
    changed[:, t + 1 :] = torch.randn(3, L - t - 1, DIM)
    with torch.no_grad():
        return (module(x)[:, : t + 1] - module(changed)[:, : t + 1]).abs().max().item()


@pytest.mark.parametrize("name", SEQUENCE_VARIANTS)
def test_no_output_depends_on_a_later_input(name):
    module = randomised(causal(name))
    for t in CUTS:
        assert future_leak(module, t) <= 1e-6, f"{name}: position <= {t} sees the future"


@pytest.mark.parametrize("name", ["linear", "node", "se", "cbam"])
def test_the_leak_check_catches_the_non_causal_forms(name):
    """The property above could be false: the non-causal module fails it."""
    module = randomised(create(name, DIM, 1))
    assert future_leak(module, 3) > 1e-3


@pytest.mark.parametrize("name", SEQUENCE_VARIANTS)
def test_causal_forward_backward_weights_and_flops(name):
    module = randomised(causal(name))
    assert module.causal is True
    x = torch.randn(2, L, DIM, requires_grad=True)
    y, weights = module(x, return_weights=True)
    assert y.shape == x.shape
    torch.testing.assert_close(y, module(x), atol=1e-5, rtol=1e-5)
    assert set(weights) == set(module.weight_kinds)
    for key, w in weights.items():
        module.weight_kinds[key].check(key, w, (L,), dim=DIM)
        assert torch.isfinite(w).all()
    (y * torch.randn(y.shape)).sum().backward()
    assert torch.isfinite(x.grad).all()
    for pname, param in module.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
    if module.kind is not Kind.IDENTITY:
        assert module.flops((2 * L,)) > module.flops((L,)) > 0


@pytest.mark.parametrize("name", SEQUENCE_VARIANTS)
def test_causal_on_an_image_is_refused_naming_causal(name):
    with pytest.raises(ValueError, match="causal"):
        causal(name, grid_ndim=2)


@pytest.mark.parametrize("name", POOL_VARIANTS)
def test_pool_refuses_causal(name):
    with pytest.raises(ValueError, match=POOL_MESSAGE):
        causal(name)
    assert not create(name, DIM, 1).causal  # and builds as before without it


# ---------------------------------------------------------------- linear


def masked_linear_attention(module: LinearAttention, x: torch.Tensor):
    """The O(N^2) causal form: out_i = sum_{j<=i} a_ij v_j / (sum_{j<=i} a_ij + eps),
    a_ij = phi(q_i).phi(k_j), head by head."""
    q, k, v = module.qkv(x).split(DIM, dim=-1)
    d = module.head_dim
    future = torch.ones(L, L, dtype=torch.bool).triu(1)
    outs, maps = [], []
    for h in range(module.num_heads):
        part = slice(h * d, (h + 1) * d)
        similarity = (F.elu(q[..., part]) + 1) @ (F.elu(k[..., part]) + 1).transpose(-2, -1)
        similarity = similarity.masked_fill(future, 0)
        attn = similarity / (similarity.sum(-1, keepdim=True) + module.eps)
        maps.append(attn)
        outs.append(attn @ v[..., part])
    return module.proj(torch.cat(outs, dim=-1)), torch.stack(maps, 1)


@pytest.mark.parametrize("chunk_size", [1, 5, 12, 64], ids=lambda c: f"chunk{c}")
def test_causal_linear_equals_the_masked_quadratic_formula(chunk_size):
    torch.manual_seed(0)
    module = LinearAttention(DIM, causal=True, num_heads=2, chunk_size=chunk_size)
    x = torch.randn(3, L, DIM)
    y, weights = module(x, return_weights=True)
    expected, expected_maps = masked_linear_attention(module, x)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights["attn"], expected_maps, atol=1e-6, rtol=1e-5)
    assert (weights["attn"].triu(1) == 0).all()


def test_causal_linear_flops_count_the_chunked_form():
    n, c, d, h, chunk = 100, DIM, DIM // 2, 2, 40
    module = LinearAttention(DIM, causal=True, num_heads=h, chunk_size=chunk)
    plain = LinearAttention(DIM, num_heads=h).flops((n,))
    squares = 2 * chunk**2 + 20**2  # two full chunks and one of 20
    within = h * (2 * squares * d * 2 + squares)  # masked scores, their values, row sums
    assert module.flops((n,)) == plain + within + n * c + n * h  # + adding the two parts
    assert module.flops((4 * chunk,)) == 2 * module.flops((2 * chunk,))  # linear in N


# ---------------------------------------------------------------- node


def node_per_prefix(module: NodeAttention, x: torch.Tensor):
    """Position t by the non-causal formula on its prefix x[:, :t+1] alone."""
    scores = x @ module.score.weight[0] + module.score.bias
    outs, rows = [], []
    for t in range(x.shape[1]):
        p = scores[:, : t + 1].softmax(-1)
        context = module.value((p.unsqueeze(-1) * x[:, : t + 1]).sum(1))
        outs.append(x[:, t] + module.transform(context))
        rows.append(F.pad(p, (0, x.shape[1] - t - 1)))
    return torch.stack(outs, 1), torch.stack(rows, 1).unsqueeze(1)


@pytest.mark.parametrize("value_proj", [False, True])
@pytest.mark.parametrize("score_scale", [1.0, 1e3], ids=["scores", "huge_scores"])
def test_causal_node_equals_the_per_prefix_softmax(value_proj, score_scale):
    """Huge scores: exp would overflow without the running max; the scan stays exact."""
    module = randomised(NodeAttention(DIM, causal=True, reduction=2, value_proj=value_proj))
    with torch.no_grad():
        module.score.weight.mul_(score_scale)
    x = torch.randn(3, L, DIM)
    y, weights = module(x, return_weights=True)
    expected, expected_weights = node_per_prefix(module, x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights["node"], expected_weights, atol=1e-6, rtol=1e-5)


def test_causal_node_counts_a_context_per_position():
    causal, plain = NodeAttention(DIM, causal=True), NodeAttention(DIM)
    r = plain.transform[0].out_features
    transform = 2 * DIM * r + 6 * r + 2 * r * DIM
    scan = 3 * (L - 1) * (DIM + 1) + 3 * (L - 2) * (DIM + 1) + 3 * (L - 4) * (DIM + 1)
    scan += 3 * (L - 8) * (DIM + 1) + L * DIM  # offsets 1, 2, 4, 8, then the divide
    pooling = 2 * L * DIM  # the non-causal weighted sum
    assert causal.flops((L,)) - plain.flops((L,)) == scan - pooling + (L - 1) * transform


# ---------------------------------------------------------------- se and cbam


def test_causal_se_equals_the_non_causal_gate_of_each_prefix():
    torch.manual_seed(0)
    causal = SqueezeExcite(DIM, causal=True, rd_ratio=0.5)
    plain = SqueezeExcite(DIM, rd_ratio=0.5)
    plain.load_state_dict(causal.state_dict())
    x = torch.randn(3, L, DIM)
    y, weights = causal(x, return_weights=True)
    expected = torch.stack([plain(x[:, : t + 1])[:, t] for t in range(L)], 1)
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights["channel"], plain(x, return_weights=True)[1]["channel"])
    n, c, r = L, DIM, causal.rd_dim
    assert causal.flops((n,)) == plain.flops((n,)) + (n - 1) * 4 * c * r


def cbam_per_prefix(module: CBAM, x: torch.Tensor) -> torch.Tensor:
    """Position t: the channel gate of the prefix's mean and max, then the spatial conv over
    positions t - k + 1 .. t (none before 0) plus its bias, written out tap by tap."""
    w1, w2 = module.mlp[0].weight, module.mlp[2].weight

    def mlp(z):
        return torch.relu(z @ w1.T) @ w2.T

    gated = torch.stack(
        [
            x[:, t] * torch.sigmoid(mlp(x[:, : t + 1].mean(1)) + mlp(x[:, : t + 1].amax(1)))
            for t in range(x.shape[1])
        ],
        dim=1,
    )
    maps = torch.stack([gated.mean(-1), gated.amax(-1)], dim=1)  # (B, 2, L)
    k = module.kernel_size
    outs = []
    for t in range(x.shape[1]):
        logit = module.spatial_bias.expand(x.shape[0])
        for tap in range(k):  # tap k - 1 is position t itself
            source = t - (k - 1) + tap
            if source >= 0:
                logit = logit + maps[:, :, source] @ module.spatial_weight[0, :, tap]
        outs.append(gated[:, t] * torch.sigmoid(logit).unsqueeze(-1))
    return torch.stack(outs, 1)


@pytest.mark.parametrize("kernel_size", [1, 3, 7])
def test_causal_cbam_equals_its_per_prefix_formula(kernel_size):
    module = randomised(CBAM(DIM, causal=True, rd_ratio=0.5, kernel_size=kernel_size))
    x = torch.randn(3, L, DIM)
    torch.testing.assert_close(module(x), cbam_per_prefix(module, x), atol=1e-5, rtol=1e-5)


def test_causal_cbam_has_no_batch_statistics():
    """No BatchNorm: a position's output is the same whatever else is in the batch."""
    module = randomised(CBAM(DIM, causal=True))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
    assert not list(module.buffers())
    x = torch.randn(4, L, DIM)
    torch.testing.assert_close(module(x)[:1], module(x[:1]), atol=1e-6, rtol=1e-5)
    mlp, conv = 2 * DIM * module.rd_dim, 2 * 7 + 1  # the conv's bias replaces the norm's affine
    assert sum(p.numel() for p in module.parameters()) == mlp + conv
