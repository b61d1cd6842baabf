"""Every attention variant in conf/attention/ obeys the contract (discovered, never listed), and
so does a throwaway variant written to a temporary dir (``TOY``): a new one needs no edit here."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from attnexp.attention import AttentionModule, Kind, WeightKind
from attnexp.attention.design import AttentionDesign
from attnexp.attention.mha import MultiHeadAttention
from attnexp.config.attention import attention_config, available, create
from tests.conftest import TOY

VARIANTS = [*available(), TOY]
# (batch, grid): a sequence, an image, and an odd image with batch size 1.
CASES = [(2, (12,)), (2, (4, 6)), (1, (7, 5))]


@pytest.fixture(scope="module")
def build(toy_root):
    def build(name: str, grid_ndim: int, dim: int = 64) -> AttentionModule:
        """What a backbone does: the variant's partial called with the slot's dim and the rank
        of the grid it will see."""
        torch.manual_seed(0)
        return create(name, dim, grid_ndim, search_path=[toy_root])

    return build


def constructor_defaults(cls: type) -> dict[str, object]:
    """Keyword defaults of ``cls``, following ``**kwargs`` that are passed on to the parent, and
    ``mha``'s ``**design`` to ``AttentionDesign``."""
    defaults: dict[str, object] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        for p in params:
            if p.default is not inspect.Parameter.empty:
                defaults.setdefault(p.name, p.default)
        if klass is MultiHeadAttention:
            return {**defaults, **dataclasses.asdict(AttentionDesign())}
        if all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params):
            return defaults
    return defaults


def test_the_library_is_discovered():
    assert {"none", "mha", "muse", "pool", "se", "cbam", "linear", "node"} <= set(available())
    assert TOY not in available()  # only with its search path


def test_an_unknown_variant_or_key_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="attention='nope' is not a variant; available: base_conv, based, cbam, "):
        create("nope", 16)
    with pytest.raises(ValueError, match="attention=mha has no key scroe; its keys: num_heads"):
        create("mha", 16, scroe="cosine")
    with pytest.raises(ValueError, match="unknown attention design knob scroe; the knobs: score"):
        MultiHeadAttention(16, scroe="cosine")


def test_create_applies_overrides_and_leaves_hydra_alone():
    from hydra.core.global_hydra import GlobalHydra

    initialized = GlobalHydra.instance().is_initialized()
    module = create("muse", 16, 2, kernel_sizes=[3, 15], score="cosine")
    assert module.kernel_sizes == (3, 15) and module.core.design.score == "cosine"
    assert module.grid_ndim == 2 and module.dim == 16
    assert GlobalHydra.instance().is_initialized() == initialized


def test_muse_yaml_extends_mha_yaml():
    """``muse`` is ``mha`` plus ``kernel_sizes``: every other key and value is mha's."""
    mha, muse = (OmegaConf.to_container(attention_config(n)) for n in ("mha", "muse"))
    assert muse.pop("_target_") == "attnexp.attention.muse.MUSE"
    assert muse.pop("kernel_sizes") == [1, 3, 5]
    mha.pop("_target_")
    assert muse == mha


@pytest.mark.parametrize("grid_ndim", [1, 2])
@pytest.mark.parametrize("name", VARIANTS)
def test_yaml_instantiates_and_builds(name, grid_ndim, build, toy_root):
    assert attention_config(name, [toy_root])._partial_ is True
    module = build(name, grid_ndim)
    assert isinstance(module, AttentionModule)
    assert isinstance(module.kind, Kind)
    assert (module.dim, module.grid_ndim) == (64, grid_ndim)


@pytest.mark.parametrize("name", VARIANTS)
def test_yaml_states_every_hyper_parameter_with_the_code_default(name, toy_root):
    """A yaml default that drifts from the constructor's (or, for ``mha`` and ``muse``'s design
    knobs, from ``AttentionDesign``'s) would make the config lie."""
    cfg = OmegaConf.to_container(attention_config(name, [toy_root]))
    target = get_class(cfg.pop("_target_"))
    cfg.pop("_partial_")
    defaults = constructor_defaults(target)
    defaults.pop("grid_ndim")  # the backbone's to give, like dim
    defaults.pop("causal", None)  # likewise (True in a language model)
    defaults.pop("layer", None)  # likewise (the block's index)
    normalise = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    assert cfg == normalise


def test_mha_yaml_states_the_attention_design_defaults():
    knobs = {f.name for f in dataclasses.fields(AttentionDesign)}
    cfg = attention_config("mha")
    assert {k: cfg[k] for k in knobs} == dataclasses.asdict(AttentionDesign())


@pytest.mark.parametrize("name", VARIANTS)
def test_a_grid_of_the_other_rank_is_refused_naming_grid_ndim(name, build):
    for grid_ndim, wrong in ((1, (3, 4)), (2, (12,))):
        module = build(name, grid_ndim)
        with pytest.raises(ValueError, match=f"grid_ndim={grid_ndim}"):
            module(torch.randn(2, *wrong, 64))
        with pytest.raises(ValueError, match=f"grid_ndim={grid_ndim}"):
            module.flops(wrong)
    with pytest.raises(ValueError, match="grid_ndim"):
        build(name, grid_ndim=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("batch,grid", CASES, ids=["seq12", "img4x6", "img7x5_b1"])
@pytest.mark.parametrize("name", VARIANTS)
def test_variant_forward_backward(name, batch, grid, dtype, build):
    module = build(name, len(grid)).to(dtype).train()
    x = torch.randn(batch, *grid, 64, dtype=dtype, requires_grad=True)
    y = module(x)
    expected = (batch, 64) if module.kind is Kind.POOL else x.shape
    assert y.shape == expected and y.dtype == dtype
    assert torch.isfinite(y).all()
    (y.float() * torch.randn(y.shape)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, param in module.named_parameters():
        assert param.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(param.grad).all(), pname


@pytest.mark.parametrize("batch,grid", CASES, ids=["seq12", "img4x6", "img7x5_b1"])
@pytest.mark.parametrize("name", VARIANTS)
def test_variant_weights_and_flops(name, batch, grid, build):
    module = build(name, len(grid)).eval()
    x = torch.randn(batch, *grid, 64)
    y, weights = module(x, return_weights=True)
    torch.testing.assert_close(y, module(x), atol=1e-5, rtol=1e-5)
    assert isinstance(weights, dict)
    assert all(torch.isfinite(w).all() for w in weights.values())
    # The declared weight kinds are what forward returns, each of its kind's shape.
    assert set(weights) == set(module.weight_kinds)
    for key, w in weights.items():
        kind = module.weight_kinds[key]
        assert isinstance(kind, WeightKind)
        kind.check(key, w, grid, dim=64)
        if kind is not WeightKind.BRANCH_MIX:
            assert w.shape[0] == batch
    flops = module.flops(grid)
    assert isinstance(flops, int) and flops >= 0
    if module.kind is not Kind.IDENTITY:
        assert module.flops((2 * grid[0], *grid[1:])) > flops > 0


@pytest.mark.parametrize("grids", [((6,), (9,)), ((3, 5), (4, 4))], ids=["1d", "2d"])
@pytest.mark.parametrize("name", VARIANTS)
def test_state_dict_is_fixed_by_construction(name, grids, build):
    """Parameters are made in __init__, never in forward (lazily or re-wrapped), whatever grid:
    the state dict keys and every parameter's value survive forward passes on grids of different
    sizes (buffers such as BatchNorm's running statistics may update; they are not parameters)."""
    module = build(name, len(grids[0])).train()
    keys = set(module.state_dict())
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    for grid in grids:
        module(torch.randn(2, *grid, 64))
    assert set(module.state_dict()) == keys
    after = dict(module.named_parameters())
    assert before.keys() == after.keys()
    for key in before:
        assert after[key] is not None
        torch.testing.assert_close(before[key], after[key].detach(), rtol=0, atol=0)
