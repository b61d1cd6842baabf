"""``muse``: the fused conv branch equals the straightforward three-branch form; the mixing
weights train; the attention branch is ``mha``'s."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from attnexp.attention.mha import MultiHeadAttention
from attnexp.attention.muse import MUSE
from attnexp.config.attention import create


def three_branch_reference(module: MUSE, x: torch.Tensor) -> torch.Tensor:
    """MUSE written the straightforward way: attention, plus per kernel size a separate
    depthwise conv (none for k = 1) and pointwise conv on V, summed with softmax weights."""
    grid, d = x.shape[1:-1], module.inner_dim
    tokens = x.reshape(x.shape[0], -1, module.dim)
    q, k, v = module.qkv(tokens).chunk(3, dim=-1)
    heads = [t.unflatten(-1, (module.num_heads, -1)).transpose(1, 2) for t in (q, k, v)]
    attn = F.softmax(heads[0] @ heads[1].transpose(-2, -1) / module.head_dim**0.5, dim=-1)
    out = module.proj((attn @ heads[2]).transpose(1, 2).flatten(2))

    conv = F.conv1d if len(grid) == 1 else F.conv2d
    v_map = v.transpose(1, 2).reshape(x.shape[0], d, *grid)  # channels first
    mix = F.softmax(module.branch_logits, dim=0)
    branches = 0
    for weight, size in zip(mix, module.kernel_sizes, strict=True):
        h = v_map
        if size > 1:
            kernel, bias = module.depthwise[f"k{size}"], module.depthwise_bias[f"k{size}"]
            h = conv(h, kernel, bias, padding=size // 2, groups=d)
        pointwise = module.pointwise[f"k{size}"].reshape(module.dim, d, *[1] * len(grid))
        branches = branches + weight * conv(h, pointwise, module.pointwise_bias[f"k{size}"])
    return (out + branches.flatten(2).transpose(1, 2)).reshape(x.shape)


def randomised(module: MUSE) -> MUSE:
    with torch.no_grad():
        module.branch_logits.normal_()  # non-uniform mixing
    return module.eval()


@pytest.mark.parametrize("kernel_sizes", [[1, 3, 5], [3, 15], [1], [7]])
@pytest.mark.parametrize("shape", [(2, 20, 32), (2, 6, 7, 32), (1, 7, 5, 32)])
def test_fused_muse_equals_three_branch_reference(kernel_sizes, shape):
    torch.manual_seed(0)
    module = randomised(MUSE(dim=32, grid_ndim=len(shape) - 2, kernel_sizes=kernel_sizes))
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(
            module(x), three_branch_reference(module, x), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize(
    "knobs", [{}, {"score": "cosine", "window": 1, "global_tokens": 2}, {"qk_conv": 3}], ids=str
)
def test_muse_with_conv_branch_zeroed_equals_mha(knobs):
    """The attention branch is mha's, design knobs included."""
    torch.manual_seed(0)
    muse = randomised(MUSE(dim=32, grid_ndim=2, num_heads=4, **knobs))
    mha = MultiHeadAttention(dim=32, grid_ndim=2, num_heads=4, **knobs).eval()
    mha.load_state_dict({k: v for k, v in muse.state_dict().items() if k in mha.state_dict()})
    with torch.no_grad():
        for name, param in muse.named_parameters():
            if name.startswith("pointwise"):
                param.zero_()
    x = torch.randn(2, 5, 6, 32)
    torch.testing.assert_close(muse(x), mha(x), atol=1e-6, rtol=1e-6)


def test_muse_on_a_sequence_equals_muse_on_a_one_row_image_with_centre_row_kernels():
    """A length-k kernel on a sequence is a k x k kernel that is zero off its centre row on a
    1 x L image; everything else is shared."""
    torch.manual_seed(0)
    seq = randomised(MUSE(dim=32, grid_ndim=1, kernel_sizes=[3, 15]))
    img = MUSE(dim=32, grid_ndim=2, kernel_sizes=[3, 15]).eval()
    state = seq.state_dict()
    for k in (3, 15):
        square = torch.zeros(seq.inner_dim, 1, k, k)
        square[:, :, k // 2] = state[f"depthwise.k{k}"]
        state[f"depthwise.k{k}"] = square
    img.load_state_dict(state)
    x = torch.randn(2, 11, 32)
    torch.testing.assert_close(seq(x), img(x.unsqueeze(1)).squeeze(1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid_ndim", [1, 2])
def test_muse_holds_exactly_the_kernels_of_its_grid_rank(grid_ndim):
    """Length-k depthwise kernels on sequences, k x k on images: no dead parameters."""
    module = MUSE(dim=32, grid_ndim=grid_ndim, kernel_sizes=[1, 3, 5])
    mha = MultiHeadAttention(dim=32, grid_ndim=grid_ndim)
    assert module.depthwise["k5"].shape == (32, 1, *[5] * grid_ndim)
    depthwise = 32 * (3**grid_ndim + 5**grid_ndim) + 2 * 32
    pointwise = 3 * (32 * 32 + 32)
    count = sum(p.numel() for p in module.parameters())
    assert count == sum(p.numel() for p in mha.parameters()) + depthwise + pointwise + 3


def test_muse_returns_attention_and_branch_weights():
    module = randomised(MUSE(dim=32, grid_ndim=2, kernel_sizes=[1, 3, 5]))
    x = torch.randn(2, 4, 4, 32)
    y, weights = module(x, return_weights=True)
    torch.testing.assert_close(y, module(x), atol=1e-5, rtol=1e-5)
    assert weights["attn"].shape == (2, 4, 16, 16)
    torch.testing.assert_close(weights["branches"], F.softmax(module.branch_logits.detach(), 0))


def test_branch_logits_train_and_state_dict_survives_forward():
    """The copied reference re-wraps its mixing weights in forward, so they never train and the
    state dict changes after every call; both would fail here."""
    torch.manual_seed(0)
    module = MUSE(dim=32)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    x, target = torch.randn(4, 12, 32), torch.randn(4, 12, 32)
    loss = F.mse_loss(module(x), target)
    assert module.state_dict().keys() == state.keys()
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    assert any(p is module.branch_logits for p in optimizer.param_groups[0]["params"])
    loss.backward()
    assert module.branch_logits.grad is not None and module.branch_logits.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(module.branch_logits.detach(), state["branch_logits"])


def test_muse_flops_add_the_conv_branch_to_mha():
    n = 7 * 5
    pointwise = 3 * 2 * n * 64 * 64
    for grid, taps in (((7, 5), 3 * 3 + 5 * 5), ((35,), 3 + 5)):
        module = MUSE(dim=64, grid_ndim=len(grid), num_heads=4, kernel_sizes=[1, 3, 5])
        mha = MultiHeadAttention(dim=64, grid_ndim=len(grid), num_heads=4)
        assert module.flops(grid) == mha.flops(grid) + 2 * n * 64 * taps + pointwise


def test_paper_kernel_sizes_override_through_hydra():
    """``attention.kernel_sizes=[3,15]`` arrives as an OmegaConf ListConfig."""
    module = create("muse", 64, grid_ndim=2, kernel_sizes=[3, 15])
    assert module.kernel_sizes == (3, 15)
    assert set(module.depthwise) == {"k3", "k15"}
    assert module(torch.randn(1, 7, 5, 64)).shape == (1, 7, 5, 64)
