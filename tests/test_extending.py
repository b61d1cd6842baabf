"""docs/extending.md is true to the code: its example variant, written exactly as the page gives it
(``toy_root`` in conftest), trains in a classification run and a language-model run; a class that
breaks the contract is refused when it is defined or built, citing the page."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from attnexp.attention import factory
from attnexp.attention.base import AttentionModule, ContractError, Kind, WeightKind
from attnexp.bench.overhead import synthetic_text
from attnexp.config.attention import attention_config, searchpath_override
from attnexp.runs.record import read_results
from tests.conftest import SUBPROCESS_ENV, TOY, tiny

ROOT = Path(__file__).resolve().parents[1]
PAGE = "'The attention contract' in docs/extending.md"
LM = ["experiment=shakespeare_char_cpu", "lm_backbone=transformer", "backbone.depth=1",
      "backbone.dim=16", "dataset.context_len=16", "dataset.batch_size=8",
      "dataset.steps_per_epoch=2", "trainer.max_steps=2", "+trainer.limit_val_batches=1",
      "+trainer.limit_test_batches=1", "logger=csv"]  # fmt: skip


def train_with_the_example(toy_root: Path, run_dir: Path, overrides: list[str]) -> dict:
    """``train.py`` as the page says for a variant outside the checkout: the module on
    PYTHONPATH, the config root on hydra.searchpath."""
    env = {**SUBPROCESS_ENV, "PYTHONPATH": os.pathsep.join([str(toy_root), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "train.py", f"attention={TOY}", *overrides,
         *searchpath_override([toy_root]), f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return read_results(run_dir)


def test_the_pages_example_trains_a_classifier_and_a_language_model(toy_root, data_dir, tmp_path):
    classifier = [o for o in tiny(TOY, "transformer", "digits", data_dir) if o != f"attention={TOY}"]
    done = train_with_the_example(toy_root, tmp_path / "cls", [*classifier, "debug=limit"])
    assert done["status"] == "completed" and done["choices"]["attention"] == TOY
    assert 0 <= done["metrics"]["test/acc"] <= 1

    text = synthetic_text(tmp_path / "corpus.txt")  # read as bytes: runs anywhere
    lm = train_with_the_example(toy_root, tmp_path / "lm", [
        *LM, f"dataset.path={text}", "dataset.source.vocab=bytes", "dataset.shape.vocab_size=256",
        f"paths.data_dir={data_dir}"])  # fmt: skip
    assert lm["status"] == "completed" and lm["task"]["name"] == "lm"
    assert lm["metrics"]["test/loss"] > 0


def test_the_example_is_causal_when_a_language_model_builds_it(toy_root):
    import torch

    module = factory(attention_config(TOY, [toy_root]))(dim=8, grid_ndim=1, causal=True)
    x = torch.randn(2, 6, 8)
    later = x.clone()
    later[:, 4:] = torch.randn(2, 2, 8)
    assert torch.allclose(module(x)[:, :4], module(later)[:, :4])
    assert not torch.allclose(module(x)[:, 4:], module(later)[:, 4:])


def test_a_constructor_without_causal_is_refused_when_the_class_is_defined():
    with pytest.raises(ContractError, match=rf"must take causal .*{PAGE}"):

        class NoCausal(AttentionModule):  # the page's step 1 before it named causal
            kind = Kind.MIXER
            weight_kinds = {}

            def __init__(self, dim, grid_ndim=1):
                super().__init__(dim, grid_ndim)


def test_a_class_without_weight_kinds_or_kind_is_refused_when_built():
    class NoWeightKinds(AttentionModule):
        kind = Kind.MIXER

        def __init__(self, dim, grid_ndim=1, causal=False):
            super().__init__(dim, grid_ndim, causal)
            self.proj = nn.Linear(dim, dim)

    class NoKind(AttentionModule):
        weight_kinds = {"attn": WeightKind.ATTENTION_MAP}

        def __init__(self, dim, grid_ndim=1, causal=False):
            super().__init__(dim, grid_ndim, causal)

    with pytest.raises(ContractError, match=rf"NoWeightKinds must set the class attribute weight_kinds.*{PAGE}"):  # fmt: skip
        NoWeightKinds(8)
    with pytest.raises(ContractError, match=rf"NoKind must set the class attribute kind.*{PAGE}"):
        NoKind(8)
