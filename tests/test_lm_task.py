"""The language-modelling task: nanoGPT's loss and schedule, exact whole-split metrics, the
run-record schema, the experiments, and bad LM configs refused before training.

The unit tests use a stand-in causal model (an embedding and a linear head: a bigram model, causal
by construction) and a stand-in data module. The tests marked "after the merge" at the end need
the LM data module (``dataset=text``/``shakespeare_char``), the LM backbones and causal attention.
"""

from __future__ import annotations

import math
import random
import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from attnexp.config.attention import available
from attnexp.config.paths import CONFIG_DIR
from attnexp.config.validate import validate
from attnexp.data.shape import IGNORE_INDEX
from attnexp.data.vocab import Vocabulary
from attnexp.runs.checkpoint import load_checkpoint
from attnexp.tasks.lm import LanguageModel, TokenMetrics, heldout_loss
from attnexp.tasks.optim import param_groups, warmup_cosine
from attnexp.tasks.spec import MAX, MIN, language_modelling, task_of
from tests.conftest import IMAGE_BACKBONES, compose_cfg

V = 7  # vocabulary of the stand-in data


class Bigram(nn.Module):
    """Logits of the next token from the current one only: causal by construction. A backbone's
    interface: ``features`` and the head ``readout``."""

    def __init__(self, vocab: int = V) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.readout = nn.Linear(16, vocab)

    def features(self, x):
        return self.embed(x)

    def forward(self, x):
        return self.readout(self.features(x))


def cyclic_batches(n: int, batch: int = 4, length: int = 8, pad_last: int = 0):
    """Windows of the sequence 0, 1, ..., V-1, 0, 1, ...: the next token is (t + 1) mod V. The
    last ``pad_last`` labels of the last batch are IGNORE_INDEX (a short last window)."""
    batches = []
    for i in range(n):
        start = torch.arange(batch).unsqueeze(1) * 3 + i
        x = (start + torch.arange(length)) % V
        y = (x + 1) % V
        batches.append((x, y))
    if pad_last:
        batches[-1][1][-1, -pad_last:] = IGNORE_INDEX
    return batches


class StandInData(L.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.train, self.val, self.test = (
            cyclic_batches(8), cyclic_batches(3, pad_last=5), cyclic_batches(2, pad_last=3)
        )  # fmt: skip

    # batch_size=None: each item is already a batch.
    def train_dataloader(self):
        return DataLoader(self.train, batch_size=None)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=None)

    def test_dataloader(self):
        return DataLoader(self.test, batch_size=None)


def fit_stand_in(tmp_path, max_steps: int = 60, **kwargs) -> tuple[LanguageModel, L.Trainer]:
    torch.manual_seed(0)
    module = LanguageModel(
        Bigram(), optimizer=lambda params: torch.optim.AdamW(params, lr=0.05), **kwargs
    )
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, max_epochs=-1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1, default_root_dir=tmp_path,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's tips on workers and small batches
        trainer.fit(module, datamodule=StandInData())
    return module, trainer


# --------------------------------------------------------------------------- metrics


def test_uniform_logits_give_ln_v_nats_log2_v_bits_and_perplexity_v():
    metric = TokenMetrics()
    y = torch.tensor([[1, 2, IGNORE_INDEX], [0, IGNORE_INDEX, IGNORE_INDEX]])
    logits = torch.zeros(2, 3, V)
    logits[..., 0] = 1e-3  # argmax 0: exactly one scored token (the label 0) is right
    metric.update(logits, y)
    values = metric.compute()
    assert values["tokens"] == 3  # only scored tokens count
    assert values["loss"] == pytest.approx(math.log(V), abs=1e-3)
    assert values["bpt"] == pytest.approx(math.log2(V), abs=1e-3)
    assert values["ppl"] == pytest.approx(V, rel=1e-3)
    assert values["acc"] == pytest.approx(1 / 3)
    assert "bpb" not in values and "bpc" not in values  # no unit known: not guessed


def test_bits_per_byte_divide_the_summed_bits_by_the_scored_tokens_bytes():
    # Ids 0, 1, 2 stand for 1, 2 and 3 bytes (e.g. 'a', 'é', '€'); uniform logits: ln V nats each.
    metric = TokenMetrics(byte_lengths=torch.tensor([1, 2, 3] + [1] * (V - 3)), per_character=True)
    y = torch.tensor([[1, 2, IGNORE_INDEX], [0, 2, IGNORE_INDEX]])  # 2 + 3 + 1 + 3 = 9 bytes
    metric.update(torch.zeros(2, 3, V), y)
    values = metric.compute()
    assert values["bpb"] == pytest.approx(4 * math.log2(V) / 9, rel=1e-6)
    assert values["bpc"] == values["bpt"] == pytest.approx(math.log2(V), rel=1e-6)
    # A Vocabulary's lengths are its symbols' UTF-8 bytes.
    assert Vocabulary("char", "aé€").byte_lengths.tolist() == [1, 2, 3]
    assert Vocabulary.bytes().byte_lengths.sum() == 256


def test_split_loss_is_the_token_weighted_mean_not_a_mean_of_batch_means():
    torch.manual_seed(0)
    batches = [(torch.randn(2, 5, V), torch.randint(0, V, (2, 5))) for _ in range(2)]
    batches[1][1][:, 1:] = IGNORE_INDEX  # the second batch scores 2 tokens, the first 10
    metric = TokenMetrics()
    for logits, y in batches:
        metric.update(logits, y)
    logits = torch.cat([b[0].reshape(-1, V) for b in batches])
    y = torch.cat([b[1].reshape(-1) for b in batches])
    expected = F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX)
    batch_means = sum(F.cross_entropy(b[0].reshape(-1, V), b[1].reshape(-1)) for b in batches) / 2
    assert metric.compute()["loss"] == pytest.approx(float(expected), rel=1e-6)
    assert abs(float(batch_means) - float(expected)) > 1e-3  # the test can tell them apart


def test_heldout_loss_is_the_loss_over_val_and_test_as_one_split():
    torch.manual_seed(0)
    splits = {"val": (torch.randn(3, 4, V), torch.randint(0, V, (3, 4))),
              "test": (torch.randn(1, 4, V), torch.randint(0, V, (1, 4)))}  # fmt: skip
    losses, tokens = {}, {}
    for stage, (logits, y) in splits.items():
        metric = TokenMetrics()
        metric.update(logits, y)
        computed = metric.compute()
        losses[stage], tokens[stage] = float(computed["loss"]), int(computed["tokens"])
    both = F.cross_entropy(
        torch.cat([s[0] for s in splits.values()]).reshape(-1, V),
        torch.cat([s[1] for s in splits.values()]).reshape(-1),
    )
    assert heldout_loss(losses, tokens) == pytest.approx(float(both), rel=1e-6)


# --------------------------------------------------------------------------- the LightningModule


def test_language_model_learns_a_known_sequence_and_logs_what_its_task_declares(tmp_path):
    module, trainer = fit_stand_in(tmp_path)
    fit_keys = set(trainer.callback_metrics)
    trainer.test(module, datamodule=StandInData(), verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # The next token of the cycle is a function of the current one: a bigram model learns it.
    assert metrics["test/acc"] == 1.0
    assert metrics["test/loss"] < 0.05
    assert metrics["test/bpt"] == pytest.approx(metrics["test/loss"] / math.log(2))
    assert metrics["test/ppl"] == pytest.approx(math.exp(metrics["test/loss"]))
    # The last test batch leaves 3 labels unscored: 2 batches x 4 windows x 8 positions - 3.
    assert module.scored_tokens["test"] == 2 * 4 * 8 - 3
    assert module.scored_tokens["val"] == 3 * 4 * 8 - 5
    task = language_modelling()
    logged = (fit_keys | set(metrics)) - {"heldout/loss"}
    # The stand-in data has no vocabulary: bits per byte and per character are left out.
    required = {k for m in task.metrics if not m.optional for k in m.keys()}
    assert logged == required - {"heldout/loss"}
    assert fit_keys >= {"val/loss_best", "train/loss"}


def test_val_loss_best_is_the_minimum_so_far_and_travels_in_checkpoints(tmp_path):
    module, trainer = fit_stand_in(tmp_path, max_steps=16)  # two epochs: two validations
    best = float(trainer.callback_metrics["val/loss_best"])
    assert best <= float(trainer.callback_metrics["val/loss"]) + 1e-7
    state = module.state_dict()
    assert state["val_loss_best.min_value"] == pytest.approx(best)
    fresh = LanguageModel(Bigram(), optimizer=torch.optim.AdamW)
    fresh.load_state_dict(state)
    assert float(fresh.val_loss_best.compute()) == pytest.approx(best)


def test_decay_matrices_only_puts_biases_and_norms_in_a_group_without_weight_decay(tmp_path):
    model = nn.Sequential(nn.Embedding(V, 4), nn.LayerNorm(4), nn.Linear(4, V))
    decay, no_decay = param_groups(model.parameters(), decay_matrices_only=True)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(model[1].weight), id(model[1].bias), id(model[2].bias)
    }  # fmt: skip
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay  # the optimizer's
    module, trainer = fit_stand_in(tmp_path, max_steps=1, decay_matrices_only=True)
    groups = trainer.optimizers[0].param_groups
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]  # AdamW's default, then none
    assert len(param_groups(model.parameters(), decay_matrices_only=False)) == 1


# --------------------------------------------------------------------------- the schedule


def nanogpt_get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """nanoGPT's train.py get_lr, as a reference."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * decay_ratio)) * (learning_rate - min_lr)


def lrs(scheduler, steps: int) -> list[float]:
    optimizer = scheduler.optimizer
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_steps_and_min_ratio_follow_nanogpts_get_lr_step_by_step():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = warmup_cosine(optimizer, total_steps=2000, warmup_steps=100, min_ratio=0.1)
    expected = [nanogpt_get_lr(it, 1e-3, 100, 2000, 1e-4) for it in range(2010)]
    assert lrs(scheduler, 2010) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_warmup_fraction_reaches_the_peak_on_its_last_step_then_decays_to_zero():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    values = lrs(warmup_cosine(optimizer, total_steps=100, warmup_fraction=0.1), 101)
    assert values[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert values[10] == 1.0 and values[55] == pytest.approx(0.5) and values[100] == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"warmup_fraction": 0.1, "warmup_steps": 5}, "warmup_fraction and optim.scheduler.warmup_steps exclude"),
        ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0, got -1"),
        ({"warmup_steps": 2.5}, "warmup_steps must be an integer >= 0, got 2.5"),
        ({"warmup_fraction": 1.0}, r"warmup_fraction must be in \[0, 1\), got 1.0"),
        ({"min_ratio": 1.5}, r"min_ratio must be in \[0, 1\], got 1.5"),
    ],
)  # fmt: skip
def test_bad_schedule_settings_are_refused_naming_the_key(kwargs, message):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=message):
        warmup_cosine(optimizer, total_steps=10, **kwargs)


# --------------------------------------------------------------------------- task and objective


def test_language_modelling_ranks_by_test_loss_lower_is_better():
    task = language_modelling()
    assert task.primary.name == "loss" and task.primary.direction == MIN
    assert {m.name: m.direction for m in task.test_metrics} == {
        "loss": MIN, "bpt": MIN, "bpb": MIN, "bpc": MIN, "ppl": MIN, "acc": MAX
    }  # fmt: skip
    assert task.direction_of("val/loss_best") == MIN
    assert task.direction_of("heldout/loss") == MIN
    assert task.direction_of("test/loss_best") is None  # best is over validations only


# MQAR's tokens on a 1-D grid, read as a language-modelling shape (num_classes = vocab_size).
LM_SHAPE = ["dataset=mqar", "+dataset.shape.task=lm", "dataset.shape.num_classes=25"]


def test_task_of_follows_dataset_shape_task():
    assert task_of(compose_cfg(LM_SHAPE)) == language_modelling()
    assert task_of(compose_cfg(["dataset=mqar"])).name == "classification"


def test_the_default_objective_is_the_tasks_own_and_a_wrong_one_is_refused():
    lm = compose_cfg(LM_SHAPE)
    assert (lm.objective, lm.objective_mode) == ("val/loss_best", "min")
    classification = compose_cfg([])
    assert (classification.objective, classification.objective_mode) == ("val/acc_best", "max")
    with pytest.raises(ValueError, match="objective must be a metric the lm task") as e:
        validate(compose_cfg([*LM_SHAPE, "objective=val/f1", "objective_mode=max"]))
    assert str(e.value).endswith("got 'val/f1'; e.g. objective=val/loss_best objective_mode=min")
    with pytest.raises(ValueError, match="set objective_mode=min"):
        validate(compose_cfg([*LM_SHAPE, "objective=val/loss_best", "objective_mode=max"]))


def test_training_by_steps_needs_max_steps():
    with pytest.raises(ValueError, match="trainer.max_epochs=-1 trains until trainer.max_steps"):
        validate(compose_cfg(["trainer.max_epochs=-1"]))
    with pytest.raises(ValueError, match="trainer.max_steps must be a positive integer or -1 \\(no limit\\), got 0"):
        validate(compose_cfg(["+trainer.max_steps=0"]))


# --------------------------------------------------------------------------- experiments


def test_lm_ablation_sweeps_every_variant_that_can_be_causal():
    params = OmegaConf.load(CONFIG_DIR / "experiment" / "lm_ablation.yaml").hydra.sweeper.params
    assert sorted(params.attention.split(",")) == [a for a in available() if a != "pool"], (
        "conf/experiment/lm_ablation.yaml sweeps every variant that can be causal: add a new one "
        "to its attention list (docs/extending.md)"
    )
    assert params.lm_backbone.split(",") == ["transformer", "cnn"] and params.seed == "0,1,2"
    presets = sorted(p.stem for p in (CONFIG_DIR / "lm_backbone").glob("*.yaml"))
    backbones = {p.stem for p in (CONFIG_DIR / "backbone").glob("*.yaml")}
    assert presets == sorted(backbones - set(IMAGE_BACKBONES))  # resnet, vit: images only


# --------------------------------------------------------------------------- after the merge
# These compose dataset=shakespeare_char / text (the LM data part) and build LM backbones with
# causal attention (the LM models and causal attention parts).


def test_shakespeare_char_cpu_is_nanogpts_cpu_setting():
    cfg = compose_cfg(["experiment=shakespeare_char_cpu"])
    assert (cfg.dataset.context_len, cfg.dataset.batch_size) == (64, 12)
    assert (cfg.backbone.depth, cfg.backbone.dim, cfg.backbone.mlp_ratio) == (4, 128, 4.0)
    assert cfg.attention.num_heads == 4 and cfg.backbone.dropout == 0.0
    assert cfg.backbone.tie_weights is True
    opt, sched = cfg.optim.optimizer, cfg.optim.scheduler
    assert (opt.lr, list(opt.betas), opt.weight_decay) == (1e-3, [0.9, 0.99], 0.1)
    assert cfg.optim.decay_matrices_only is True
    assert (sched.warmup_steps, opt.lr * sched.min_ratio) == (100, pytest.approx(1e-4))
    assert (cfg.trainer.max_steps, cfg.trainer.max_epochs) == (2000, -1)
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.dataset.steps_per_epoch == 250
    assert (cfg.objective, cfg.objective_mode) == ("val/loss_best", "min")
    assert cfg.dataset.shape.task == "lm"
    cnn = compose_cfg(["experiment=shakespeare_char_cpu", "lm_backbone=cnn"])
    assert cnn.choices.backbone == "cnn" and (cnn.backbone.depth, cnn.backbone.dim) == (4, 128)


def test_shakespeare_char_is_nanogpts_gpu_setting():
    cfg = compose_cfg(["experiment=shakespeare_char"])
    assert (cfg.dataset.context_len, cfg.dataset.batch_size) == (256, 64)
    assert (cfg.backbone.depth, cfg.backbone.dim, cfg.attention.num_heads) == (6, 384, 6)
    assert cfg.backbone.dropout == 0.2 and cfg.trainer.max_steps == 5000
    assert cfg.trainer.accelerator == "gpu" and cfg.optim.optimizer.lr == 1e-3


TINY_LM = [
    "experiment=shakespeare_char_cpu", "trainer=cpu", "logger=csv", "figures=1",
    "backbone.depth=1", "backbone.dim=16", "dataset.context_len=16", "dataset.batch_size=4",
    "dataset.steps_per_epoch=3", "trainer.max_steps=6", "optim.scheduler.warmup_steps=2",
]  # fmt: skip


def text_run(path, data_dir) -> list[str]:
    """A tiny run of the CPU experiment on the text at ``path``, as bytes (256 token ids)."""
    return [
        *TINY_LM, "dataset=text", f"dataset.path={path}", f"paths.data_dir={data_dir}",
        "dataset.source.vocab=bytes", "dataset.shape.vocab_size=256",
    ]  # fmt: skip


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    rng = random.Random(0)  # no repeats: val and test differ, so their losses do
    path.write_text("".join(rng.choice("abcdefgh \n") for _ in range(3000)))
    return path


def test_an_lm_run_records_its_task_metrics_and_the_heldout_loss(tmp_path, text_file, data_dir):
    from attnexp.training.pipeline import train

    results = train(compose_cfg(text_run(text_file, data_dir), tmp_path / "run"))
    assert results["status"] == "completed" and results["task"]["name"] == "lm"
    m = results["metrics"]
    assert set(language_modelling().keys()) - {"val/bpc", "test/bpc"} <= set(m)
    assert m["test/bpt"] == pytest.approx(m["test/loss"] / math.log(2), rel=1e-5)
    # One token per byte: bits per byte are bits per token; bytes are no characters (no bpc).
    assert m["test/bpb"] == pytest.approx(m["test/bpt"], rel=1e-6) and "test/bpc" not in m
    assert m["test/ppl"] == pytest.approx(math.exp(m["test/loss"]), rel=1e-5)
    # The tested checkpoint is the best by val/loss, so its val loss is val/loss_best; the
    # held-out loss is their token-weighted mean, strictly between when they differ.
    val, test = m["val/loss_best"], m["test/loss"]
    assert val != pytest.approx(test, abs=1e-4)
    assert min(val, test) < m["heldout/loss"] < max(val, test)
    # The schedule runs over trainer.max_steps and ends at the floor, nanoGPT's min_lr = lr / 10;
    # weight decay on matrices only.
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    groups = last["optimizer_states"][0]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-4])
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    # The tested model writes its samples (3 by default, each followed by a line of dashes).
    samples = (tmp_path / "run" / "samples.txt").read_text()
    assert samples.count("-" * 40) == 3 and len(samples) > 3 * 41


def test_an_lm_run_with_pool_fails_before_training_naming_causal(tmp_path, text_file, data_dir):
    from attnexp.training.pipeline import train

    overrides = [*text_run(text_file, data_dir), "attention=pool"]
    with pytest.raises(ValueError, match="causal"):
        train(compose_cfg(overrides, tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()
