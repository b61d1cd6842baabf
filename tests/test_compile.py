"""``compile=true``: every attention variant, in both backbones and on both grid ranks, compiles as
one graph (``fullgraph=True`` turns a graph break into an error) and computes what it computed
uncompiled, forward and backward. Traced with the ``eager`` backend: dynamo's tracing is what
finds graph breaks, and it needs no C++ compiler (inductor's kernel generation is a GPU concern)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from attnexp.models import build_model
from attnexp.runs.checkpoint import load_checkpoint
from attnexp.training.pipeline import train
from tests.conftest import ATTENTIONS, compose_cfg, example_input, tiny

# Each backbone once and each grid rank once: tokens (1-D) in the transformer, an image (2-D) in
# the cnn. A graph break is the module's (its grid rank's), not the backbone's; the knobs below
# take the transformer on a signal and on an image.
CASES = [
    ("transformer", "mqar"),
    ("cnn", "digits"),
]
# The design knobs' explicit paths (masks, random key subsets, conv keys), not just the fused one.
KNOBS = [
    *([f"attention.score={s}"] for s in ("cosine", "l2", "pearson", "additive")),
    *([f"attention.normalize={n}"] for n in ("sigmoid", "max")),
    ["attention.window=1", "attention.global_tokens=1"],
    ["attention.kv_stride=2", "attention.kv_select=random"],
    ["attention.qk_conv=3", "attention.qk_conv_padding=valid"],
]


def assert_compiles_whole_and_matches(cfg, random: bool = False) -> None:
    """``random``: the model draws random numbers, which compiled code draws differently (by
    design in torch.compile), so only the shapes and finiteness are compared."""
    torch.manual_seed(0)
    model = build_model(cfg)
    x = example_input(model.shape, batch=3)
    expected = model(x)
    expected.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    torch._dynamo.reset()
    model.compile(fullgraph=True, backend="eager")
    torch.manual_seed(0)
    out = model(x)
    out.square().sum().backward()
    if random:
        assert out.shape == expected.shape and torch.isfinite(out).all()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        return
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("backbone", "dataset"), CASES)
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_every_variant_compiles_without_graph_breaks(attention, backbone, dataset, data_dir):
    assert_compiles_whole_and_matches(compose_cfg(tiny(attention, backbone, dataset, data_dir)))


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: ",".join(k))
@pytest.mark.parametrize("dataset", ["mnist1d", "digits"])
def test_every_design_knob_compiles_without_graph_breaks(knobs, dataset, data_dir):
    overrides = [*tiny("mha", "transformer", dataset, data_dir), *knobs]
    random = "attention.kv_select=random" in knobs
    assert_compiles_whole_and_matches(compose_cfg(overrides), random=random)


def test_compile_true_trains_the_compiled_model(tmp_path, data_dir):
    overrides = [
        *tiny("muse", "transformer", "mqar", data_dir),
        "debug=limit",
        "compile=true",
        "compile_backend=eager",
    ]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    results = train(compose_cfg(overrides, tmp_path))
    assert results["status"] == "completed", results["error"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    # Compiled in place: the checkpoint holds the plain model's parameter names, so it loads
    # into an uncompiled model (eval.py, compile=false) as it is.
    state = load_checkpoint(tmp_path / results["best_checkpoint"])["state_dict"]
    plain = build_model(compose_cfg(overrides, tmp_path))
    model_keys = sorted(k for k in state if k.startswith("model."))
    assert model_keys == sorted(f"model.{k}" for k in plain.state_dict())
