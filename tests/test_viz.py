"""Attention figures from synthetic weights of every kind in the contract, on 1-D and 2-D grids."""

from __future__ import annotations

import pytest
import torch

from attnexp.viz import PLOTTERS, save_attention_figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
B, HEADS, C = 5, 2, 16


def _weights(grid: tuple[int, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """What mha, pool, se and cbam return with return_weights=True, as the contract states."""
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
    }


@pytest.mark.parametrize("grid", [(12,), (4, 5)], ids=["1d", "2d"])
def test_one_valid_png_per_slot_and_kind(grid, tmp_path):
    weights = _weights(grid)
    paths = save_attention_figures(weights, grid, tmp_path, max_samples=2)
    expected = {f"{slot}.{key}.png" for slot, ws in weights.items() for key in ws}
    assert {p.name for p in paths} == expected
    assert {p.name for p in tmp_path.iterdir()} == expected  # nothing else, no temp files
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_max_samples_bounds_the_figure(tmp_path):
    w = {"s": {"channel": torch.rand(B, C)}}
    (small,) = save_attention_figures(w, (8,), tmp_path / "a", max_samples=1)
    (large,) = save_attention_figures(w, (8,), tmp_path / "b", max_samples=4)
    # One subplot row per sample: a taller image for more samples.
    assert _png_height(large) > 3 * _png_height(small)


def _png_height(path) -> int:
    # The IHDR chunk holds width and height as big-endian 32-bit integers at bytes 16..24.
    return int.from_bytes(path.read_bytes()[20:24], "big")


def test_unknown_key_is_skipped_with_a_warning(tmp_path):
    w = {"s": {"channel": torch.rand(B, C), "mystery": torch.rand(B, 3)}}
    with pytest.warns(UserWarning, match="'mystery'"):
        paths = save_attention_figures(w, (8,), tmp_path)
    assert [p.name for p in paths] == ["s.channel.png"]


def test_wrong_shapes_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"'attn' must have shape \(B, heads, N, M\)"):
        save_attention_figures({"s": {"attn": torch.rand(B, 4, 4)}}, (4,), tmp_path)
    with pytest.raises(ValueError, match="'spatial' must have shape"):
        save_attention_figures({"s": {"spatial": torch.rand(B, 3, 3)}}, (4, 5), tmp_path)
    with pytest.raises(ValueError, match="grid must be"):
        save_attention_figures({}, (2, 3, 4), tmp_path)


def test_every_contract_kind_has_a_plotter():
    assert set(PLOTTERS) == {"attn", "pool", "channel", "spatial"}


def test_self_attention_on_an_image_grid_adds_the_centre_query_maps(tmp_path):
    attn = {"s": {"attn": torch.rand(1, HEADS, 20, 20).softmax(-1)}}
    (flat,) = save_attention_figures(attn, (20,), tmp_path / "1d")
    (image,) = save_attention_figures(attn, (4, 5), tmp_path / "2d")
    # PNG width sits at bytes 16..20 of the IHDR chunk: twice the panels, about twice as wide.
    width = int.from_bytes(image.read_bytes()[16:20], "big")
    assert width > 1.7 * int.from_bytes(flat.read_bytes()[16:20], "big")
