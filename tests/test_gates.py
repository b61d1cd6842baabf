"""``se`` and ``cbam`` against their formulas written out here; the rd_ratio rounding rule."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from attnexp.attention.base import make_divisible
from attnexp.attention.cbam import CBAM
from attnexp.attention.se import SqueezeExcite


@pytest.mark.parametrize(
    "value,expected", [(4.0, 8), (0.5, 8), (12.5, 16), (16.0, 16), (20.0, 24), (36.0, 40)]
)
def test_make_divisible_rounds_to_eight_never_below_eight(value, expected):
    assert make_divisible(value) == expected


@pytest.mark.parametrize("dim,rd_dim", [(64, 8), (256, 16), (200, 16), (1024, 64)])
def test_bottleneck_width_follows_rd_ratio_rule(dim, rd_dim):
    assert SqueezeExcite(dim=dim).rd_dim == rd_dim
    assert CBAM(dim=dim).rd_dim == rd_dim


@pytest.mark.parametrize("shape", [(2, 9, 32), (3, 7, 5, 32)])
def test_se_equals_formula(shape):
    torch.manual_seed(0)
    module = SqueezeExcite(dim=32, rd_ratio=0.25)
    x = torch.randn(*shape)
    squeezed = x.reshape(shape[0], -1, 32).mean(1)
    hidden = torch.relu(squeezed @ module.fc1.weight.T + module.fc1.bias)
    gate = torch.sigmoid(hidden @ module.fc2.weight.T + module.fc2.bias)
    expected = x * gate.reshape(shape[0], *[1] * (len(shape) - 2), 32)
    y, weights = module(x, return_weights=True)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(weights["channel"], gate)


def test_se_output_over_input_is_constant_over_the_grid():
    torch.manual_seed(0)
    x = torch.rand(2, 5, 6, 16) + 0.5  # away from zero so the ratio is well conditioned
    ratio = SqueezeExcite(dim=16)(x) / x
    torch.testing.assert_close(ratio, ratio[:, :1, :1].expand_as(ratio))


def cbam_formula(module: CBAM, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel gate then spatial gate, written with the module's weights (BN in eval mode)."""
    w1, w2 = module.mlp[0].weight, module.mlp[2].weight
    flat = x.reshape(x.shape[0], -1, x.shape[-1])

    def mlp(z):
        return torch.relu(z @ w1.T) @ w2.T

    channel = torch.sigmoid(mlp(flat.mean(1)) + mlp(flat.amax(1)))
    x = x * channel.reshape(x.shape[0], *[1] * (x.dim() - 2), x.shape[-1])
    maps = torch.stack([x.mean(-1), x.amax(-1)], dim=1)  # (B, 2, *grid)
    k = module.kernel_size
    if x.dim() == 3:
        logits = F.conv1d(maps, module.spatial_weight[:, :, k // 2], padding=k // 2)
    else:
        logits = F.conv2d(maps, module.spatial_weight, padding=k // 2)
    bn = module.spatial_norm
    normed = (logits - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    spatial = torch.sigmoid(normed[:, 0])
    return x * spatial.unsqueeze(-1), spatial


@pytest.mark.parametrize("shape", [(2, 11, 32), (2, 7, 5, 32), (1, 9, 9, 32)])
def test_cbam_equals_formula(shape):
    torch.manual_seed(0)
    module = CBAM(dim=32, rd_ratio=0.25, kernel_size=7)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine
        module.spatial_norm.running_mean.fill_(0.3)
        module.spatial_norm.running_var.fill_(2.0)
        module.spatial_norm.weight.fill_(1.5)
        module.spatial_norm.bias.fill_(-0.2)
    module.eval()
    x = torch.randn(*shape)
    expected, spatial = cbam_formula(module, x)
    y, weights = module(x, return_weights=True)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights["spatial"], spatial, atol=1e-6, rtol=1e-5)
    assert weights["channel"].shape == (shape[0], 32)
    assert weights["spatial"].shape == shape[:-1]


def test_cbam_kernel_size_3_on_images():
    torch.manual_seed(0)
    module = CBAM(dim=16, kernel_size=3).eval()
    x = torch.randn(2, 4, 6, 16)
    torch.testing.assert_close(module(x), cbam_formula(module, x)[0], atol=1e-5, rtol=1e-5)


def test_gate_flops_match_hand_count():
    n, c = 7 * 5, 64
    assert SqueezeExcite(dim=c).flops((7, 5)) == n * c + 2 * 2 * c * 8 + n * c
    channel = 2 * n * c + 2 * (2 * 2 * c * 8) + n * c
    spatial = 2 * n * c + 2 * n * 2 * 49 + n * c
    assert CBAM(dim=c).flops((7, 5)) == channel + spatial
    assert CBAM(dim=c).flops((35,)) == channel + 2 * n * c + 2 * n * 2 * 7 + n * c
