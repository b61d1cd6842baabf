"""The implementations a user would pick instead of ours, built with our module's weights.

Each ``references_for(module)`` entry is a ``Reference``: a label, an ``nn.Module`` that computes
the same function as ``module`` given the copied weights, the input layout it takes (``tokens_last``
as ours, or ``channels_first`` ``(B, C, H, W)`` as image libraries) and, where we set one, the
performance target against it. The numeric checks in ``suite`` compare them; the timings put them
side by side. References are keyed by our module's class (``REFERENCES``), so a variant without one
needs no entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attnexp.attention.cbam import CBAM
from attnexp.attention.mha import MultiHeadAttention
from attnexp.attention.muse import MUSE
from attnexp.attention.se import SqueezeExcite


@dataclass
class Reference:
    label: str
    module: nn.Module
    layout: str  # "tokens_last" (B, *grid, C) or "channels_first" (B, C, H, W)
    # The highest allowed time ratio ours / reference, read at N=256, C=128 (None: no target).
    target: float | None = None


def timm_or_reason():
    """``((SEModule, CbamModule), None)`` if timm imports, else ``(None, why)``. Not only ImportError: timm imports
    torchvision, and a torchvision wheel built for another torch fails with a RuntimeError."""
    try:
        from timm.layers import cbam, squeeze_excite

        return (squeeze_excite.SEModule, cbam.CbamModule), None
    except Exception as error:  # noqa: BLE001 - any failure means: no timm comparison
        return None, f"{type(error).__name__}: {error}"


# --- mha -------------------------------------------------------------------------------------


class TorchMHA(nn.Module):
    """``torch.nn.MultiheadAttention`` (batch_first) as self-attention returning only the output."""

    def __init__(self, dim: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, bias=bias, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def torch_mha(module) -> Reference:
    if module.inner_dim != module.dim:
        raise ValueError("nn.MultiheadAttention needs num_heads * head_dim == dim")
    ref = TorchMHA(module.dim, module.num_heads, module.qkv.bias is not None)
    with torch.no_grad():
        # Our qkv rows are [q; k; v], heads contiguous within each: the same as in_proj_weight.
        ref.attn.in_proj_weight.copy_(module.qkv.weight)
        if module.qkv.bias is not None:
            ref.attn.in_proj_bias.copy_(module.qkv.bias)
        ref.attn.out_proj.load_state_dict(module.proj.state_dict())
    return Reference("torch.nn.MultiheadAttention", ref, "tokens_last", target=1.05)


# --- muse ------------------------------------------------------------------------------------


class DepthPointwiseConv1d(nn.Module):
    """As in the widely copied MUSE implementation: depthwise conv (identity for k = 1), then a
    pointwise conv, on channels-first ``(B, C, L)``."""

    def __init__(self, in_ch: int, out_ch: int, k: int) -> None:
        super().__init__()
        self.depth_conv = (
            nn.Identity() if k == 1 else nn.Conv1d(in_ch, in_ch, k, groups=in_ch, padding=k // 2)
        )
        self.pointwise_conv = nn.Conv1d(in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depth_conv(x))


class ThreeBranchMUSE(nn.Module):
    """The widely copied ``MUSEAttention`` as self-attention on sequences: separate q, k, v
    projections, explicit matmul-softmax attention, one ``DepthPointwiseConv1d`` per kernel size on
    channels-first V, mixed by ``softmax(dy_paras)``. One fix: the mixing weights stay a parameter
    (the original re-wraps them in ``forward``, so they never train)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, kernel_sizes) -> None:
        super().__init__()
        self.h, self.d_k = num_heads, head_dim
        inner = num_heads * head_dim
        self.fc_q, self.fc_k, self.fc_v = (nn.Linear(dim, inner) for _ in range(3))
        self.fc_o = nn.Linear(inner, dim)
        self.convs = nn.ModuleList(DepthPointwiseConv1d(inner, dim, k) for k in kernel_sizes)
        self.dy_paras = nn.Parameter(torch.ones(len(kernel_sizes)))

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        att = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k)
        return torch.matmul(torch.softmax(att, -1), v)

    def forward(self, x: Tensor) -> Tensor:
        b_s, n = x.shape[:2]
        q, k, v = (
            fc(x).view(b_s, n, self.h, self.d_k).transpose(1, 2)
            for fc in (self.fc_q, self.fc_k, self.fc_v)
        )
        out = self.fc_o(self.attend(q, k, v).transpose(1, 2).reshape(b_s, n, -1))
        v2 = v.permute(0, 1, 3, 2).contiguous().view(b_s, -1, n)
        mix = torch.softmax(self.dy_paras, -1)
        out2 = sum(w * conv(v2) for w, conv in zip(mix, self.convs, strict=True))
        return out + out2.permute(0, 2, 1)


class SdpaThreeBranchMUSE(ThreeBranchMUSE):
    """The stronger baseline: the same three conv branches, attention through the same
    ``scaled_dot_product_attention`` kernel our ``muse`` uses, so the ratio isolates the branches."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v)


def _three_branch(cls, label: str, module, target: float | None = None) -> Reference:
    ref = cls(module.dim, module.num_heads, module.head_dim, module.kernel_sizes)
    with torch.no_grad():
        for fc, w, b in zip(
            (ref.fc_q, ref.fc_k, ref.fc_v),
            module.qkv.weight.chunk(3),
            module.qkv.bias.chunk(3) if module.qkv.bias is not None else (None,) * 3,
            strict=True,
        ):
            fc.weight.copy_(w)
            fc.bias.copy_(b) if b is not None else fc.bias.zero_()
        ref.fc_o.load_state_dict(module.proj.state_dict())
        for conv, k in zip(ref.convs, module.kernel_sizes, strict=True):
            if k > 1:  # a sequence uses the centre row of a square (D, 1, k, k) kernel
                weight = module.depthwise[f"k{k}"]
                conv.depth_conv.weight.copy_(weight[:, :, k // 2] if weight.dim() == 4 else weight)
                conv.depth_conv.bias.copy_(module.depthwise_bias[f"k{k}"])
            conv.pointwise_conv.weight.copy_(module.pointwise[f"k{k}"].unsqueeze(-1))
            conv.pointwise_conv.bias.copy_(module.pointwise_bias[f"k{k}"])
        ref.dy_paras.copy_(module.branch_logits)
    return Reference(label, ref, "tokens_last", target)


def three_branch_muse(module) -> Reference:
    # >= 1.25x faster than the widely copied implementation
    return _three_branch(ThreeBranchMUSE, "three-branch MUSE (matmul-softmax)", module, 1 / 1.25)


def sdpa_three_branch_muse(module) -> Reference:
    return _three_branch(SdpaThreeBranchMUSE, "three-branch MUSE (SDPA)", module)


# --- se, cbam: timm when it imports, else the formulas written out -----------------------------


class FormulaSE(nn.Module):
    """``x * sigmoid(W2 relu(W1 mean_HW x))`` on channels-first ``(B, C, H, W)``."""

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear) -> None:
        super().__init__()
        self.fc1, self.fc2 = fc1, fc2

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return x * gate[:, :, None, None]


class FormulaCBAM(nn.Module):
    """Channel gate ``sigmoid(MLP(mean) + MLP(max))`` then spatial gate
    ``sigmoid(BN(conv_k([mean_C, max_C])))`` on channels-first ``(B, C, H, W)``."""

    def __init__(self, mlp: nn.Module, conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        self.mlp, self.conv, self.norm = mlp, conv, norm

    def forward(self, x: Tensor) -> Tensor:
        channel = torch.sigmoid(self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3))))
        x = x * channel[:, :, None, None]
        maps = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.norm(self.conv(maps)))


def _spatial_parts(module) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    k = module.kernel_size
    conv = nn.Conv2d(2, 1, k, padding=k // 2, bias=False)
    norm = nn.BatchNorm2d(1)
    with torch.no_grad():
        conv.weight.copy_(module.spatial_weight)
    norm.load_state_dict(module.spatial_norm.state_dict())
    return conv, norm


def formula_se(module) -> Reference:
    fc1, fc2 = nn.Linear(module.dim, module.rd_dim), nn.Linear(module.rd_dim, module.dim)
    fc1.load_state_dict(module.fc1.state_dict())
    fc2.load_state_dict(module.fc2.state_dict())
    return Reference("formula SE", FormulaSE(fc1, fc2), "channels_first")


def formula_cbam(module) -> Reference:
    mlp = nn.Sequential(
        nn.Linear(module.dim, module.rd_dim, bias=False),
        nn.ReLU(),
        nn.Linear(module.rd_dim, module.dim, bias=False),
    )
    mlp.load_state_dict(module.mlp.state_dict())
    return Reference("formula CBAM", FormulaCBAM(mlp, *_spatial_parts(module)), "channels_first")


def timm_se(module, se_module) -> Reference:
    ref = se_module(module.dim, rd_channels=module.rd_dim)
    ref.load_state_dict(
        {
            "fc1.weight": module.fc1.weight[:, :, None, None],
            "fc1.bias": module.fc1.bias,
            "fc2.weight": module.fc2.weight[:, :, None, None],
            "fc2.bias": module.fc2.bias,
        }
    )
    return Reference("timm SEModule", ref, "channels_first", target=1.1)


def timm_cbam(module, cbam_module) -> Reference:
    ref = cbam_module(module.dim, rd_channels=module.rd_dim, spatial_kernel_size=module.kernel_size)
    state = {
        "channel.fc1.weight": module.mlp[0].weight[:, :, None, None],
        "channel.fc2.weight": module.mlp[2].weight[:, :, None, None],
        "spatial.conv.conv.weight": module.spatial_weight,
    }
    state.update({f"spatial.conv.bn.{k}": v for k, v in module.spatial_norm.state_dict().items()})
    ref.load_state_dict(state)
    return Reference("timm CbamModule", ref, "channels_first", target=1.1)


def _timm_or_formula(timm_reference, formula_reference, index: int):
    """timm's module (``timm_or_reason``'s ``index``-th class) when timm imports, else the formula."""

    def references(module) -> list[Reference]:
        timm_classes, _ = timm_or_reason()
        if timm_classes is None:
            return [formula_reference(module)]
        return [timm_reference(module, timm_classes[index])]

    return references


# Our module's exact class -> what a user would pick instead (muse subclasses mha, and
# nn.MultiheadAttention is no muse).
REFERENCES: dict[type, Callable[[nn.Module], list[Reference]]] = {
    MultiHeadAttention: lambda module: [torch_mha(module)],
    MUSE: lambda module: [three_branch_muse(module), sdpa_three_branch_muse(module)],
    SqueezeExcite: _timm_or_formula(timm_se, formula_se, 0),
    CBAM: _timm_or_formula(timm_cbam, formula_cbam, 1),
}


def references_for(module: nn.Module) -> list[Reference]:
    """What a user would pick instead of ``module``; empty if there is no common reference."""
    return REFERENCES.get(type(module), lambda _: [])(module)
