"""Knobs of current language models' attention (docs/design_space.md): grouped-query attention
(``num_kv_heads``), ``qk_norm``, ``softcap``, ``sink``, ``alibi``, the output ``gate``,
``forget_gate``, ``softpick``, ``stick_breaking``, ``differential`` and ``kv_latent_dim``. Each is checked against its formula written out in float64,
at its limiting case against plain ``mha``, on every path (fused, chunked, explicit), causal and
with padding."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from attnexp.attention import factory
from attnexp.config.attention import attention_config, create

DIM, HEADS = 16, 4


def build(causal: bool = False, **knobs):
    """``mha`` as the backbone builds it (its yaml's defaults, then ``knobs``), in float64."""
    torch.manual_seed(0)
    return factory(attention_config("mha"))(dim=DIM, causal=causal, **knobs).double()


def explicit(
    module, x: torch.Tensor, norm=None, causal: bool = False, softcap: float | None = None,
    sink: torch.Tensor | None = None, slopes: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """mha written out: projections, each query head h with key/value head h // group, optional
    per-head norm of q and k, softmax(q.k / sqrt(d), capped: c tanh(s / c)) v, output projection."""
    d, kv = module.head_dim, module.num_kv_heads
    q, k, v = F.linear(x, module.qkv.weight, module.qkv.bias).split(
        [HEADS * d, kv * d, kv * d], dim=-1
    )
    q = q.unflatten(-1, (HEADS, d)).transpose(1, 2)
    k, v = (t.unflatten(-1, (kv, d)).transpose(1, 2) for t in (k, v))
    group = HEADS // kv
    k, v = k[:, [h // group for h in range(HEADS)]], v[:, [h // group for h in range(HEADS)]]
    if norm is not None:
        q, k = norm(q, module.core.q_norm), norm(k, module.core.k_norm)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)
    n = x.shape[1]
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if slopes is not None:
        distance = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs()
        scores = scores - slopes.view(-1, 1, 1) * distance
    if causal:
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf)
    if sink is None:
        weights = scores.softmax(-1)
    else:  # written out: e^s / (e^b + sum e^s)
        weights = scores.exp() / (sink.exp().view(-1, 1, 1) + scores.exp().sum(-1, keepdim=True))
    out = weights @ v  # (B, h, N, d)
    if module.gate is not None:  # sigmoid(x W_g), per head (B, N, h) or per feature (B, N, h d)
        gates = torch.sigmoid(x @ module.gate.weight.T)
        out = out * gates.unflatten(-1, (HEADS, -1)).transpose(1, 2)
    return F.linear(out.transpose(1, 2).flatten(2), module.proj.weight, module.proj.bias)


def assert_paths_agree(module) -> None:
    """The module's own path (fused or chunked) equals the explicit one (``return_weights``), in
    outputs and input gradients."""
    x = torch.randn(2, 11, DIM, dtype=torch.float64, requires_grad=True)
    fast = module(x)
    (grad_fast,) = torch.autograd.grad(fast.sum(), x)
    slow, _ = module(x, return_weights=True)
    (grad_slow,) = torch.autograd.grad(slow.sum(), x)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)
    torch.testing.assert_close(grad_fast, grad_slow, rtol=0, atol=1e-10)


def rms(t, layer):
    return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + layer.eps) * layer.weight


def layer_norm(t, layer):
    mean, var = t.mean(-1, keepdim=True), t.var(-1, unbiased=False, keepdim=True)
    return (t - mean) / torch.sqrt(var + layer.eps) * layer.weight + layer.bias


# --------------------------------------------------------------------------- grouped-query


@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_grouped_query_attention_is_its_formula(kv_heads, causal):
    module = build(causal, num_kv_heads=kv_heads)
    x = torch.randn(2, 7, DIM, dtype=torch.float64)
    torch.testing.assert_close(module(x), explicit(module, x, causal=causal), rtol=0, atol=1e-10)
    assert module.qkv.out_features == DIM + 2 * kv_heads * module.head_dim


def test_as_many_kv_heads_as_heads_is_plain_mha_with_the_same_weights():
    plain, grouped = build(), build(num_kv_heads=HEADS)
    grouped.load_state_dict(plain.state_dict())
    x = torch.randn(2, 9, DIM, dtype=torch.float64)
    torch.testing.assert_close(grouped(x), plain(x), rtol=0, atol=0)


def test_kv_heads_must_divide_the_heads_naming_both():
    with pytest.raises(ValueError, match="num_kv_heads=3 must divide num_heads=4"):
        create("mha", DIM, num_kv_heads=3)
    with pytest.raises(ValueError, match="num_kv_heads must be a positive integer"):
        create("mha", DIM, num_kv_heads=0)


def test_grouped_query_attention_runs_in_muse_and_counts_fewer_projection_flops():
    plain, grouped = create("mha", DIM), create("mha", DIM, num_kv_heads=1)
    n, d = 10, DIM // HEADS
    assert plain.flops((n,)) - grouped.flops((n,)) == 2 * n * DIM * 2 * (DIM - d)
    muse = create("muse", DIM, num_kv_heads=2)
    assert muse(torch.randn(2, n, DIM)).shape == (2, n, DIM)


# --------------------------------------------------------------------------- qk_norm


@pytest.mark.parametrize(("kind", "norm"), [("rms", rms), ("layer", layer_norm)])
@pytest.mark.parametrize("kv_heads", [None, 2])
def test_qk_norm_is_its_formula(kind, norm, kv_heads):
    module = build(qk_norm=kind, num_kv_heads=kv_heads)
    with torch.no_grad():  # gains (and biases) away from their initial 1 (and 0)
        for layer in (module.core.q_norm, module.core.k_norm):
            layer.weight.uniform_(0.5, 2.0)
            if getattr(layer, "bias", None) is not None:
                layer.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 7, DIM, dtype=torch.float64)
    torch.testing.assert_close(module(x), explicit(module, x, norm), rtol=0, atol=1e-10)


@pytest.mark.parametrize("normalize", ["softmax", "sigmoid", "max"])
def test_qk_norm_paths_agree_with_the_explicit_one(normalize):
    module = build(qk_norm="rms", normalize=normalize, window=2)
    assert_paths_agree(module)


def test_rms_qk_norm_bounds_every_logit_by_the_head_width():
    """|q'.k'| / sqrt(d) <= |q'||k'| / sqrt(d) = sqrt(d) with unit gains, however large x is."""
    module = build(qk_norm="rms")
    x = 1e4 * torch.randn(1, 12, DIM, dtype=torch.float64)
    _, weights = module(x, return_weights=True)
    d = module.head_dim
    # the largest logit shows as the ratio of the largest to the smallest weight of a row
    spread = (weights["attn"].log().amax(-1) - weights["attn"].log().amin(-1)).max()
    assert spread <= 2 * math.sqrt(d) + 1e-9
    plain = build()
    _, plain_weights = plain(x, return_weights=True)
    assert (plain_weights["attn"].amax(-1) > 0.999).any()  # without it: one-hot rows


@pytest.mark.parametrize("knobs", [{"qk_norm": "rms"}, {"qk_norm": "layer", "num_kv_heads": 2},
                                   {"num_kv_heads": 1, "rope": True},
                                   {"softcap": 2.0, "window": 3}, {"softcap": 5.0, "qk_norm": "rms"},
                                   {"sink": True, "window": 2}, {"alibi": True, "num_kv_heads": 2},
                                   {"alibi": True, "sink": True, "normalize": "softmax"},
                                   {"alibi": True, "normalize": "sigmoid"},
                                   {"gate": "headwise"}, {"gate": "elementwise", "num_kv_heads": 2}])  # fmt: skip
def test_causal_and_padding_hold_with_the_knobs(knobs):
    assert_causal(build(True, **knobs).eval())
    assert_padding_invariant(build(**knobs).eval())


def assert_causal(module) -> None:
    """Inputs after position 5 leave the outputs up to it unchanged."""
    x = torch.randn(2, 8, DIM, dtype=torch.float64)
    later = x.clone()
    later[:, 5:] = torch.randn(2, 3, DIM, dtype=torch.float64)
    torch.testing.assert_close(module(x)[:, :5], module(later)[:, :5], rtol=0, atol=1e-12)


def assert_padding_invariant(module) -> None:
    """Three padded positions appended leave the real ones' outputs unchanged."""
    x = torch.randn(2, 8, DIM, dtype=torch.float64)
    padded = torch.cat([x, torch.randn(2, 3, DIM, dtype=torch.float64)], dim=1)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[:, 8:] = False
    torch.testing.assert_close(module(padded, mask)[:, :8], module(x), rtol=0, atol=1e-10)


def test_a_bad_qk_norm_or_softcap_is_refused_by_name():
    with pytest.raises(ValueError, match="qk_norm must be one of rms, layer; got 'l2'"):
        create("mha", DIM, qk_norm="l2")
    for bad in (0, -1.0, "abc", math.inf):
        with pytest.raises(ValueError, match="softcap must be null"):
            create("mha", DIM, softcap=bad)


# --------------------------------------------------------------------------- softcap


@pytest.mark.parametrize("causal", [False, True])
def test_softcap_is_its_formula(causal):
    module = build(causal, softcap=0.5)  # small: most scores are bent
    x = torch.randn(2, 7, DIM, dtype=torch.float64)
    torch.testing.assert_close(
        module(x), explicit(module, x, causal=causal, softcap=0.5), rtol=0, atol=1e-10
    )


def test_an_unbounded_softcap_is_plain_mha():
    plain, capped = build(), build(softcap=1e12)
    capped.load_state_dict(plain.state_dict())
    x = torch.randn(2, 9, DIM, dtype=torch.float64)
    torch.testing.assert_close(capped(x), plain(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("normalize", ["softmax", "sigmoid", "max"])
def test_softcap_paths_agree_with_the_explicit_one(normalize):
    module = build(softcap=1.5, normalize=normalize, window=2, global_tokens=1)
    assert_paths_agree(module)


def test_softcap_bounds_every_logit():
    module = build(softcap=3.0)
    _, weights = module(1e4 * torch.randn(1, 12, DIM, dtype=torch.float64), return_weights=True)
    spread = (weights["attn"].log().amax(-1) - weights["attn"].log().amin(-1)).max()
    assert spread <= 2 * 3.0 + 1e-9


# --------------------------------------------------------------------------- sink


def with_sink(module, values):
    with torch.no_grad():
        module.core.sink.copy_(torch.as_tensor(values, dtype=torch.float64))
    return module


@pytest.mark.parametrize("causal", [False, True])
def test_sink_is_its_formula(causal):
    module = with_sink(build(causal, sink=True), [-1.0, 0.0, 1.0, 2.5])
    x = torch.randn(2, 7, DIM, dtype=torch.float64)
    expected = explicit(module, x, causal=causal, sink=module.core.sink.detach())
    torch.testing.assert_close(module(x), expected, rtol=0, atol=1e-10)


def test_a_sink_at_minus_infinity_is_plain_mha_and_a_high_one_takes_weight_from_the_keys():
    plain, sunk = build(), with_sink(build(sink=True), [-1e4] * HEADS)
    x = torch.randn(2, 9, DIM, dtype=torch.float64)
    torch.testing.assert_close(sunk(x), plain(x), rtol=0, atol=1e-10)
    _, weights = with_sink(sunk, [0.0, 1.0, 2.0, 3.0])(x, return_weights=True)
    totals = weights["attn"].sum(-1)  # (B, h, N): below 1, less the higher the sink
    assert (totals < 1).all() and (totals[:, 1:] < totals[:, :-1]).all()


def test_a_sink_needs_softmax_naming_both_keys():
    with pytest.raises(ValueError, match="sink .* needs normalize=softmax, got normalize=sigmoid"):
        create("mha", DIM, sink=True, normalize="sigmoid")


# --------------------------------------------------------------------------- alibi


@pytest.mark.parametrize("causal", [False, True])
def test_alibi_is_its_formula(causal):
    module = build(causal, alibi=True)
    slopes = torch.tensor([2.0 ** (-8 * h / HEADS) for h in range(1, HEADS + 1)], dtype=torch.float64)
    torch.testing.assert_close(module.core.alibi_slopes, slopes, rtol=0, atol=0)
    x = torch.randn(2, 7, DIM, dtype=torch.float64)
    expected = explicit(module, x, causal=causal, slopes=slopes)
    torch.testing.assert_close(module(x), expected, rtol=0, atol=1e-10)


def test_alibi_with_zero_slopes_is_plain_mha():
    plain, biased = build(), build(alibi=True)
    biased.core.alibi_slopes.zero_()
    x = torch.randn(2, 9, DIM, dtype=torch.float64)
    torch.testing.assert_close(biased(x), plain(x), rtol=0, atol=1e-10)


def test_alibi_is_refused_without_aligned_keys_or_on_images():
    with pytest.raises(ValueError, match="alibi .* kv_stride=2"):
        create("mha", DIM, alibi=True, kv_stride=2)
    with pytest.raises(ValueError, match="alibi .* needs grid_ndim=1, got 2"):
        create("mha", DIM, 2, alibi=True)


@pytest.mark.parametrize(
    "knobs",
    [{"sink": True}, {"alibi": True}, {"alibi": True, "normalize": "max"},
     {"alibi": True, "sink": True, "softcap": 2.0, "score": "cosine"}],
)  # fmt: skip
def test_sink_and_alibi_paths_agree_with_the_explicit_one(knobs):
    module = build(window=3, global_tokens=1, **knobs)
    if module.core.sink is not None:
        with_sink(module, [0.5, -0.5, 1.0, 0.0])
    assert_paths_agree(module)


@pytest.mark.parametrize("normalize", ["softmax", "sigmoid"])
@pytest.mark.parametrize("causal", [False, True])
def test_score_changes_hold_across_blocks_of_query_rows(normalize, causal):
    """The chunked path in blocks of 2 query rows: each block's ALiBi distances start at its own
    first row (a wrong offset would shift them)."""
    from attnexp.attention.design import alibi_slopes

    torch.manual_seed(0)
    sink = torch.randn(HEADS, dtype=torch.float64) if normalize == "softmax" else None
    assert_blocks_agree(normalize=normalize, is_causal=causal, softcap=2.0, sink=sink,
                        alibi=alibi_slopes(HEADS).double())  # fmt: skip


def assert_blocks_agree(**knobs) -> None:
    """``attend`` in blocks of 2 query rows equals the whole matrix, outputs and gradients."""
    from attnexp.attention.design import attend

    q, k, v = (torch.randn(2, HEADS, 9, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    blocked, _ = attend(q, k, v, block_elements=2 * HEADS * 2 * 9, **knobs)
    whole, _ = attend(q, k, v, need_weights=True, **knobs)
    torch.testing.assert_close(blocked, whole, rtol=0, atol=1e-10)
    grads = [torch.autograd.grad(out.sum(), (q, k, v)) for out in (blocked, whole)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- gate


@pytest.mark.parametrize("gate", ["headwise", "elementwise"])
@pytest.mark.parametrize("causal", [False, True])
def test_the_output_gate_is_its_formula(gate, causal):
    module = build(causal, gate=gate)
    assert module.gate.out_features == (HEADS if gate == "headwise" else DIM)
    x = torch.randn(2, 7, DIM, dtype=torch.float64)
    torch.testing.assert_close(module(x), explicit(module, x, causal=causal), rtol=0, atol=1e-10)


def test_a_gate_at_one_half_halves_the_attention_output_and_muse_takes_it():
    module = build(gate="headwise")
    with torch.no_grad():
        module.gate.weight.zero_()  # sigmoid(0) = 1/2 for every head
    plain = build()
    plain.load_state_dict({k: v for k, v in module.state_dict().items() if not k.startswith("gate")})
    x = torch.randn(2, 5, DIM, dtype=torch.float64)
    bias = module.proj.bias  # the gate halves what goes into the output projection
    torch.testing.assert_close(2 * (module(x) - bias), plain(x) - bias, rtol=0, atol=1e-12)
    assert create("muse", DIM, gate="elementwise")(torch.randn(2, 5, DIM)).shape == (2, 5, DIM)
    with pytest.raises(ValueError, match="gate must be null .* headwise, elementwise, got 'yes'"):
        create("mha", DIM, gate="yes")


# --------------------------------------------------------------------------- forget_gate


def log_forget_written_out(module, x):
    """log sigmoid(w_h . x_l + b_h), (B, h, N)."""
    return torch.log(torch.sigmoid(x @ module.forget.weight.T + module.forget.bias)).transpose(1, 2)


def forgetting_scores(scores, log_f):
    """s_ij + sum_{l = j+1..i} log f_l, summed term by term (no cumulative trick)."""
    n = scores.shape[-1]
    bias = torch.zeros_like(scores)
    for i in range(n):
        for j in range(i + 1):
            bias[..., i, j] = log_f[..., j + 1 : i + 1].sum(-1)
    return scores + bias


def heads_of(module, x):
    """q, k, v (B, h, N, d) of a module without grouping, straight from its projection."""
    d = module.head_dim
    q, k, v = F.linear(x, module.qkv.weight, module.qkv.bias).split([HEADS * d] * 3, dim=-1)
    return (t.unflatten(-1, (HEADS, d)).transpose(1, 2) for t in (q, k, v))


def project(module, out):
    return F.linear(out.transpose(1, 2).flatten(2), module.proj.weight, module.proj.bias)


def test_the_forget_gate_is_its_formula():
    module = build(True, forget_gate=True)
    with torch.no_grad():
        module.forget.bias.uniform_(-2.0, 2.0)
    x = torch.randn(2, 7, DIM, dtype=torch.float64)
    q, k, v = heads_of(module, x)
    scores = forgetting_scores(q @ k.transpose(-2, -1) / math.sqrt(module.head_dim), log_forget_written_out(module, x))
    n = x.shape[1]
    weights = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf).softmax(-1)
    torch.testing.assert_close(module(x), project(module, weights @ v), rtol=0, atol=1e-10)


def test_a_forget_gate_that_always_keeps_is_causal_mha():
    plain, forgetting = build(True), build(True, forget_gate=True)
    forgetting.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():  # f = sigmoid(40) = 1 - 4e-18: log f rounds to 0 in float64
        forgetting.forget.weight.zero_()
        forgetting.forget.bias.fill_(40.0)
    x = torch.randn(2, 9, DIM, dtype=torch.float64)
    torch.testing.assert_close(forgetting(x), plain(x), rtol=0, atol=1e-12)


def test_the_forget_gate_and_stick_breaking_are_refused_where_they_cannot_be():
    for knobs, key in (({"forget_gate": True}, "forget_gate"),
                       ({"normalize": "stick_breaking"}, "normalize=stick_breaking")):  # fmt: skip
        with pytest.raises(ValueError, match=f"{key} is causal by nature .* needs causal=True"):
            create("mha", DIM, **knobs)
        with pytest.raises(ValueError, match=f"{key} .* kv_stride=2 .* use kv_stride=1"):
            build(True, kv_stride=2, **knobs)
    with pytest.raises(ValueError, match="sink .* needs normalize=softmax, got normalize=stick_breaking"):
        build(True, sink=True, normalize="stick_breaking")


# --------------------------------------------------------------------------- softpick


def softpick_written_out(scores, allowed):
    """ReLU(e^s - 1) / (sum over the allowed keys of |e^s - 1| + eps), straight from the paper."""
    from attnexp.attention.design import SOFTPICK_EPS

    e = torch.where(allowed, scores.exp() - 1, torch.zeros_like(scores))
    return e.clamp(min=0) / (e.abs().sum(-1, keepdim=True) + SOFTPICK_EPS)


@pytest.mark.parametrize("causal", [False, True])
def test_softpick_is_its_formula_over_the_allowed_keys_only(causal):
    module = build(causal, normalize="softpick", window=3)
    x = 3 * torch.randn(2, 9, DIM, dtype=torch.float64)  # scores of both signs and some large
    q, k, v = heads_of(module, x)
    n = x.shape[1]
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    allowed = ((i - j).abs() <= 3) & ((j <= i) if causal else True)
    weights = softpick_written_out(q @ k.transpose(-2, -1) / math.sqrt(module.head_dim), allowed)
    out, maps = module(x, return_weights=True)
    torch.testing.assert_close(maps["attn"], weights, rtol=0, atol=1e-12)
    torch.testing.assert_close(module(x), project(module, weights @ v), rtol=0, atol=1e-10)
    assert (maps["attn"].sum(-1) <= 1 + 1e-12).all() and (maps["attn"] == 0).any()  # rows may give up weight


def test_softpick_stays_finite_where_its_exponentials_would_overflow():
    from attnexp.attention.design import normalize_scores

    scores = torch.tensor([[800.0, 799.0, -5.0, 0.0]], dtype=torch.float32, requires_grad=True)
    weights = normalize_scores(scores, "softpick")
    expected = torch.tensor([[1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1)), 0.0, 0.0]])
    torch.testing.assert_close(weights.detach(), expected, rtol=1e-6, atol=0)
    weights.sum().backward()
    assert torch.isfinite(scores.grad).all()


# --------------------------------------------------------------------------- stick_breaking


def stick_breaking_written_out(scores):
    """a_ij = sigmoid(z_ij) prod_{j<k<i} (1 - sigmoid(z_ik)) for j < i, a product term by term."""
    weights = torch.zeros_like(scores)
    n = scores.shape[-1]
    p = torch.sigmoid(scores)
    for i in range(n):
        for j in range(i):
            weights[..., i, j] = p[..., i, j] * torch.prod(1 - p[..., i, j + 1 : i], dim=-1)
    return weights


def test_stick_breaking_is_its_formula_and_a_query_never_attends_to_itself():
    module = build(True, normalize="stick_breaking")
    x = 2 * torch.randn(2, 8, DIM, dtype=torch.float64)
    q, k, v = heads_of(module, x)
    weights = stick_breaking_written_out(q @ k.transpose(-2, -1) / math.sqrt(module.head_dim))
    _, maps = module(x, return_weights=True)
    torch.testing.assert_close(maps["attn"], weights, rtol=0, atol=1e-12)
    torch.testing.assert_close(module(x), project(module, weights @ v), rtol=0, atol=1e-10)
    assert (maps["attn"].diagonal(dim1=-2, dim2=-1) == 0).all()
    assert (maps["attn"][..., 0, :] == 0).all()  # the first query has no key before it
    assert (maps["attn"].sum(-1) <= 1 + 1e-12).all()


# --------------------------------------------------------------------------- differential


def test_differential_attention_is_its_formula():
    module = build(True, differential=True, layer=2)
    assert module.lambda_init == pytest.approx(0.8 - 0.6 * math.exp(-0.6))
    x = torch.randn(2, 7, DIM, dtype=torch.float64)
    q, k, v = heads_of(module, x)
    half, n = module.head_dim // 2, x.shape[1]
    future = ~torch.ones(n, n, dtype=torch.bool).tril()

    def softmax_map(a, b):
        return (a @ b.transpose(-2, -1) / math.sqrt(half)).masked_fill(future, -math.inf).softmax(-1)

    first, second = softmax_map(q[..., :half], k[..., :half]), softmax_map(q[..., half:], k[..., half:])
    p = {name: t.detach() for name, t in module.lambdas.items()}
    lam = torch.exp(p["q1"] @ p["k1"]) - torch.exp(p["q2"] @ p["k2"]) + module.lambda_init
    out = (first - lam * second) @ v
    out = rms(out, module.head_norm) * (1 - module.lambda_init)
    torch.testing.assert_close(module(x), project(module, out), rtol=0, atol=1e-10)
    _, maps = module(x, return_weights=True)
    torch.testing.assert_close(maps["attn"], first - lam * second, rtol=0, atol=1e-12)


def test_differential_with_lambda_zero_gives_its_first_softmax_map():
    module = build(differential=True)
    with torch.no_grad():  # exp(q1.k1) - exp(q2.k2) = 0, and lambda_init 0
        module.lambdas["q2"].copy_(module.lambdas["q1"])
        module.lambdas["k2"].copy_(module.lambdas["k1"])
    module.lambda_init = 0.0
    x = torch.randn(2, 9, DIM, dtype=torch.float64)
    q, k, _ = heads_of(module, x)
    half = module.head_dim // 2
    first = (q[..., :half] @ k[..., :half].transpose(-2, -1) / math.sqrt(half)).softmax(-1)
    _, maps = module(x, return_weights=True)
    torch.testing.assert_close(maps["attn"], first, rtol=0, atol=1e-12)


def test_differential_has_mha_parameters_plus_lambdas_and_norm_and_its_depth_from_the_backbone():
    from attnexp.attention.base import accepts_layer
    from attnexp.attention.cbam import CBAM
    from attnexp.attention.mha import MultiHeadAttention
    from attnexp.data.shape import DataShape
    from attnexp.models.cnn import CNN
    from attnexp.models.transformer import Transformer

    plain, diff = create("mha", DIM), create("mha", DIM, differential=True)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(diff) - count(plain) == 4 * (plain.head_dim // 2) + plain.head_dim
    shape = DataShape("tokens", [8], 11, vocab_size=11, task="lm")
    for backbone in (Transformer, CNN):  # the block's 0-based index reaches the module as layer
        for name in ("mha", "muse"):
            node = attention_config(name)
            node.differential = True
            attention = factory(node)
            model = backbone(attention, shape, dim=DIM, depth=3)
            depths = [m.lambda_init for m in model.modules() if hasattr(m, "lambda_init")]
            assert depths == [0.8 - 0.6 * math.exp(-0.3 * layer) for layer in range(3)]
    # a variant whose constructor does not name layer is built without it, as before
    assert not accepts_layer(CBAM) and accepts_layer(MultiHeadAttention)
    CNN(factory(attention_config("cbam")), DataShape("sequence", [8], 3, in_channels=1), dim=DIM)


def test_differential_refuses_an_odd_head_half_naming_the_keys():
    with pytest.raises(ValueError, match="differential .* head_dim divisible by 2, got head_dim=3"):
        create("mha", 12, differential=True, head_dim=3)
    with pytest.raises(ValueError, match="rope rotates in pairs: it needs head_dim divisible by 4, got head_dim=6"):
        create("mha", 12, differential=True, num_heads=2, rope=True)


# --------------------------------------------------------------------------- kv_latent_dim


def test_latent_keys_and_values_are_their_formula():
    module = build(True, kv_latent_dim=6, num_kv_heads=2)
    with torch.no_grad():
        module.kv_norm.weight.uniform_(0.5, 2.0)
    x = torch.randn(2, 7, DIM, dtype=torch.float64)
    d, kv = module.head_dim, 2
    q, latent = F.linear(x, module.qkv.weight, module.qkv.bias).split([HEADS * d, 6], dim=-1)
    k, v = (rms(latent, module.kv_norm) @ module.kv_up.weight.T).split([kv * d, kv * d], dim=-1)
    q = q.unflatten(-1, (HEADS, d)).transpose(1, 2)
    k, v = (t.unflatten(-1, (kv, d)).transpose(1, 2)[:, [0, 0, 1, 1]] for t in (k, v))
    n = x.shape[1]
    scores = (q @ k.transpose(-2, -1) / math.sqrt(d)).masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf)
    torch.testing.assert_close(module(x), project(module, scores.softmax(-1) @ v), rtol=0, atol=1e-10)
    assert module.qkv.out_features == DIM + 6 and module.kv_up.weight.shape == (2 * kv * d, 6)
    with pytest.raises(ValueError, match="kv_latent_dim must be"):
        create("mha", DIM, kv_latent_dim=0)


# --------------------------------------------------------------------------- all of them


LATER = [{"forget_gate": True}, {"normalize": "softpick"}, {"normalize": "stick_breaking"},
         {"differential": True}, {"kv_latent_dim": 5},
         {"differential": True, "forget_gate": True, "alibi": True, "sink": True, "num_kv_heads": 2},
         {"normalize": "softpick", "window": 2, "softcap": 2.0, "qk_norm": "rms"},
         {"normalize": "stick_breaking", "forget_gate": True, "rope": True, "global_tokens": 1, "window": 2},
         {"kv_latent_dim": 4, "differential": True, "gate": "headwise", "rope": True},
         {"differential": True, "forget_gate": True, "window": 3}, {"alibi": True, "score": "l2"},
         {"forget_gate": True, "alibi": True, "num_kv_heads": 1, "score": "cosine"}]  # fmt: skip
CAUSAL_ONLY = ("forget_gate", "stick_breaking")


@pytest.mark.parametrize("knobs", LATER, ids=str)
def test_causality_padding_and_paths_hold_for_the_later_knobs(knobs):
    causal = build(True, **knobs).eval()
    assert_causal(causal)
    assert_paths_agree(causal)
    assert_padding_invariant(causal)
    if not any(name in str(knobs) for name in CAUSAL_ONLY):
        bidirectional = build(**knobs).eval()
        assert_padding_invariant(bidirectional)
        assert_paths_agree(bidirectional)


@pytest.mark.parametrize("normalize", ["softpick", "stick_breaking", "softmax"])
def test_the_later_score_changes_hold_across_blocks_of_query_rows(normalize):
    """The chunked path in blocks of 2 query rows against the whole matrix: each block's forget
    sums and stick-breaking diagonal start at its own first row."""
    torch.manual_seed(0)
    forget = F.logsigmoid(torch.randn(2, HEADS, 9, dtype=torch.float64)).cumsum(-1)
    assert_blocks_agree(normalize=normalize, is_causal=True, forget=forget)


# --------------------------------------------------------------------------- the study's presets


def test_each_preset_of_the_study_sets_its_one_knob_on_mha_and_names_the_run_by_it(data_dir):
    """experiment=modern_attention sweeps conf/attention_knob/: each preset is plain mha with one
    knob changed (alibi also drops the learned positions, as the paper does)."""
    from omegaconf import OmegaConf

    from attnexp.config.paths import CONFIG_DIR
    from attnexp.models import build_model
    from tests.conftest import compose_cfg

    experiment = OmegaConf.load(CONFIG_DIR / "experiment" / "modern_attention.yaml")
    presets = str(experiment.hydra.sweeper.params.attention_knob).split(",")
    assert sorted(presets) == sorted(p.stem for p in (CONFIG_DIR / "attention_knob").glob("*.yaml"))
    base = ["experiment=modern_attention", f"paths.data_dir={data_dir}"]
    plain = OmegaConf.to_container(compose_cfg(base))
    for preset in presets:
        cfg = compose_cfg([*base, f"attention_knob={preset}"])
        assert cfg.choices.attention == ("mha" if preset == "mha" else f"mha-{preset}")
        changed = {k for k, v in OmegaConf.to_container(cfg.attention).items() if plain["attention"][k] != v}
        assert len(changed) == (preset != "mha"), (preset, changed)
        assert (cfg.backbone.positions == "none") == (preset == "alibi")
        model = build_model(cfg)
        assert model(torch.zeros(2, cfg.dataset.context_len, dtype=torch.long)).shape[-1] == 65
    mqar = OmegaConf.load(CONFIG_DIR / "experiment" / "modern_attention_mqar.yaml").hydra.sweeper.params
    assert mqar.attention_knob == experiment.hydra.sweeper.params.attention_knob
    cfg = compose_cfg(["experiment=modern_attention_mqar", "attention_knob=gqa"])
    assert (cfg.attention.num_heads, cfg.attention.num_kv_heads, cfg.choices.attention) == (4, 2, "mha-gqa")


@pytest.mark.parametrize(
    "knobs",
    [{"is_causal": True}, {"is_causal": True, "forget": True, "alibi": True},
     {"is_causal": True, "forget": True, "padding": True}, {"padding": True}, {}],
)  # fmt: skip
def test_a_sink_is_one_more_key_of_the_kernel_in_every_block(monkeypatch, knobs):
    """The sink takes the kernel (a key with its logit and a zero value), in blocks of query rows
    whose key biases are relative to each block's first query: its logit gets back what they
    leave out of each row. Equal to the explicit path in float64, outputs and gradients."""
    from attnexp.attention import design
    from attnexp.attention.design import alibi_slopes, attend

    taken = []
    original = design._fused_key_feature
    monkeypatch.setattr(design, "_fused_key_feature", lambda *a: taken.append(1) or original(*a))
    torch.manual_seed(0)
    n = 150  # three blocks of at most 64 rows with a position bias
    q, k, v = (torch.randn(2, HEADS, n, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    sink = torch.randn(HEADS, dtype=torch.float64, requires_grad=True)
    rules = {"is_causal": knobs.get("is_causal", False), "sink": sink}
    if knobs.get("forget"):
        rules["forget"] = F.logsigmoid(torch.randn(2, HEADS, n, dtype=torch.float64) + 2).cumsum(-1)
    if knobs.get("alibi"):
        rules["alibi"] = alibi_slopes(HEADS).double()
    if knobs.get("padding"):
        rules["key_padding"] = torch.arange(n) < torch.tensor([[n], [n - 40]])
    inputs = (q, k, v, sink)
    fused, _ = attend(q, k, v, block_elements=2 * HEADS * n * 50, **rules)
    whole, _ = attend(q, k, v, need_weights=True, **rules)
    assert taken == [1]
    torch.testing.assert_close(fused, whole, rtol=0, atol=1e-10)
    grads = [torch.autograd.grad(out.sum(), inputs) for out in (fused, whole)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_forget_gates_and_causal_alibi_take_the_kernel_with_offsets_relative_to_each_block(monkeypatch):
    """The kernel path (one more feature per key, and a sink key) is the one taken, and it keeps
    bf16 precision however far the cumulative forget gates have fallen: shifted by -1000, absolute offsets would
    be rounded to multiples of 8 in bf16; each block's are relative to its first query."""
    from attnexp.attention import design
    from attnexp.attention.design import alibi_slopes, attend

    taken = []
    original = design._fused_key_feature
    monkeypatch.setattr(design, "_fused_key_feature", lambda *a: taken.append(1) or original(*a))
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 300, 16) for _ in range(3))
    forget = F.logsigmoid(torch.randn(1, 2, 300) + 2).cumsum(-1) - 1000
    slopes, sink = alibi_slopes(2), torch.tensor([1.0, -0.5])
    reference, _ = attend(q.double(), k.double(), v.double(), is_causal=True, sink=sink.double(),
                          forget=forget.double(), alibi=slopes.double(), need_weights=True)  # fmt: skip
    fused, _ = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), is_causal=True, forget=forget,
                      alibi=slopes, sink=sink, block_elements=2 * 300 * 64)  # fmt: skip
    assert len(taken) == 1
    assert (fused.double() - reference).abs().max() < 0.05
    attend(q, k, v, alibi=slopes)  # bidirectional ALiBi is |i - j|: not one feature per key
    assert len(taken) == 1
