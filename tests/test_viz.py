"""Attention figures from synthetic weights of every kind in the contract, on 1-D and 2-D grids."""

from __future__ import annotations

import warnings

import pytest
import torch

from attnexp.attention import AttentionModule, WeightKind
from attnexp.training.pipeline import build_model
from attnexp.training.viz import PLOTTERS, save_attention_figures, save_model_figures
from tests.conftest import ATTENTIONS, compose_cfg, tiny

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
B, HEADS, C = 5, 2, 16


def _weights(grid: tuple[int, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """Weights of every kind, under names a module might give them."""
    n = 1
    for g in grid:
        n *= g
    g = torch.Generator().manual_seed(0)
    return {
        "blocks.0.attn": {"attn": torch.rand(B, HEADS, n, n, generator=g).softmax(-1)},
        "head.pool": {"pool": torch.rand(B, HEADS, n, generator=g).softmax(-1)},
        "blocks.1.gate": {"channel": torch.rand(B, C, generator=g)},
        "blocks.2.gate": {
            "channel": torch.rand(B, C, generator=g),
            "spatial": torch.rand(B, *grid, generator=g),
        },
        "blocks.3.node": {"node": torch.rand(B, 1, n, generator=g).softmax(-1)},
        "blocks.4.muse": {"branches": torch.rand(3, generator=g).softmax(-1)},
    }


KINDS = {
    "blocks.0.attn": {"attn": WeightKind.ATTENTION_MAP},
    "head.pool": {"pool": WeightKind.POSITION_WEIGHTS},
    "blocks.1.gate": {"channel": WeightKind.CHANNEL_GATE},
    "blocks.2.gate": {"channel": WeightKind.CHANNEL_GATE, "spatial": WeightKind.SPATIAL_GATE},
    "blocks.3.node": {"node": WeightKind.POSITION_WEIGHTS},
    "blocks.4.muse": {"branches": WeightKind.BRANCH_MIX},
}
ONE = {"s": {"attn": WeightKind.ATTENTION_MAP, "channel": WeightKind.CHANNEL_GATE,
             "spatial": WeightKind.SPATIAL_GATE}}  # fmt: skip


@pytest.mark.parametrize("grid", [(12,), (4, 5)], ids=["1d", "2d"])
def test_one_valid_png_per_slot_and_kind(grid, tmp_path):
    weights = _weights(grid)
    paths = save_attention_figures(weights, KINDS, grid, tmp_path, max_samples=2)
    expected = {f"{slot}.{key}.png" for slot, ws in weights.items() for key in ws}
    assert {p.name for p in paths} == expected
    assert {p.name for p in tmp_path.iterdir()} == expected  # nothing else, no temp files
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_max_samples_bounds_the_figure(tmp_path):
    w = {"s": {"channel": torch.rand(B, C)}}
    (small,) = save_attention_figures(w, ONE, (8,), tmp_path / "a", max_samples=1)
    (large,) = save_attention_figures(w, ONE, (8,), tmp_path / "b", max_samples=4)
    # One subplot row per sample: a taller image for more samples.
    assert _png_height(large) > 3 * _png_height(small)


def _png_height(path) -> int:
    # The IHDR chunk holds width and height as big-endian 32-bit integers at bytes 16..24.
    return int.from_bytes(path.read_bytes()[20:24], "big")


def test_a_weight_without_a_declared_kind_is_skipped_with_a_warning(tmp_path):
    w = {"s": {"channel": torch.rand(B, C), "mystery": torch.rand(B, 3)}}
    with pytest.warns(UserWarning, match="'mystery'"):
        paths = save_attention_figures(w, ONE, (8,), tmp_path)
    assert [p.name for p in paths] == ["s.channel.png"]


def test_the_figure_follows_the_declared_kind_not_the_name(tmp_path):
    """The same (B, C) tensor named "attn": declared a channel gate it is drawn; declared an
    attention map its shape is refused."""
    w = {"s": {"attn": torch.rand(B, C)}}
    gate = {"s": {"attn": WeightKind.CHANNEL_GATE}}
    (path,) = save_attention_figures(w, gate, (8,), tmp_path)
    assert path.name == "s.attn.png" and path.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match=r"'attn' must have shape \(B, heads, N, M\)"):
        save_attention_figures(w, ONE, (8,), tmp_path)


def test_wrong_shapes_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"'attn' must have shape \(B, heads, N, M\)"):
        save_attention_figures({"s": {"attn": torch.rand(B, 4, 4)}}, ONE, (4,), tmp_path)
    with pytest.raises(ValueError, match="'spatial' must have shape"):
        save_attention_figures({"s": {"spatial": torch.rand(B, 3, 3)}}, ONE, (4, 5), tmp_path)
    with pytest.raises(ValueError, match=r"'attn' must have shape .* got \(5, 2, 6, 6\)"):
        # 6 queries on a grid of 4 positions
        save_attention_figures({"s": {"attn": torch.rand(B, 2, 6, 6)}}, ONE, (4,), tmp_path)
    with pytest.raises(ValueError, match="grid must be"):
        save_attention_figures({}, {}, (2, 3, 4), tmp_path)


def test_every_weight_kind_has_a_plotter():
    assert set(PLOTTERS) == set(WeightKind)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_every_variant_in_a_model_is_drawn_whole(attention, data_dir, tmp_path):
    """Every weight kind each variant returns has a figure (an unknown kind would only warn), and a
    model without attention slots draws nothing and makes no dir."""
    model = build_model(compose_cfg(tiny(attention, "transformer", "mnist1d", data_dir)))
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        paths = save_model_figures(model, torch.randn(3, 40, 1), tmp_path / "f", max_samples=2)
    assert model.training  # the mode is restored
    # a slot whose module declares weight kinds draws them (none: no slot; a convolution: no map)
    drawn = any(m.weight_kinds for m in model.modules() if isinstance(m, AttentionModule))
    assert drawn == (attention not in ("none", "hyena", "base_conv", "based"))  # based's block 0: conv
    assert bool(paths) == drawn
    assert (tmp_path / "f").exists() == drawn
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in paths)


def test_self_attention_on_an_image_grid_adds_the_centre_query_maps(tmp_path):
    attn = {"s": {"attn": torch.rand(1, HEADS, 20, 20).softmax(-1)}}
    (flat,) = save_attention_figures(attn, ONE, (20,), tmp_path / "1d")
    (image,) = save_attention_figures(attn, ONE, (4, 5), tmp_path / "2d")
    # PNG width sits at bytes 16..20 of the IHDR chunk: twice the panels, about twice as wide.
    width = int.from_bytes(image.read_bytes()[16:20], "big")
    assert width > 1.7 * int.from_bytes(flat.read_bytes()[16:20], "big")
