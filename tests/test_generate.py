"""Sampling from a causal language model: ``attnexp.training.generate`` and ``sample.py``.

The LM backbones live elsewhere; stand-in causal models here make every answer known in advance.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from attnexp.data.shape import DataShape
from attnexp.data.vocab import Vocabulary
from attnexp.runs.layout import SAMPLES_FILE
from attnexp.training.generate import (
    SEPARATOR,
    SampleSettings,
    format_samples,
    generate,
    record_samples,
    sample_run,
)
from tests.conftest import SUBPROCESS_ENV, compose_cfg, tiny

ROOT = Path(__file__).resolve().parents[1]
TEXT = "first citizen:\nbefore we proceed any further, hear me speak.\n"


def lm_shape(context_len: int, vocab_size: int) -> DataShape:
    return DataShape("tokens", [context_len], vocab_size, vocab_size=vocab_size, task="lm")


class CausalConvLM(nn.Module):
    """Embedding, a left-padded convolution (sees positions t-2..t), a per-position head."""

    def __init__(self, shape: DataShape, attention=None, dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        self.shape = shape
        with torch.random.fork_rng():  # its weights are a function of seed; global state untouched
            torch.manual_seed(seed)
            self.embed = nn.Embedding(shape.vocab_size, dim)
            self.conv = nn.Conv1d(dim, dim, kernel_size=3)
            self.head = nn.Linear(dim, shape.vocab_size)
        self.drop = nn.Dropout(0.5)  # on in training mode: generate must switch it off

    def forward(self, x):
        h = self.embed(x).transpose(1, 2)
        h = self.conv(nn.functional.pad(h, (2, 0))).transpose(1, 2)
        return self.head(self.drop(torch.tanh(h)))


class PositionLM(nn.Module):
    """Predicts token t + 1 at position t: what it emits tells which position generate read."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, x):
        positions = torch.arange(x.shape[1]).expand_as(x)
        return nn.functional.one_hot((positions + 1) % self.vocab_size, self.vocab_size).float()


class FirstTokenLM(nn.Module):
    """Predicts the first token of its input at every position (causal: position 0 <= t)."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, x):
        return nn.functional.one_hot(x[:, :1].expand_as(x), self.vocab_size).float()


class FixedLM(nn.Module):
    """The same next-token logits at every position, whatever the input."""

    def __init__(self, logits) -> None:
        super().__init__()
        self.logits = torch.as_tensor(logits, dtype=torch.float)

    def forward(self, x):
        return self.logits.expand(*x.shape, -1)


def greedy(model, ids, steps, context_len):
    return generate(model, ids, steps, context_len, temperature=0)


# ----------------------------------------------------------------------------- generate


@pytest.mark.parametrize("context_len", [3, 5, 40])  # its receptive field is 3: never cropped off
def test_greedy_equals_the_argmax_of_one_full_forward(context_len):
    model = CausalConvLM(lm_shape(context_len, 11))
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = greedy(model, prompt, steps=12, context_len=context_len)
    assert out.shape == (2, 15) and torch.equal(out[:, :3], prompt)
    model.eval()
    with torch.no_grad():
        logits = model(out[:, :-1])  # the whole sequence at once, no crop, no padding
    assert torch.equal(out[:, 3:], logits[:, 2:].argmax(-1))


def test_top_k_one_is_greedy_at_any_temperature():
    model = CausalConvLM(lm_shape(8, 11))
    prompt = torch.tensor([[1, 2]])
    sampled = generate(model, prompt, 10, 8, temperature=5.0, top_k=1)
    assert torch.equal(sampled, greedy(model, prompt, 10, 8))


def test_the_model_reads_the_last_position_of_at_most_context_len_tokens():
    # Prompt of 2, context 6: positions 1..5 are read (tokens 2..6), then always position 5.
    out = greedy(PositionLM(vocab_size=20), torch.tensor([[0, 0]]), steps=8, context_len=6)
    assert out[0, 2:].tolist() == [2, 3, 4, 5, 6, 6, 6, 6]


def test_a_cropped_window_holds_exactly_the_last_context_len_tokens():
    # FirstTokenLM emits its window's first token, which is the token context_len back.
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    out = greedy(FirstTokenLM(vocab_size=10), prompt, steps=6, context_len=3)
    assert out[0].tolist() == [1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5]


def test_seeded_sampling_is_reproducible_and_the_seed_matters():
    model = CausalConvLM(lm_shape(8, 30))
    prompt = torch.zeros(4, 1, dtype=torch.long)

    def draw(seed):
        return generate(model, prompt, 20, 8, temperature=2.0,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


def test_draws_follow_the_softmax_of_logits_over_temperature():
    probs = torch.tensor([0.5, 0.3, 0.2])
    model = FixedLM(probs.log() * 2)  # temperature 2 gives back probs
    out = generate(model, torch.zeros(4000, 1, dtype=torch.long), 1, 4, temperature=2.0,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    freq = torch.bincount(out[:, 1], minlength=3).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03)


def test_top_k_draws_only_the_k_most_likely_tokens():
    model = FixedLM(torch.tensor([0.0, 3.0, 1.0, 2.5, 2.9, 0.5]))
    prompt = torch.zeros(200, 1, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    limited = generate(model, prompt, 5, 4, temperature=3.0, top_k=3, generator=gen)[:, 1:]
    assert set(limited.unique().tolist()) == {1, 3, 4}
    unlimited = generate(model, prompt, 5, 4, temperature=3.0, top_k=None, generator=gen)[:, 1:]
    assert set(unlimited.unique().tolist()) == set(range(6))
    # top_k above the vocabulary size is no limit
    assert generate(model, prompt, 1, 4, top_k=100, generator=gen).shape == (200, 2)


def test_generation_runs_in_eval_mode_and_gives_the_mode_back():
    model = CausalConvLM(lm_shape(8, 11))
    prompt = torch.tensor([[1, 2]])
    model.train()
    a = greedy(model, prompt, 10, 8)  # dropout 0.5 in training mode would make these differ
    assert model.training
    assert torch.equal(a, greedy(model, prompt, 10, 8)) and model.training
    model.eval()
    greedy(model, prompt, 1, 8)
    assert not model.training


def test_no_new_tokens_returns_the_prompt():
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(greedy(CausalConvLM(lm_shape(8, 11)), prompt, 0, 8), prompt)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature must be a number >= 0"),
        ({"temperature": math.nan}, "temperature must be a number >= 0"),
        ({"top_k": 0}, "top_k must be an integer >= 1 or null"),
        ({"top_k": 2.5}, "top_k must be an integer >= 1 or null"),
        ({"context_len": 0}, "context_len must be an integer >= 1"),
        ({"max_new_tokens": -1}, "max_new_tokens must be an integer >= 0"),
    ],
)
def test_bad_arguments_are_refused_naming_the_key(kwargs, message):
    args = {"max_new_tokens": 3, "context_len": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(CausalConvLM(lm_shape(8, 11)), torch.tensor([[1]]), **args)


def test_a_model_without_per_position_logits_is_refused():
    classifier = nn.Sequential(nn.Embedding(11, 4), nn.Flatten(), nn.Linear(32, 11))
    with pytest.raises(ValueError, match="needs a language model"):
        greedy(classifier, torch.tensor([[1, 2]]), 1, 8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": ""}, "prompt must be a non-empty string"),
        ({"num_samples": 0}, "num_samples must be an integer >= 1"),
        ({"temperature": -1}, "temperature"),
        ({"top_k": 0}, "top_k"),
    ],
)
def test_bad_sample_settings_are_refused_naming_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SampleSettings(**kwargs)


# ----------------------------------------------------------------------------- a trained run


class TinyText:
    """A stand-in LM data module: ``load()`` builds the character vocabulary of ``text``."""

    def __init__(self, text: str, shape: DataShape) -> None:
        self.text, self.shape = text, shape

    def load(self) -> None:
        self.vocab = Vocabulary.from_text(self.text)


def write_lm_run(run_dir: Path, context_len: int = 8, seed: int = 0) -> Path:
    """A run dir as train.py leaves it (saved config, best checkpoint in results.json) for a
    stand-in LM; the network's weights sit under ``model.`` as in the LightningModule's."""
    vocab = Vocabulary.from_text(TEXT)
    cfg = OmegaConf.create({
        "seed": seed,
        "paths": {"output_dir": str(run_dir)},
        "choices": {"attention": "none", "backbone": "stand_in", "dataset": "tiny_text",
                    "experiment": None},
        "attention": {"_target_": "attnexp.attention.none.Identity", "_partial_": True},
        "dataset": {
            "_target_": f"{__name__}.TinyText",
            "text": TEXT,
            "shape": {"_target_": "attnexp.data.shape.DataShape", "input_type": "tokens",
                      "grid": [context_len], "num_classes": vocab.size,
                      "vocab_size": vocab.size, "task": "lm"},
        },
        "backbone": {"_target_": f"{__name__}.CausalConvLM", "shape": "${dataset.shape}"},
    })  # fmt: skip
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save({"hydra": {"runtime": {"choices": dict(cfg.choices)}}},
                   run_dir / ".hydra" / "hydra.yaml")  # fmt: skip
    model = CausalConvLM(lm_shape(context_len, vocab.size), seed=1)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    (run_dir / "checkpoints").mkdir()
    torch.save({"state_dict": state, "epoch": 3}, run_dir / "checkpoints" / "best.ckpt")
    (run_dir / "results.json").write_text(json.dumps({"best_checkpoint": "checkpoints/best.ckpt"}))
    return run_dir / "checkpoints" / "best.ckpt"


def run_config(run_dir: Path):
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    OmegaConf.resolve(cfg)
    return cfg


def test_sample_run_loads_the_checkpoint_weights_and_decodes_text(tmp_path):
    ckpt = write_lm_run(tmp_path / "run")
    cfg = run_config(tmp_path / "run")
    settings = SampleSettings(prompt="first", num_samples=2, max_new_tokens=30, temperature=0)
    samples = sample_run(cfg, ckpt, settings)
    assert len(samples) == 2 and samples[0] == samples[1]  # greedy
    # The continuation is the greedy one of the saved weights (seed=1), not of a fresh model.
    vocab = Vocabulary.from_text(TEXT)
    trained = CausalConvLM(lm_shape(8, vocab.size), seed=1)
    ids = torch.as_tensor(vocab.encode("first"))[None]
    assert samples[0] == vocab.decode(greedy(trained, ids, 30, 8)[0].tolist())
    fresh = CausalConvLM(lm_shape(8, vocab.size), seed=0)
    assert samples[0] != vocab.decode(greedy(fresh, ids, 30, 8)[0].tolist())


def test_sample_run_seeds_with_the_run_seed_unless_given_one(tmp_path):
    ckpt = write_lm_run(tmp_path / "run", seed=5)
    cfg = run_config(tmp_path / "run")

    def texts(seed):
        return sample_run(cfg, ckpt, SampleSettings(prompt="f", max_new_tokens=40, seed=seed))

    assert texts(None) == texts(5) != texts(6)


def test_sample_run_refuses_a_prompt_outside_the_vocabulary(tmp_path):
    ckpt = write_lm_run(tmp_path / "run")
    with pytest.raises(ValueError, match="prompt='ROMEO:'.*not in the vocabulary"):
        sample_run(run_config(tmp_path / "run"), ckpt, SampleSettings(prompt="ROMEO:"))


def test_sample_run_refuses_a_classification_run(tmp_path, data_dir):
    cfg = compose_cfg(tiny("mha", "transformer", "mqar", data_dir), tmp_path)
    with pytest.raises(ValueError, match="dataset.shape.task=classification.*language model"):
        sample_run(cfg, tmp_path / "unused.ckpt", SampleSettings())


def test_sample_py_prints_the_samples_and_keeps_them(tmp_path):
    write_lm_run(tmp_path / "run")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), f"ckpt_path={tmp_path / 'run'}",
         "prompt=first citizen:", "num_samples=2", "max_new_tokens=40", "top_k=5", "seed=3",
         f"paths.log_dir={tmp_path / 'logs'}"],
        cwd=ROOT, env={**SUBPROCESS_ENV, "PYTHONPATH": str(Path(__file__).parent)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    chunks = proc.stdout.split(f"\n{SEPARATOR}\n")
    assert chunks[-1] == "" and len(chunks) == 3
    assert all(c.startswith("first citizen:") and len(c) == len("first citizen:") + 40
               for c in chunks[:2])  # fmt: skip
    (saved,) = (tmp_path / "logs" / "sample").rglob(SAMPLES_FILE)
    assert saved.read_text() == proc.stdout
    assert re.search(r"80 new tokens in [\d.]+ s: [\d.]+ tokens/s", proc.stderr), proc.stderr[-2000:]
    assert "decoding by recomputing the last context_len tokens" in proc.stderr  # the stand-in keeps no cache


# ----------------------------------------------------------------------------- end of a run


def test_record_samples_writes_the_run_samples_and_a_wandb_table(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    vocab = Vocabulary.from_text(TEXT)
    model = CausalConvLM(lm_shape(8, vocab.size))
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="attnexp-test")
    try:
        samples = record_samples(model, vocab, tmp_path / SAMPLES_FILE, seed=0, loggers=[logger])
    finally:
        logger.experiment.finish()
    defaults = SampleSettings()
    assert len(samples) == defaults.num_samples
    assert all(s.startswith(defaults.prompt) for s in samples)
    assert all(len(s) == len(defaults.prompt) + defaults.max_new_tokens for s in samples)
    assert (tmp_path / SAMPLES_FILE).read_text() == format_samples(samples)
    assert record_samples(model, vocab, tmp_path / "again" / SAMPLES_FILE, seed=0) == samples  # seeded
    (table_file,) = tmp_path.glob("wandb/offline-run-*/files/media/table/samples_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["prompt", "sample"]
    assert table["data"] == [[defaults.prompt, s] for s in samples]
