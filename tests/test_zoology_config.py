"""experiment=zoology_mqar(_small): Zoology's figure 2 settings, composed from the real configs.

The tests composing the experiments need conf/dataset/zoology_mqar.yaml (issue 14's data part);
the mixer presets are checked on their own with a language-model dataset that exists already.
"""

from __future__ import annotations

import numpy as np
import pytest

from attnexp.config.validate import validate
from attnexp.models import build_model
from attnexp.models.transformer import Transformer
from attnexp.tasks.spec import task_of
from tests.conftest import compose_cfg

MIXERS = ["mha", "linear", "muse", "none", "window", "kv_stride", "cosine"]
# The sub-quadratic mixers, each with Zoology's settings where it has the mixer.
SUBQUADRATIC = {
    "retnet": {}, "gla": {}, "deltanet": {"num_heads": 4, "conv_size": 4},
    "gated_deltanet": {"num_heads": 4, "conv_size": 4},
    "mamba2": {"state_dim": 16, "head_dim": 64, "expand": 2, "conv_size": 4},
    "hyena": {"filter_order": 64, "short_conv_size": 3, "max_len": 64},
    "base_conv": {"kernel_by_layer": [3, -1], "max_len": 64},
    "based": {"pattern": ["conv", "taylor"], "feature_dim": 8, "num_heads": 1, "conv_size": 3},
}  # fmt: skip
LENGTHS = {"L64": (64, 4, 512), "L128": (128, 8, 512), "L256": (256, 16, 256), "L512": (512, 64, 128)}  # fmt: skip


@pytest.mark.parametrize("mixer", MIXERS)
def test_each_mixer_preset_builds_a_causal_model_with_zoologys_attention(mixer, data_dir):
    cfg = compose_cfg(
        ["experiment=shakespeare_char_cpu", f"+zoology_mixer={mixer}", "backbone.mlp_ratio=0",
         f"paths.data_dir={data_dir}"]
    )  # fmt: skip
    model = build_model(cfg)
    assert isinstance(model, Transformer) and model.shape.is_lm
    slots = [slot.module for _, slot in model.slots()]
    if mixer == "none":
        assert slots == []
        return
    assert len(slots) == cfg.backbone.depth and all(s.causal for s in slots)
    assert cfg.attention.num_heads == 1
    if mixer != "linear":
        assert cfg.attention.attn_drop == 0.1
    names = {"window": "mha-window16", "kv_stride": "mha-kvstride2", "cosine": "mha-cosine"}
    assert cfg.choices.attention == names.get(mixer, mixer)


@pytest.mark.parametrize("mixer", sorted(SUBQUADRATIC))
def test_each_subquadratic_preset_sets_zoologys_settings_and_builds_in_the_study(mixer):
    from omegaconf import OmegaConf

    cfg = zoology(f"zoology_mixer={mixer}")
    assert cfg.choices.attention == mixer
    attention = OmegaConf.to_container(cfg.attention, resolve=True)
    assert {k: attention[k] for k in SUBQUADRATIC[mixer]} == SUBQUADRATIC[mixer]
    model = build_model(cfg)
    assert all(slot.module.causal for _, slot in model.slots())
    assert model.state_floats() > 0  # the state-size axis of the figure


def zoology(*overrides: str):
    return compose_cfg(["experiment=zoology_mqar", *overrides])


def test_the_study_trains_as_zoology_figure_2():  # needs conf/dataset/zoology_mqar.yaml
    cfg = zoology()
    assert cfg.choices.dataset == "zoology_mqar-L64" and cfg.dataset.shape.task == "lm"
    assert (cfg.backbone.depth, cfg.backbone.mlp_ratio, cfg.backbone.positions) == (2, 0, "learned")
    assert cfg.optim.optimizer.weight_decay == 0.1 and cfg.trainer.max_epochs == 64
    assert dict(cfg.callbacks.stop_at) == {
        "_target_": "attnexp.training.callbacks.StopAtThreshold", "monitor": "val/acc", "threshold": 0.99,
        "mode": "max",
    }  # fmt: skip
    assert cfg.dataset.num_train == 100_000 and cfg.dataset.num_test == 3_000
    assert cfg.dataset.vocab_size == cfg.dataset.shape.vocab_size == 8192
    assert not [k for k in build_model(cfg).state_dict() if ".mlp." in k]
    # Picked by accuracy, as Zoology reports: the tested checkpoint, the objective, the record.
    assert (cfg.objective, cfg.objective_mode) == ("val/acc_best", "max")
    assert (cfg.callbacks.model_checkpoint.monitor, cfg.callbacks.model_checkpoint.mode) == (
        "val/acc", "max"
    )
    assert task_of(cfg).objective == "val/acc_best"
    validate(cfg)


@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_each_length_brings_its_pairs_and_batch(length):  # needs conf/dataset/zoology_mqar.yaml
    cfg = zoology(f"zoology_len={length}")
    assert (cfg.dataset.seq_len, cfg.dataset.num_kv_pairs, cfg.dataset.batch_size) == LENGTHS[length]


def test_the_swept_learning_rates_are_zoologys_logspace():
    from tests.test_sweep import sweep_params

    lrs = [float(v) for v in sweep_params("zoology_mqar")["optim.optimizer.lr"].split(",")]
    np.testing.assert_allclose(lrs, np.logspace(-4, -2, 4), rtol=1e-4)


def test_runs_differing_in_the_learning_rate_share_a_cell_but_not_a_name():
    a, b = zoology("optim.optimizer.lr=1e-4"), zoology("optim.optimizer.lr=1e-2", "backbone.dim=128")
    assert a.run_name != b.run_name
    assert a.choices.attention == b.choices.attention == "mha"
    assert (a.choices.backbone, b.choices.backbone) == ("transformer-d64", "transformer-d128")
    assert a.report_best_over == "optim.optimizer.lr"


def test_the_small_study_keeps_the_first_two_columns_on_a_cpu():
    from tests.test_sweep import sweep_params

    params = sweep_params("zoology_mqar_small")
    assert params["zoology_len"] == "L64,L128" and params["backbone.dim"] == "64,128"
    assert params["zoology_mixer"] == sweep_params("zoology_mqar")["zoology_mixer"]
    cfg = compose_cfg(["experiment=zoology_mqar_small"])
    assert cfg.trainer.accelerator == "cpu" and cfg.dataset.num_train == 100_000
    assert (cfg.dataset.batch_size, cfg.trainer.max_epochs) == (64, 2)
    # Two rates within the span of the full study's middle two, that one (2.1544e-3) among them.
    grid = [float(v) for v in sweep_params("zoology_mqar")["optim.optimizer.lr"].split(",")]
    lrs = [float(v) for v in params["optim.optimizer.lr"].split(",")]
    assert len(lrs) == 2 and grid[2] in lrs and all(grid[1] <= lr <= grid[2] for lr in lrs)
    assert cfg.trainer.val_check_interval == 250
