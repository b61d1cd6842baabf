"""The convolutional mixers (``hyena``, ``base_conv``) and ``based``'s pieces: the FFT convolution
equals the sum it computes (causal on a sequence, centred in 2-D on an image), Hyena's filter decays
as its parameters say, BaseConv's and Based's blocks follow their pattern by layer, and the Taylor
feature map's dot product is its expansion of exp."""

from __future__ import annotations

import math

import pytest
import torch

from attnexp.attention import factory
from attnexp.attention.based import taylor_features
from attnexp.attention.long_conv import ImplicitFilter, long_conv
from attnexp.config.attention import attention_config


def test_the_causal_fft_convolution_is_the_sum_over_the_past():
    torch.manual_seed(0)
    u, h = torch.randn(2, 3, 11, dtype=torch.float64), torch.randn(3, 11, dtype=torch.float64)
    expected = torch.zeros_like(u)
    for t in range(11):
        for s in range(t + 1):
            expected[..., t] += h[:, t - s] * u[..., s]
    torch.testing.assert_close(long_conv(u, h, causal=True), expected, rtol=0, atol=1e-12)


def test_the_centred_fft_convolution_on_an_image_is_the_sum_over_every_offset():
    torch.manual_seed(0)
    u = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    h = torch.randn(3, 7, 9, dtype=torch.float64)  # offsets -3..3 and -4..4
    expected = torch.zeros_like(u)
    for y in range(4):
        for x in range(5):
            for sy in range(4):
                for sx in range(5):
                    expected[..., y, x] += h[:, y - sy + 3, x - sx + 4] * u[..., sy, sx]
    torch.testing.assert_close(long_conv(u, h, causal=False), expected, rtol=0, atol=1e-12)


def test_hyenas_filter_decays_from_one_percent_at_one_and_a_half_to_point_three_lengths():
    """Hyena's modulation: channel c is scaled by exp(-|delta_c| r), r = offset / max_len, with
    |delta| from log(100)/1.5 to log(100)/0.3: at r = 1 the slowest channel keeps 100^(-1/1.5)."""
    filt = ImplicitFilter(4, 1, max_len=10, hidden=8, inner_layers=0, activation="sin", modulate=True).double()
    plain = ImplicitFilter(4, 1, max_len=10, hidden=8, inner_layers=0, activation="sin", modulate=False).double()
    plain.mlp.load_state_dict(filt.mlp.state_dict(), strict=False)
    with torch.no_grad():
        plain.mlp[-1].bias.zero_()  # the modulated filter's last layer has no bias
    ratio = filt((11,), True, torch.float64)[:, 10] / plain((11,), True, torch.float64)[:, 10]
    expected = torch.tensor([100 ** (-1 / 1.5), 100 ** (-1 / 0.3)], dtype=torch.float64)
    torch.testing.assert_close(ratio[[0, -1]], expected, rtol=1e-6, atol=0)  # offsets in float32


def test_base_conv_cycles_its_kernels_over_the_layers_and_refuses_a_bad_one():
    build = factory(attention_config("base_conv"))
    kinds = [build(dim=8, layer=i).kernel_size for i in range(4)]
    assert kinds == [3, -1, 3, -1]
    assert build(dim=8, layer=0).decodable is False  # not causal
    assert build(dim=8, causal=True, layer=0).decodable and not build(dim=8, causal=True, layer=1).decodable
    with pytest.raises(ValueError, match=r"kernel_by_layer must be a non-empty list of widths >= 1 or -1"):
        build(dim=8, kernel_by_layer=[0])


def test_based_picks_its_block_by_layer_and_refuses_an_unknown_kind():
    build = factory(attention_config("based"))
    kinds = [build(dim=8, layer=i, pattern=["conv", "taylor", "window"]).layer_kind for i in range(4)]
    assert kinds == ["conv", "taylor", "window", "conv"]
    with pytest.raises(ValueError, match="pattern must be a non-empty list of conv, taylor, window; got"):
        build(dim=8, pattern=["mamba"])


def test_the_taylor_feature_map_expands_exp_to_second_order():
    torch.manual_seed(0)
    q, k = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    s = (q * k).sum(-1) / math.sqrt(8)
    expected = 1 + s + s**2 / 2
    torch.testing.assert_close((taylor_features(q) * taylor_features(k)).sum(-1), expected)
