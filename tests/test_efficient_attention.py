"""The O(N)-memory paths of ``attend`` (fused: softmax scores through the kernel; chunked: blocks
of query rows) equal the explicit path, the reference, for every score x normalisation under every
mask, forward and backward; and they do not hold the N x M matrix."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
from torch.nn import functional as F

from attnexp.attention import design
from attnexp.attention.design import (
    FUSED_SCORES,
    NORMALIZATIONS,
    SCORES,
    AttentionCore,
    AttentionDesign,
    KeyMask,
    Scorer,
    attend,
    normalize_scores,
)
from attnexp.bench.measure import peak_memory_bytes

BATCH, HEADS, D = 2, 2, 4
GRID_1D, GRID_2D = (10,), (3, 4)


def tensors(n: int, m: int | None = None, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    shape = (BATCH, HEADS, n, D)
    q = torch.randn(shape, generator=gen, dtype=dtype)
    k, v = (torch.randn(BATCH, HEADS, m or n, D, generator=gen, dtype=dtype) for _ in range(2))
    return [t.requires_grad_() for t in (q, k, v)]


def scorer(kind: str) -> Scorer:
    torch.manual_seed(0)
    module = Scorer(kind, num_heads=HEADS, head_dim=D, additive_dim=3).double()
    if kind in ("cosine", "pearson"):  # per-head temperatures that differ, not the init's one
        with torch.no_grad():
            module.log_temperature.copy_(torch.tensor([0.3, 1.1]).log().view(HEADS, 1, 1))
    return module


def padding(m: int) -> torch.Tensor:
    real = torch.ones(BATCH, m, dtype=torch.bool)
    real[0, -3:] = False  # sample 0 has 3 padded keys at its end
    return real


# name -> (grid, KeyMask or None, key_padding or None); keys are the positions unless strided.
MASKS = {
    "none": (GRID_1D, None, None),
    "window": (GRID_1D, KeyMask(grid=GRID_1D, window=2), None),
    "window-global": (GRID_2D, KeyMask(grid=GRID_2D, window=0, global_tokens=2), None),
    "causal": (GRID_1D, KeyMask(causal=True), None),
    "causal-window": (GRID_1D, KeyMask(grid=GRID_1D, window=3, causal=True), None),
    "key-padding": (GRID_1D, None, padding(10)),
    "causal-padding": (GRID_1D, KeyMask(causal=True), padding(10)),
    # kv_stride 3 keeps positions 0, 3, 6, 9: causal over the kept keys, per sample.
    "causal-stride": (
        GRID_1D,
        KeyMask(causal=True, key_positions=torch.tensor([[0, 3, 6, 9], [0, 2, 5, 7]])),
        None,
    ),
    "stride-padding": (GRID_1D, None, padding(4)),  # 4 kept keys of 10 queries
    # sample 1 all padding: its rows see every key instead (finite, as masking.nonempty says)
    "all-padded-window": (
        GRID_1D, KeyMask(grid=GRID_1D, window=1), torch.tensor([[True] * 10, [False] * 10])
    ),
}
KEY_COUNTS = {"causal-stride": 4, "stride-padding": 4}


def run(kind, normalize, mask, key_padding, q, k, v, need_weights, block_elements=None):
    out, _ = attend(q, k, v, scorer=scorer(kind), normalize=normalize, mask=mask,
                    key_padding=key_padding, need_weights=need_weights,
                    block_elements=block_elements)  # fmt: skip
    return out


def outputs_and_grads(*args, **kwargs):
    q, k, v = tensors(args[-1], KEY_COUNTS.get(args[-2]))
    out = run(*args[:4], q, k, v, **kwargs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    return [out, *torch.autograd.grad(out, (q, k, v), grad)]


@pytest.mark.parametrize("rows", [1, 3], ids=["block1", "block3"])
@pytest.mark.parametrize("mask_name", MASKS)
@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("kind", SCORES)
def test_every_efficient_path_equals_the_explicit_one(kind, normalize, mask_name, rows):
    """Forward and the gradients of q, k, v, in float64, with blocks of 1 or 3 query rows
    (10 rows: the last block is short)."""
    grid, mask, key_padding = MASKS[mask_name]
    n, m = math.prod(grid), KEY_COUNTS.get(mask_name, math.prod(grid))
    width = 3 if kind == "additive" else 1
    block = BATCH * HEADS * m * width * rows  # block_elements that make `rows` rows a block
    args = (kind, normalize, mask, key_padding, mask_name, n)
    efficient = outputs_and_grads(*args, need_weights=False, block_elements=block)
    explicit = outputs_and_grads(*args, need_weights=True)
    for got, want in zip(efficient, explicit, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", FUSED_SCORES)
def test_fused_inputs_shift_each_score_row_by_a_constant(kind):
    """softmax is invariant to a per-row constant only: scale * q' k'^T - scores is constant
    along every row (0 except l2, where it is |q_i|^2 / sqrt(d), the dropped term)."""
    q, k, _ = tensors(5, 7)
    module = scorer(kind)
    qf, kf, scale = module.fused_inputs(q, k)
    shift = scale * qf @ kf.transpose(-2, -1) - module(q, k)
    expected = q.pow(2).sum(-1, keepdim=True) / math.sqrt(D) if kind == "l2" else 0 * shift[..., :1]
    torch.testing.assert_close(shift, expected.expand_as(shift))


def test_additive_has_no_fused_form():
    q, k, _ = tensors(3)
    with pytest.raises(ValueError, match="additive has no fused form"):
        scorer("additive").fused_inputs(q, k)


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("kind", ["dot", "l2", "additive"])
def test_padded_keys_do_not_change_the_output(kind, normalize):
    """Padding invariance on the efficient paths: new keys and values at padded positions."""
    q, k, v = tensors(10)
    real = padding(10)
    out = run(kind, normalize, None, real, q, k, v, False, block_elements=40)
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[0, :, -3:] = k2[0, :, :3]  # copies of real keys (an l2 key far off would weigh ~0)
    v2[0, :, -3:] -= 7.0
    changed = run(kind, normalize, None, real, q, k2, v2, False, block_elements=40)
    torch.testing.assert_close(out, changed)
    unpadded = run(kind, normalize, None, None, q, k2, v2, False)  # the test can fail
    assert not torch.allclose(out[0], unpadded[0])


def test_key_padding_must_be_batch_by_keys_bool():
    q, k, v = tensors(4)
    with pytest.raises(ValueError, match="key_padding must be a .batch, keys. bool"):
        attend(q, k, v, key_padding=torch.ones(BATCH, 1, 4))


def sdpa_masks(monkeypatch, call) -> list:
    """The ``attn_mask`` of every kernel call that ``call()`` makes."""
    spy = mock.Mock(wraps=F.scaled_dot_product_attention)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    call()
    return [c.kwargs.get("attn_mask") for c in spy.call_args_list]


def test_key_padding_reaches_the_kernel_as_one_broadcast_row(monkeypatch):
    q, k, v = tensors(10)
    masks = sdpa_masks(monkeypatch, lambda: attend(q, k, v, scorer=scorer("cosine"),
                                                   key_padding=padding(10), block_elements=1))  # fmt: skip
    assert [m.shape for m in masks] == [(BATCH, 1, 1, 10)]


def test_a_window_reaches_the_kernel_in_blocks_of_mask_rows_over_the_keys_they_span(monkeypatch):
    """80 = B x 4 rows x 10 keys; rows 0-3 with a window of 1 reach keys 0-4, rows 4-7 keys 3-8,
    rows 8-9 keys 7-9: windowed attention costs O(N (b + 2 w)), not O(N^2)."""
    q, k, v = tensors(10)
    window = KeyMask(grid=GRID_1D, window=1)
    masks = sdpa_masks(monkeypatch, lambda: attend(q, k, v, mask=window, block_elements=80))
    assert [m.shape for m in masks] == [(4, 5), (4, 6), (2, 3)]


def test_checkpointed_blocks_replay_their_dropout_in_backward():
    """Training with dropout on the chunked path: output and gradients equal a plain loop over
    the same blocks drawing the same dropout masks (seeded alike), so backward used the
    forward's draws."""
    q, k, v = tensors(9)
    module, p, rows = scorer("dot"), 0.5, 3
    grad = torch.randn(BATCH, HEADS, 9, D, dtype=torch.float64)
    torch.manual_seed(3)
    out, _ = attend(q, k, v, scorer=module, normalize="sigmoid", dropout_p=p, training=True,
                    block_elements=BATCH * HEADS * 9 * rows)  # fmt: skip
    got = [out, *torch.autograd.grad(out, (q, k, v), grad)]
    torch.manual_seed(3)
    blocks = []
    for i in range(0, 9, rows):
        weights = normalize_scores(module(q[..., i : i + rows, :], k), "sigmoid")
        blocks.append(F.dropout(weights, p) @ v)
    ref = torch.cat(blocks, dim=-2)
    want = [ref, *torch.autograd.grad(ref, (q, k, v), grad)]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(out, attend(q, k, v, scorer=module, normalize="sigmoid")[0])


def test_fused_dropout_acts_in_training_only():
    q, k, v = tensors(8)
    ref, _ = attend(q, k, v, scorer=scorer("l2"), need_weights=True)
    still, _ = attend(q, k, v, scorer=scorer("l2"), dropout_p=0.5, training=False)
    torch.testing.assert_close(still, ref)
    torch.manual_seed(0)
    dropped, _ = attend(q, k, v, scorer=scorer("l2"), dropout_p=0.5, training=True)
    assert not torch.allclose(dropped, ref)


# ------------------------------------------------------------------ through AttentionCore

CORE_KNOBS = [
    {"window": 1, "global_tokens": 1},
    {"kv_stride": 2},
    {"kv_stride": 3, "kv_select": "random"},
    {"qk_conv": 3, "qk_conv_padding": "valid"},
    {"rope": True},
]


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("knobs", CORE_KNOBS, ids=str)
@pytest.mark.parametrize("cell", [(s, n) for s in SCORES for n in NORMALIZATIONS], ids=str)
def test_the_core_in_small_blocks_equals_its_explicit_path(monkeypatch, cell, knobs, causal):
    """Every design cell with each key/mask knob (training mode: per-sample random keys),
    blocks of a few rows forced by a small ``BLOCK_ELEMENTS``."""
    if causal and knobs.get("qk_conv_padding") == "valid":
        return  # refused by construction (tests/test_causal_attention.py)
    monkeypatch.setattr(design, "BLOCK_ELEMENTS", 64)
    torch.manual_seed(0)
    knobs = {"score": cell[0], "normalize": cell[1], **knobs}
    core = AttentionCore(AttentionDesign(**knobs), num_heads=HEADS, head_dim=D, causal=causal)
    core = core.double().train()
    q, k, v = tensors(12)
    results = []
    for need_weights in (False, True):
        torch.manual_seed(1)  # the same random key subset for both paths
        out, _ = core(q, k, v, (12,), need_weights=need_weights)
        results.append([out, *torch.autograd.grad(out.sum(), (q, k, v))])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ memory


def step_memory(n: int, kind: str, normalize: str, need_weights: bool, mask=None) -> int:
    q, k, v = (t.float() .detach().requires_grad_() for t in tensors(n))
    module = scorer(kind).float()

    def step() -> None:
        out, _ = attend(q, k, v, scorer=module, normalize=normalize, mask=mask,
                        need_weights=need_weights, block_elements=2**16)  # fmt: skip
        out.sum().backward()

    return peak_memory_bytes(step, torch.device("cpu"))


@pytest.mark.parametrize(
    "kind,normalize,window",
    [("dot", "sigmoid", None), ("additive", "softmax", None), ("l2", "softmax", 8)],
    ids=["chunked", "chunked-additive", "fused-window"],
)
def test_memory_grows_linearly_on_the_efficient_paths(kind, normalize, window):
    """Doubling N at most ~doubles the peak of forward + backward (the N x M matrix would
    quadruple it, as the explicit path shows)."""

    def ratio(need_weights: bool) -> float:
        masks = [None if window is None else KeyMask(grid=(n,), window=window) for n in (128, 256)]
        small, large = (step_memory(n, kind, normalize, need_weights, mask)
                        for n, mask in zip((128, 256), masks, strict=True))  # fmt: skip
        return large / small

    assert ratio(need_weights=False) < 2.5
    assert ratio(need_weights=True) > 3.5
