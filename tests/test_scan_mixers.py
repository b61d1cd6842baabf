"""The recurrent mixers as layers (``retnet``, ``gla``, ``mamba2``, ``deltanet``,
``gated_deltanet``): the chunk size changes the cost, not the result (one chunk is the quadratic
form, chunks of 3 the chunkwise one), causal and bidirectional, outputs and gradients in float64;
the short convolution is its formula and continues exactly from its kept inputs."""

from __future__ import annotations

import pytest
import torch

from attnexp.attention import factory
from attnexp.attention.short_conv import ShortConv
from attnexp.config.attention import attention_config

SCANS = ["retnet", "gla", "mamba2", "deltanet", "gated_deltanet"]
DIM = 16


def build(name: str, causal: bool, **keys):
    torch.manual_seed(0)
    return factory(attention_config(name))(dim=DIM, causal=causal, **keys).double()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name", SCANS)
def test_the_chunk_size_changes_the_cost_not_the_result(name, causal):
    whole, chunked = build(name, causal, chunk_size=1000), build(name, causal, chunk_size=3)
    x = torch.randn(2, 13, DIM, dtype=torch.float64, requires_grad=True)
    outs = [m(x) for m in (whole, chunked)]
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-10)
    grads = [torch.autograd.grad(out.pow(2).sum(), x)[0] for out in outs]
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-10)
    if not causal:  # bidirectional: the first position reads the last
        y = x.detach().clone()
        y[:, -1] += 1.0
        assert (whole(y)[:, 0] - outs[0][:, 0]).abs().max() > 1e-6


def test_the_short_conv_is_its_formula_and_continues_from_its_kept_inputs():
    torch.manual_seed(0)
    conv = ShortConv(3, kernel_size=4, causal=True, activation=False).double()
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    y, tail = conv(x, (9,))
    w, b = conv.conv.weight[:, 0], conv.conv.bias  # (C, k)
    for t in range(9):  # y_t = b + sum_i w_i x_{t - 3 + i}, zeros before the start
        window = [x[:, t - 3 + i] if t - 3 + i >= 0 else torch.zeros_like(x[:, 0]) for i in range(4)]
        expected = b + sum(w[:, i] * window[i] for i in range(4))
        torch.testing.assert_close(y[:, t], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(tail, x[:, -3:], rtol=0, atol=0)
    first, kept = conv(x[:, :5], (5,))
    rest, _ = conv(x[:, 5:], (4,), tail=kept)
    torch.testing.assert_close(torch.cat([first, rest], 1), y, rtol=0, atol=1e-12)


def test_a_centred_conv_on_an_image_reads_its_pixels_neighbours():
    conv = ShortConv(1, kernel_size=3, causal=False, activation=False, grid_ndim=2).double()
    with torch.no_grad():
        conv.conv.weight.fill_(1.0)
        conv.conv.bias.zero_()
    x = torch.zeros(1, 4 * 5, 1, dtype=torch.float64)
    x[0, 2 * 5 + 2] = 1.0  # the pixel at row 2, column 2 of a 4 x 5 image
    y, _ = conv(x, (4, 5))
    hit = y[0, :, 0].view(4, 5).nonzero().tolist()
    assert hit == [[r, c] for r in (1, 2, 3) for c in (1, 2, 3)]  # its 3 x 3 neighbourhood
