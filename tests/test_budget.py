"""Matched budgets (``match=params|flops``): the width each variant gets and what a run records."""

from __future__ import annotations

import random

import pytest

from attnexp.config.budget import BAND, MAX_SCALE, apply_budget, closest_width, measure
from attnexp.models import build_model
from attnexp.runs.identity import config_hash
from tests.conftest import compose_cfg, tiny


def params_of(cfg) -> int:
    return sum(p.numel() for p in build_model(cfg).parameters() if p.requires_grad)


def test_se_on_the_cnn_gets_the_width_closest_to_mhas_parameters():
    cfg = compose_cfg(["attention=se", "backbone=cnn", "match=params"])
    reference = params_of(compose_cfg(["attention=mha", "backbone=cnn"]))
    matched = apply_budget(cfg)
    assert matched.reference_count == reference and matched.reference_dim == 64
    assert cfg.backbone.dim == matched.dim != 64  # SE is lighter than MHA: it gets wider
    assert matched.count == params_of(cfg)
    assert abs(matched.count - reference) <= BAND * reference and matched.within_band
    # Known answer: one channel narrower or wider is farther from the reference.
    for other in (matched.dim - 1, matched.dim + 1):
        assert abs(measure(cfg, "params", other, cfg.attention) - reference) > abs(
            matched.count - reference
        )
    assert cfg.matched.dim == matched.dim  # recorded in the config the run trains


def test_the_reference_keeps_its_width_and_a_variant_gets_only_widths_it_accepts():
    cfg = compose_cfg(["attention=mha", "match=params"])
    assert apply_budget(cfg).dim == 64 and cfg.backbone.dim == 64
    # mha has 4 heads: matched to SE's budget it gets a multiple of 4.
    cfg = compose_cfg(["attention=mha", "match=params", "match_reference=se"])
    matched = apply_budget(cfg)
    assert matched.dim % 4 == 0 and matched.dim < 64 and matched.within_band


def test_flops_matching_counts_attention_flops_per_sample():
    cfg = compose_cfg(["attention=linear", "backbone=transformer", "match=flops"])
    matched = apply_budget(cfg)
    reference = build_model(compose_cfg(["attention=mha", "backbone=transformer"]))
    assert matched.by == "flops" and matched.reference_count == reference.attention_flops()
    assert matched.count == build_model(cfg).attention_flops()
    assert matched.within_band and cfg.backbone.dim == matched.dim


def test_an_impossible_band_trains_at_the_configured_width_recorded_outside():
    cfg = compose_cfg(["attention=none", "match=flops"])  # `none` spends no attention FLOPs
    matched = apply_budget(cfg)
    assert matched.count == 0 and matched.reference_count > 0
    assert not matched.within_band and cfg.matched.within_band is False
    assert cfg.backbone.dim == 64  # every width is as far: the configured one is kept


def test_matching_is_deterministic_idempotent_and_part_of_the_hash():
    plain = compose_cfg(["attention=se"])
    first, second = (compose_cfg(["attention=se", "match=params"]) for _ in range(2))
    assert apply_budget(plain) is None and "matched" not in plain
    apply_budget(first)
    apply_budget(second)
    assert config_hash(first) == config_hash(second) != config_hash(plain)
    dim = first.backbone.dim
    apply_budget(first)  # a saved config that carries `matched` is not matched again
    assert first.backbone.dim == dim


@pytest.mark.parametrize(
    ("override", "key"),
    [("match=size", "match must be null or one of params, flops"),
     ("match_reference=nope", "match_reference")],
)  # fmt: skip
def test_bad_match_settings_are_refused_naming_the_key(override, key):
    cfg = compose_cfg(["attention=se", "match=params", override])
    with pytest.raises(ValueError, match=key):
        apply_budget(cfg)


def test_closest_width_agrees_with_brute_force():
    """Random monotone counts with refused widths: the search finds the brute-force optimum."""
    rng = random.Random(0)
    for _ in range(200):
        a, b, step = rng.randint(1, 50), rng.randint(0, 500), rng.choice([1, 2, 4, 8])
        dim = step * rng.randint(1, 16)

        def count(d, a=a, b=b, step=step):
            return a * d * d + b * d if d % step == 0 else None

        target = rng.randint(1, count(dim) * 4)
        width, got = closest_width(count, target, dim)
        widths = [d for d in range(1, dim * MAX_SCALE + 1) if count(d) is not None]
        best = min(abs(count(d) - target) for d in widths)
        assert width % step == 0 and got == count(width)
        assert abs(got - target) == best, (a, b, step, dim, target)


def test_a_matched_run_records_its_width_and_a_rerun_skips_it(tmp_path, data_dir):
    from attnexp.cli import train_main
    from attnexp.runs.record import read_results

    overrides = [*tiny("se", "cnn", "mnist1d", data_dir), "debug=limit", "figures=0", "match=params"]
    train_main.__wrapped__(compose_cfg(overrides, tmp_path))
    results = read_results(tmp_path)
    matched = results["matched"]
    assert results["status"] == "completed"
    assert matched["by"] == "params" and matched["reference"] == "mha"
    assert matched["reference_dim"] == 16 and matched["dim"] != 16
    assert results["params"] == matched["count"]
    assert matched["within_band"] is True
    # The same command again finds the same width, so the same hash: the completed run is skipped.
    written = (tmp_path / "results.json").stat().st_mtime_ns
    train_main.__wrapped__(compose_cfg(overrides, tmp_path))
    assert (tmp_path / "results.json").stat().st_mtime_ns == written


def test_the_report_flags_a_row_with_a_run_outside_the_band():
    from attnexp.config.budget import budget_flag

    def record(count, within):
        return {"by": "params", "reference": "mha", "reference_dim": 64, "reference_count": 1000,
                "dim": 80, "count": count, "within_band": within}  # fmt: skip

    assert budget_flag([]) is None
    assert budget_flag([record(990, True), record(1030, True)]) == "+3.0%"
    assert budget_flag([record(990, True), record(800, False)]) == "outside"
