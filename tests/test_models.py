"""Backbones place each kind of attention where its kind says, with throwaway modules."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from attnexp.attention.base import AttentionModule, Kind, WeightKind, flatten_grid
from attnexp.attention.none import Identity
from attnexp.data.shape import DataShape
from attnexp.models.cnn import CNN
from attnexp.models.common import kind_of
from attnexp.models.transformer import Transformer
from tests.conftest import example_input


class Probe(AttentionModule):
    """Records what it sees; flops = 7 * positions * dim (any formula the test can recompute)."""

    weight_kinds = {"probe": WeightKind.SPATIAL_GATE}  # x.mean(-1): (B, *grid)

    def __init__(self, dim: int, grid_ndim: int = 1, causal: bool = False) -> None:
        super().__init__(dim, grid_ndim, causal)
        self.seen: list[tuple[int, ...]] = []
        self.weight_calls = 0

    def forward(self, x, return_weights=False):
        self.check_input(x)  # tokens-last, grid rank == grid_ndim, C == dim, or it raises
        self.seen.append(tuple(x.shape))
        y = self.apply(x)
        if return_weights:
            self.weight_calls += 1
            return y, {"probe": x.mean(-1)}
        return y

    def flops(self, grid):
        return 7 * math.prod(grid) * self.dim


class Mixer(Probe):
    kind = Kind.MIXER

    def apply(self, x):
        return x + x.flatten(1, -2).mean(1).reshape(x.shape[0], *[1] * (x.dim() - 2), -1)


class Gate(Probe):
    kind = Kind.GATE

    def apply(self, x):
        return x * torch.sigmoid(x)


class Pool(Probe):
    kind = Kind.POOL

    def apply(self, x):
        return flatten_grid(x)[0].amax(1)


SEQUENCE = DataShape("sequence", [12], num_classes=3, in_channels=1)
IMAGE = DataShape("image", [8, 8], num_classes=10, in_channels=1)
TOKENS = DataShape("tokens", [9], num_classes=4, vocab_size=20)


def transformer(cls, shape, **kw):
    return Transformer(functools.partial(cls), shape, dim=16, depth=3, **kw)


def cnn(cls, shape, **kw):
    return CNN(functools.partial(cls), shape, dim=16, depth=3, **kw)


@pytest.mark.parametrize("build", [transformer, cnn])
@pytest.mark.parametrize("cls", [Mixer, Gate])
@pytest.mark.parametrize("shape", [SEQUENCE, IMAGE, TOKENS])
def test_mixers_and_gates_fill_every_block_and_see_tokens_last(build, cls, shape):
    model = build(cls, shape)
    slots = dict(model.slots())
    assert len(slots) == 3 and all(name.startswith("blocks.") for name in slots)
    x = example_input(shape)
    assert model(x).shape == (5, shape.num_classes)
    for slot in slots.values():
        assert slot.module.seen == [(5, *shape.grid, 16)]
    assert model.attention_flops() == 3 * 7 * math.prod(shape.grid) * 16


@pytest.mark.parametrize("build", [transformer, cnn])
def test_pool_replaces_the_readout_and_blocks_have_no_slot(build):
    model = build(Pool, IMAGE)
    assert [name for name, _ in model.slots()] == ["readout.pool"]
    assert model(example_input(IMAGE)).shape == (5, 10)
    assert model.attention_flops() == 7 * 64 * 16


@pytest.mark.parametrize("build", [transformer, cnn])
def test_identity_leaves_no_slot_and_no_flops(build):
    model = build(Identity, SEQUENCE)
    assert list(model.slots()) == []
    assert model.attention_flops() == 0
    assert model(example_input(SEQUENCE)).shape == (5, 3)


def test_patches_shrink_the_grid_the_slots_see():
    model = transformer(Mixer, IMAGE, patch_size=2)
    model(example_input(IMAGE))
    for _, slot in model.slots():
        assert slot.grid == (4, 4)
        assert slot.module.seen == [(5, 4, 4, 16)]
    assert model.attention_flops() == 3 * 7 * 16 * 16


@pytest.mark.parametrize("build", [transformer, cnn])
def test_weights_only_on_request(build):
    model = build(Mixer, SEQUENCE).eval()
    x = example_input(SEQUENCE)
    logits = model(x)
    slots = dict(model.slots())
    assert all(s.module.weight_calls == 0 for s in slots.values())
    again, weights = model.attention_weights(x)
    torch.testing.assert_close(again, logits)
    assert set(weights) == set(slots)
    assert all(w["probe"].shape == (5, 12) for w in weights.values())
    assert all(s.module.weight_calls == 1 and not s.capture for s in slots.values())


def test_bad_backbone_keys_are_refused_with_the_key_named():
    with pytest.raises(ValueError, match="patch_size"):
        transformer(Mixer, SEQUENCE, patch_size=5)
    with pytest.raises(ValueError, match="kernel_size"):
        cnn(Mixer, SEQUENCE, kernel_size=4)
    with pytest.raises(TypeError, match="AttentionModule"):
        kind_of(functools.partial(torch.nn.Linear))


@pytest.mark.parametrize(
    "build,names",
    [
        (Transformer, ["pos", "embed.embed", "blocks.0.norm1", "blocks.0.norm2", "blocks.0.mlp.0",
                       "blocks.0.mlp.3", "norm", "readout.head"]),
        (CNN, ["embed.embed", "stem.0", "stem.1", "blocks.0.body.0", "blocks.0.body.1",
               "blocks.0.body.3", "blocks.0.body.4", "readout.head"]),
    ],
    ids=["transformer", "cnn"],
)  # fmt: skip
def test_a_classifiers_parameters_keep_their_names_so_old_checkpoints_load(build, names):
    """The language-model mode added no parameter, buffer or name to a classifier."""
    model = build(functools.partial(Mixer), SEQUENCE, dim=16, depth=1)
    assert list(dict.fromkeys(k.rpartition(".")[0] or k for k in model.state_dict())) == names


def test_mlp_ratio_zero_makes_attention_only_blocks():
    """Zoology's MQAR models: no channel MLP, each block is x + attention(norm(x))."""
    model = transformer(Mixer, TOKENS, mlp_ratio=0).eval()
    assert not [k for k in model.state_dict() if ".mlp." in k or ".norm2." in k]
    block = model.blocks[0]
    x = torch.randn(5, 9, 16)
    torch.testing.assert_close(block(x), x + block.slot(block.norm1(x)))
    with_mlp = transformer(Mixer, TOKENS, mlp_ratio=2.0)
    mlp_params = 3 * (16 * 32 + 32 + 32 * 16 + 16 + 2 * 16)  # two linears and a norm per block
    assert sum(p.numel() for p in with_mlp.parameters()) - sum(
        p.numel() for p in model.parameters()
    ) == mlp_params


def test_no_mlp_and_no_attention_leaves_blocks_that_change_nothing():
    model = transformer(Identity, TOKENS, mlp_ratio=0)
    x = torch.randn(5, 9, 16)
    torch.testing.assert_close(model.blocks(x), x)


@pytest.mark.parametrize("ratio", [-1.0, 0.01])  # 0.01 x dim 16 would round down to no MLP
def test_a_negative_or_vanishing_mlp_ratio_is_refused(ratio):
    with pytest.raises(ValueError, match="mlp_ratio must be 0 \\(no MLP\\)"):
        transformer(Mixer, TOKENS, mlp_ratio=ratio)
