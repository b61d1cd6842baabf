"""The attention diagnostics (``attnexp.attention.diagnostics``): known answers on maps whose
statistics are known, block-by-block equal to the whole map, padding left out, the bounds that
``qk_norm`` and ``softcap`` promise, and the report's columns."""

from __future__ import annotations

import math

import pytest
import torch

from attnexp.attention.design import MapBlock, grid_coordinates, map_blocks
from attnexp.attention.diagnostics import STATISTICS, MapStatistics, measure, summary
from attnexp.attention.mha import MultiHeadAttention

DIM, HEADS = 16, 2


def stats_of(weights: torch.Tensor, logits: torch.Tensor | None = None, grid=None, padding=None):
    """The statistics of one explicit map ``(B, h, N, M)`` on keys at positions 0..M-1."""
    n, m = weights.shape[-2:]
    observer = MapStatistics()
    block = MapBlock(0, torch.zeros_like(weights) if logits is None else logits, weights, None)
    queries = grid_coordinates(grid or (n,))
    observer.add(block, queries, grid_coordinates(grid or (m,)), padding)
    return observer.per_map()


def test_a_uniform_map_has_entropy_log_n_and_a_first_key_mass_of_one_over_n():
    n = 12
    stats = stats_of(torch.full((3, HEADS, n, n), 1 / n, dtype=torch.float64))
    assert stats["entropy"] == pytest.approx([math.log(n)] * HEADS, abs=1e-12)
    assert stats["sink_mass"] == pytest.approx([1 / n] * HEADS, abs=1e-12)
    mean_gap = sum(abs(i - j) for i in range(n) for j in range(n)) / n**2
    assert stats["distance"] == pytest.approx([mean_gap] * HEADS, abs=1e-12)


def test_a_one_hot_map_on_the_first_position_is_all_sink():
    n = 9
    weights = torch.zeros(2, HEADS, n, n, dtype=torch.float64)
    weights[..., 0] = 1.0
    stats = stats_of(weights)
    assert stats["sink_mass"] == [1.0] * HEADS and stats["entropy"] == [0.0] * HEADS
    assert stats["distance"] == pytest.approx([(n - 1) / 2] * HEADS)  # query i is i away from 0


def test_each_query_looking_at_itself_has_distance_zero_and_on_a_grid_distance_is_euclidean():
    weights = torch.eye(6, dtype=torch.float64).expand(1, HEADS, 6, 6)
    assert stats_of(weights)["distance"] == [0.0] * HEADS
    grid = (2, 3)  # every query looks at the far corner (1, 2): distance sqrt(dr^2 + dc^2)
    corner = torch.zeros(1, HEADS, 6, 6, dtype=torch.float64)
    corner[..., 5] = 1.0
    expected = sum(math.hypot(1 - r, 2 - c) for r in range(2) for c in range(3)) / 6
    assert stats_of(corner, grid=grid)["distance"] == pytest.approx([expected] * HEADS)


def test_padded_queries_are_left_out_and_rows_without_weight_count_only_for_the_sink():
    weights = torch.full((1, 1, 4, 4), 0.25, dtype=torch.float64)
    weights[..., 3, :] = torch.tensor([1.0, 0, 0, 0])  # a padded query that would change it all
    weights[..., 2, :] = 0.0  # a row that gave up all its weight (softpick can)
    padding = torch.tensor([[True, True, True, False]])
    stats = stats_of(weights, padding=padding)
    assert stats["entropy"] == pytest.approx([math.log(4)])  # rows 0 and 1 only
    assert stats["sink_mass"] == pytest.approx([(0.25 + 0.25 + 0.0) / 3])  # rows 0, 1 and 2


def test_blocks_of_query_rows_measure_what_the_whole_map_measures():
    torch.manual_seed(0)
    q, k = (torch.randn(2, HEADS, 11, 4, dtype=torch.float64) for _ in range(2))
    coords = grid_coordinates((11,))
    whole, blocked = MapStatistics(), MapStatistics()
    whole(map_blocks(q, k, is_causal=True, softcap=3.0), coords, coords, None)
    blocked(map_blocks(q, k, is_causal=True, softcap=3.0, block_elements=2 * HEADS * 2 * 11), coords, coords, None)
    for name, values in whole.per_map().items():
        assert blocked.per_map()[name] == pytest.approx(values, abs=1e-12), name


@pytest.mark.parametrize("knobs", [{}, {"normalize": "softpick"}, {"differential": True},
                                   {"sink": True, "alibi": True}, {"forget_gate": True}])  # fmt: skip
def test_appended_padding_leaves_the_diagnostics_alone(knobs):
    module = MultiHeadAttention(DIM, causal=True, num_heads=HEADS, **knobs).double()
    x = torch.randn(2, 8, DIM, dtype=torch.float64)
    padded = torch.cat([x, torch.randn(2, 3, DIM, dtype=torch.float64)], dim=1)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[:, 8:] = False
    plain, masked = measure(module, x), measure(module, padded, mask)
    maps = HEADS * (2 if knobs.get("differential") else 1)
    for name, values in plain["core"].items():
        assert len(values) == maps
        assert masked["core"][name] == pytest.approx(values, abs=1e-10), name


def test_rms_qk_norm_and_softcap_bound_the_largest_logit_and_plain_attention_does_not():
    x = 100 * torch.randn(2, 10, DIM)
    d = DIM // HEADS

    def top(**knobs):
        torch.manual_seed(0)
        return summary(measure(MultiHeadAttention(DIM, num_heads=HEADS, **knobs), x))["max_logit"]

    assert top(qk_norm="rms") <= math.sqrt(d) + 1e-4  # |q||k| / sqrt(d) = sqrt(d) at unit gains
    assert top(softcap=5.0) <= 5.0  # tanh rounds to 1 in float32 at these scores
    assert top() > 10 * math.sqrt(d)


def test_measuring_changes_nothing_and_summary_reduces_over_slots():
    module = MultiHeadAttention(DIM, num_heads=HEADS)
    x = torch.randn(2, 7, DIM)
    before = module(x)
    per_slot = measure(module, x)
    assert module.core.observer is None and torch.equal(module(x), before)
    both = {"a": per_slot["core"], "b": {k: [v + 1 for v in vs] for k, vs in per_slot["core"].items()}}
    reduced = summary(both)
    assert reduced["entropy"] == pytest.approx(sum(per_slot["core"]["entropy"]) / HEADS + 0.5)
    assert reduced["max_logit"] == max(per_slot["core"]["max_logit"]) + 1
    assert summary({}) == dict.fromkeys(("entropy", "sink_mass", "distance", "max_logit"))


def test_each_statistic_has_its_recorded_cost_and_label():
    from attnexp.runs.record import COST_NAMES, DIAGNOSTIC_LABELS, DIAGNOSTIC_PREFIX

    assert tuple(DIAGNOSTIC_LABELS) == STATISTICS
    assert all(DIAGNOSTIC_PREFIX + name in COST_NAMES for name in STATISTICS)


def test_the_report_shows_the_diagnostics_columns_only_where_a_run_has_them():
    from attnexp.report.table import shown_costs

    class Row:
        def __init__(self, entropy):
            self.costs = {"attn_entropy": entropy, "attn_sink_mass": math.nan,
                          "attn_distance": math.nan, "attn_max_logit": math.nan,
                          "state_floats": math.nan}  # fmt: skip
            self.costs |= dict.fromkeys(("params", "attention_flops", "throughput",
                                         "peak_memory_mb", "wall_time_s"), 1.0)  # fmt: skip

    names = [c.name for c in shown_costs([Row(math.nan), Row(1.5)])]
    assert "attn_entropy" in names and "attn_sink_mass" not in names and "params" in names
    assert "attn_entropy" not in [c.name for c in shown_costs([Row(math.nan)])]


def test_the_report_averages_each_layer_over_maps_and_seeds(tmp_path):
    import json

    from attnexp.report.figures import diagnostics_by_layer

    stats = [{"blocks.0.slot": {"entropy": [1.0, 3.0], "sink_mass": [0.1, 0.3], "distance": [2.0, 2.0],
                                "max_logit": [5.0, None]},
              "blocks.1.slot": {"entropy": [0.5, 0.5], "sink_mass": [0.0, 0.2], "distance": [4.0, 6.0],
                                "max_logit": [1.0, 3.0]}},
             {"blocks.0.slot": {"entropy": [2.0, 2.0], "sink_mass": [0.2, 0.2], "distance": [2.0, 4.0],
                                "max_logit": [7.0, 7.0]},
              "blocks.1.slot": {"entropy": [1.5, 1.5], "sink_mass": [0.1, 0.1], "distance": [5.0, 5.0],
                                "max_logit": [2.0, 2.0]}}]  # fmt: skip
    dirs = []
    for i, per_slot in enumerate(stats):
        (tmp_path / f"s{i}").mkdir()
        (tmp_path / f"s{i}" / "results.json").write_text(json.dumps({"attention_diagnostics": per_slot}))
        dirs.append(tmp_path / f"s{i}")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "results.json").write_text(json.dumps({"attention_diagnostics": {}}))
    layers = diagnostics_by_layer(dirs)
    assert layers["entropy"] == pytest.approx([2.0, 1.0])
    assert layers["sink_mass"] == pytest.approx([0.2, 0.1])
    assert layers["distance"] == pytest.approx([2.5, 5.0])
    assert layers["max_logit"] == pytest.approx([6.0, 2.0])  # a missing map leaves the mean of the rest
    assert diagnostics_by_layer([tmp_path / "none"]) == {}
