"""The recurrences of the sub-quadratic mixers (``attnexp.attention.recurrence``): their forms
agree to 1e-5 in float64, outputs and gradients; a carried state continues a sequence exactly;
and the limiting cases reduce to what they must (no decay: causal linear attention; the delta
rule with orthonormal keys stores and returns each value)."""

from __future__ import annotations

import pytest
import torch

from attnexp.attention.recurrence import (
    delta_chunkwise,
    delta_quadratic,
    delta_recurrent,
    gla_chunkwise,
    gla_quadratic,
    gla_recurrent,
)

B, H, N, DK, DV = 2, 3, 37, 5, 4  # N not a multiple of the chunk
TOL = {"atol": 1e-5, "rtol": 1e-5}


def inputs(decay: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """float64 q, k, v and log decays ``g <= 0``: per key feature, per head, or none (zeros)."""
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, N, DK, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, H, N, DV, generator=gen, dtype=torch.float64)
    width = {"feature": DK, "head": 1, "none": 1}[decay]
    g = -torch.rand(B, H, N, width, generator=gen, dtype=torch.float64) * (decay != "none")
    return {name: t.requires_grad_() for name, t in dict(q=q, k=k, v=v, g=g).items()}


def grads(out: torch.Tensor, tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    return torch.autograd.grad((out * weights).sum(), list(tensors.values()), allow_unused=True)


@pytest.mark.parametrize("decay", ["feature", "head", "none"])
def test_gated_linear_attention_forms_agree_outputs_and_gradients(decay):
    """Chunks of 8, and one chunk of 37 rows, which a decay per key feature splits into
    sub-blocks of 16, 16 and 5 (the quadratic form too)."""
    x = inputs(decay)
    reference, _ = gla_recurrent(**x)
    expected = grads(reference, x)
    for out in (gla_quadratic(**x), gla_chunkwise(**x, chunk_size=8)[0], gla_chunkwise(**x, chunk_size=64)[0]):
        torch.testing.assert_close(out, reference, **TOL)
        for mine, theirs in zip(grads(out, x), expected, strict=True):
            torch.testing.assert_close(mine, theirs, **TOL)


def test_no_decay_is_causal_linear_attention_and_a_carried_state_continues_exactly():
    x = inputs("none")
    plain = (x["q"] @ x["k"].transpose(-1, -2)).tril() @ x["v"]  # sum_{j <= i} (q_i . k_j) v_j
    torch.testing.assert_close(gla_chunkwise(**x, chunk_size=16)[0], plain, **TOL)
    y = inputs("feature", seed=1)
    whole, final = gla_chunkwise(**y, chunk_size=8)
    first, middle = gla_chunkwise(**{n: t[..., :20, :] for n, t in y.items()}, chunk_size=8)
    rest, last = gla_recurrent(**{n: t[..., 20:, :] for n, t in y.items()}, state=middle)
    torch.testing.assert_close(torch.cat([first, rest], dim=-2), whole, **TOL)
    torch.testing.assert_close(last, final, **TOL)


def delta_inputs(gated: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, DK, generator=gen, dtype=torch.float64)
    k = torch.nn.functional.normalize(torch.randn(B, H, N, DK, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(B, H, N, DV, generator=gen, dtype=torch.float64)
    beta = torch.rand(B, H, N, generator=gen, dtype=torch.float64)
    x = dict(q=q, k=k, v=v, beta=beta)
    if gated:
        x["g"] = -torch.rand(B, H, N, generator=gen, dtype=torch.float64)
    return {name: t.requires_grad_() for name, t in x.items()}


@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated_deltanet"])
def test_delta_rule_wy_and_quadratic_forms_equal_the_recurrence(gated):
    x = delta_inputs(gated)
    reference, final = delta_recurrent(**x)
    out, state = delta_chunkwise(**x, chunk_size=8)
    torch.testing.assert_close(state, final, **TOL)
    expected = grads(reference, x)
    for form in (out, delta_quadratic(**x)):  # the WY form, and the map times the values
        torch.testing.assert_close(form, reference, **TOL)
        for mine, theirs in zip(grads(form, x), expected, strict=True):
            torch.testing.assert_close(mine, theirs, **TOL)


def test_the_delta_rule_with_orthonormal_keys_stores_each_value_and_overwrites_it():
    keys = torch.eye(DK, dtype=torch.float64)[None, None]  # (1, 1, DK, DK): orthonormal
    values = torch.randn(1, 1, DK, DV, dtype=torch.float64)
    again = torch.randn(1, 1, 1, DV, dtype=torch.float64)  # key 0 written a second time
    k = torch.cat([keys, keys[..., :1, :]], dim=-2)
    v = torch.cat([values, again], dim=-2)
    beta = torch.ones(1, 1, DK + 1, dtype=torch.float64)
    _, state = delta_chunkwise(k, k, v, beta, chunk_size=4)
    read = keys[0, 0] @ state[0, 0]  # query each key
    torch.testing.assert_close(read[1:], values[0, 0, 1:])  # the others kept
    torch.testing.assert_close(read[:1], again[0, 0])  # beta = 1 replaces, linear attention would add
