"""Generation from a cache (``mha``'s keys and values, a recurrent mixer's state): at every step the
cached logits equal the recomputed ones (within 1e-4 in float32) and the greedy tokens are
identical, for plain ``mha``, with each knob of today's language models, and for the recurrent
mixers (``retnet``, ``gla``, ``mamba2``, ``deltanet``, ``gated_deltanet``, ``based``), also past the
context length, where they slide their window. Long convolutions recompute."""

from __future__ import annotations

import copy

import pytest
import torch

from attnexp.models import build_model
from attnexp.training.generate import decode_steps, generate
from tests.conftest import compose_cfg

CONTEXT = 12
KNOBS = {
    "mha": [],
    "rope": ["attention.rope=true", "backbone.positions=none"],
    "alibi": ["attention.alibi=true", "backbone.positions=none"],
    "forget_gate": ["attention.forget_gate=true"],
    "softcap_sink": ["attention.softcap=5.0", "attention.sink=true"],
    "gqa_qk_norm_gate": ["attention.num_kv_heads=2", "attention.qk_norm=rms", "attention.gate=elementwise"],
    "differential": ["attention.differential=true"],
    "mla": ["attention.kv_latent_dim=16"],
    "stick_breaking": ["attention.normalize=stick_breaking"],
    "softpick": ["attention.normalize=softpick"],
    "window": ["attention.window=3"],
    "muse_kernel_1": ["attention=muse", "attention.kernel_sizes=[1]"],
    "retnet": ["attention=retnet", "backbone.positions=none"],  # a recurrent state, not keys
    "gla": ["attention=gla"],
    "mamba2": ["attention=mamba2", "backbone.positions=none"],  # its state and its conv's inputs
    "deltanet": ["attention=deltanet"],
    "gated_deltanet": ["attention=gated_deltanet"],
    "based": ["attention=based"],  # a short conv's last inputs, then the Taylor map's sums
    "based_window": ["attention=based", "attention.pattern=[window,taylor]"],
}  # fmt: skip


def language_model(*extra: str, text: str = "unused.txt") -> torch.nn.Module:
    cfg = compose_cfg([
        "experiment=shakespeare_char_cpu", "dataset=text", f"dataset.path={text}",
        "dataset.source.vocab=bytes", "dataset.shape.vocab_size=256", "backbone.depth=2",
        "backbone.dim=32", f"dataset.context_len={CONTEXT}", *extra,
    ])  # fmt: skip
    torch.manual_seed(0)
    return build_model(cfg).eval()


@pytest.mark.parametrize("knobs", KNOBS)
def test_cached_logits_equal_recomputed_ones_at_every_step_past_the_context(knobs):
    model = language_model(*KNOBS[knobs])
    assert model.decodable
    prompt = torch.randint(0, 256, (2, 3), generator=torch.Generator().manual_seed(1))
    cached = decode_steps(model, prompt, CONTEXT, cache=True, slide=True)
    recomputed = decode_steps(copy.deepcopy(model), prompt, CONTEXT, cache=False)
    with torch.no_grad():
        a, b = next(cached), next(recomputed)
        for _ in range(2 * CONTEXT):  # 3 + 24 tokens: twice past the context length
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
            token = a.argmax(-1, keepdim=True)
            assert torch.equal(token, b.argmax(-1, keepdim=True))
            a, b = cached.send(token), recomputed.send(token)
    cached.close()
    assert model.decoded is None and all(
        block.slot.module.cache is None for block in model.blocks
    )  # closing the generator empties the caches


@pytest.mark.parametrize("name", ["retnet", "mamba2", "gated_deltanet", "based"])
def test_a_recurrent_model_without_learned_positions_decodes_on_past_its_context(name):
    """It continues from its state (the same cost per token for ever): past the context its
    logits are those of the whole sequence at once, which recomputation's window cannot give."""
    model = language_model(f"attention={name}", "backbone.positions=none")
    assert model.continues
    ids = torch.randint(0, 256, (2, 3 * CONTEXT), generator=torch.Generator().manual_seed(2))
    steps = decode_steps(model, ids[:, :3], CONTEXT)
    with torch.no_grad():
        whole = model(ids)  # no window: every position reads all before it
        logits = next(steps)
        for t in range(3, 3 * CONTEXT):
            torch.testing.assert_close(logits, whole[:, t - 1], atol=1e-4, rtol=0)
            logits = steps.send(ids[:, t : t + 1])
        assert model.decoded == 3 * CONTEXT  # never started again
    steps.close()


def test_models_that_cannot_continue_slide_and_say_so_when_asked_not_to():
    for extra in (["attention=gla"], ["attention.rope=true", "backbone.positions=none"],
                  ["attention=based", "attention.pattern=[window]", "backbone.positions=none"]):  # fmt: skip
        model = language_model(*extra)  # learned positions; keys and values that grow
        assert model.decodable and not model.continues
        with pytest.raises(ValueError, match="slide=false needs a model that continues past its context"):
            next(decode_steps(model, torch.tensor([[1]]), CONTEXT, slide=False))


def test_generate_takes_the_cache_when_it_can_and_samples_the_same_tokens():
    model = language_model("attention.rope=true", "backbone.positions=none")
    prompt = torch.tensor([[5, 6, 7]])
    draws = {}
    for cache in (None, False):
        generator = torch.Generator().manual_seed(3)
        draws[cache] = generate(model, prompt, 30, CONTEXT, 0.8, 20, generator, cache=cache)
    assert torch.equal(draws[None], draws[False]) and draws[None].shape == (1, 33)


@pytest.mark.parametrize("extra", [["attention=muse"], ["attention=linear"], ["attention.qk_conv=3"],
                                   ["lm_backbone=cnn"], ["attention=hyena"], ["attention=base_conv"]])  # fmt: skip
def test_models_whose_state_is_not_keys_and_values_recompute(extra):
    model = language_model(*extra)
    assert not getattr(model, "decodable", False)
    prompt = torch.tensor([[1, 2]])
    out = generate(model, prompt, 3, CONTEXT, temperature=0)  # recomputation serves them
    assert out.shape == (1, 5)
    with pytest.raises(ValueError, match="cache=true needs a model whose every attention slot"):
        generate(model, prompt, 3, CONTEXT, temperature=0, cache=True)


def state_shape(slot) -> tuple[int, ...]:
    """The state one sequence keeps, ``(1, H, dk, dv)``, from the module's own widths."""
    if slot.__class__.__name__ == "Mamba2":
        return (1, slot.num_heads, slot.state_dim, slot.head_dim)
    key_dim = getattr(slot, "key_dim", slot.dim)
    return (1, slot.num_heads, key_dim // slot.num_heads, slot.dim // slot.num_heads)


@pytest.mark.parametrize("name", ["retnet", "gla", "mamba2", "deltanet", "gated_deltanet"])
def test_a_recurrent_mixer_decodes_with_a_state_that_does_not_grow(name):
    model = language_model(f"attention={name}", "backbone.positions=none")
    slots = [block.slot.module for block in model.blocks]
    shapes = []
    with torch.no_grad(), model.decoding():
        model(torch.tensor([[1, 2, 3]]))
        for token in range(4, CONTEXT):
            model(torch.tensor([[token]]))
            shapes.append({(tuple(s.cache.state.shape), *(tuple(t.shape) for t in s.cache.tails.values()))
                           for s in slots})  # fmt: skip
    assert all(shape == shapes[0] for shape in shapes)  # whatever the length
    assert {shape[0] for shape in shapes[0]} == {state_shape(slots[0])}  # H x dk x dv floats
    assert slots[0].cache is None  # emptied on exit


@pytest.mark.parametrize(
    ("extra", "per_layer"),
    [
        ([], 2 * CONTEXT * 32),  # keys and values of every position: grows with the length
        (["attention.num_kv_heads=2"], 2 * CONTEXT * 16),  # GQA keeps each k/v head once
        (["attention.kv_latent_dim=8"], CONTEXT * 8),  # MLA keeps the latent
        (["attention=retnet"], 4 * 8 * 8),  # H x dk x dv, whatever the length
        (["attention=gla"], 4 * 4 * 8),  # keys half the width
        (["attention=linear"], 4 * (8 * 8 + 8)),  # S and z
        (["attention=mamba2"], 4 * 16 * 16 + 3 * (64 + 2 * 16)),  # S, the conv's last 3 inputs
        (["attention=deltanet"], 4 * 8 * 8 + 3 * 3 * 32),  # S, three convs' last 3 inputs
        (["attention=hyena"], CONTEXT * 32 + 2 * 3 * 32),  # the long conv's whole input, grows with N
    ],
)  # fmt: skip
def test_state_size_is_what_a_sequence_keeps_to_continue(extra, per_layer):
    model = language_model("backbone.dim=32", *extra)  # every variant here has 4 heads by default
    assert model.state_floats() == 2 * per_layer  # two layers
    assert language_model("attention=none").state_floats() is None  # no slot: nothing declared


def test_the_decoding_mode_says_how_a_model_generates():
    from attnexp.training.generate import decoding_mode

    assert "on past the context" in decoding_mode(language_model("attention=retnet", "backbone.positions=none"))
    assert "started again" in decoding_mode(language_model())
    assert "recomputing" in decoding_mode(language_model("attention=hyena"))
