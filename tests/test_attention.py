"""Every attention variant in conf/attention/ obeys the contract (discovered, never listed)."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from attnexp.attention import AttentionModule, Kind

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "attention"
VARIANTS = sorted(path.stem for path in CONF_DIR.glob("*.yaml"))
# (batch, grid): a sequence, an image, and an odd image with batch size 1.
CASES = [(2, (12,)), (2, (4, 6)), (1, (7, 5))]


def build(name: str, dim: int = 64) -> AttentionModule:
    """What a backbone does: instantiate the partial, then call it with the slot's dim."""
    torch.manual_seed(0)
    return hydra.utils.instantiate(OmegaConf.load(CONF_DIR / f"{name}.yaml"))(dim=dim)


def test_the_library_is_discovered():
    assert {"none", "mha", "muse", "pool", "se", "cbam"} <= set(VARIANTS)


@pytest.mark.parametrize("name", VARIANTS)
def test_yaml_instantiates_and_builds(name):
    cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    assert cfg._partial_ is True
    module = build(name)
    assert isinstance(module, AttentionModule)
    assert isinstance(module.kind, Kind)
    assert module.dim == 64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("batch,grid", CASES, ids=["seq12", "img4x6", "img7x5_b1"])
@pytest.mark.parametrize("name", VARIANTS)
def test_variant_forward_backward(name, batch, grid, dtype):
    module = build(name).to(dtype).train()
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
def test_variant_weights_and_flops(name, batch, grid):
    module = build(name).eval()
    x = torch.randn(batch, *grid, 64)
    y, weights = module(x, return_weights=True)
    torch.testing.assert_close(y, module(x), atol=1e-5, rtol=1e-5)
    assert isinstance(weights, dict)
    assert all(torch.isfinite(w).all() for w in weights.values())
    flops = module.flops(grid)
    assert isinstance(flops, int) and flops >= 0
    if module.kind is not Kind.IDENTITY:
        assert module.flops((2 * grid[0], *grid[1:])) > flops > 0


@pytest.mark.parametrize("name", VARIANTS)
def test_state_dict_is_fixed_by_construction(name):
    """Parameters are made in __init__, never in forward (lazily or re-wrapped), whatever grid:
    the state dict keys and every parameter's value survive forward passes on both grid ranks
    (buffers such as BatchNorm's running statistics may update; they are not parameters)."""
    module = build(name).train()
    keys = set(module.state_dict())
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    module(torch.randn(2, 6, 64))
    module(torch.randn(2, 3, 5, 64))
    assert set(module.state_dict()) == keys
    after = dict(module.named_parameters())
    assert before.keys() == after.keys()
    for key in before:
        assert after[key] is not None
        torch.testing.assert_close(before[key], after[key].detach(), rtol=0, atol=0)
