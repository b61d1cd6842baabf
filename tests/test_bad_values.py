"""Every value is checked before any data is touched: each numeric and string key of the default
config and of the LM, ListOps, Zoology and CIFAR experiments, fed bad values (negative, zero, NaN,
a wrong type, an unknown name), is refused in one line naming the key, within seconds, or is
listed below as legitimately free with the reason."""

from __future__ import annotations

import math
import time
from fnmatch import fnmatchcase
from typing import Any

import pytest
from omegaconf import OmegaConf

from attnexp.bench.overhead import synthetic_text
from attnexp.config.validate import validate
from attnexp.config.values import leaves
from attnexp.util.checks import ConfigError
from tests.conftest import compose_cfg
from tests.test_image_data import write_cifar10

BAD_NUMBERS = (-1, 0, math.nan, "abc")
BAD_STRINGS = (7, "", "no-such-value")

# (key pattern, the bad values it legitimately takes, why). Every other bad value must be refused.
FREE: tuple[tuple[str, tuple[Any, ...], str], ...] = (
    ("choices.*", BAD_STRINGS, "Hydra fills in the groups picked; not set by hand"),
    ("paths.root_dir", BAD_STRINGS, "the project's own dir, found by a resolver"),
    ("run_name", (7, "no-such-value"), "any name"),
    ("logger.wandb.*", ("", "no-such-value"), "W&B names the user picks"),
    ("logger.csv.name", ("no-such-value",), "any sub-directory name"),
    ("logger.csv.version", ("", "no-such-value"), "any sub-directory name; empty: none"),
    ("callbacks.model_checkpoint.filename", ("no-such-value",), "any file name"),
    ("*dir", ("no-such-value",), "a relative directory: created where the run starts"),
    ("*dirpath", ("no-such-value",), "a relative directory: created where the run starts"),
    ("*.url", ("no-such-value",), "checked when a download is needed (the file is here)"),
    ("report_best_over", BAD_STRINGS, "read by the report at the end of a sweep"),
    ("compile_backend", BAD_STRINGS, "checked only with compile=true"),
    ("match_reference", BAD_STRINGS, "read only when match= is set (then refused by name)"),
    ("*seed", (0,), "0 is a seed"),
    ("seed", (0,), "0 is a seed"),
    ("optim.optimizer.weight_decay", (0,), "no weight decay"),
    ("optim.optimizer.momentum", (0,), "plain SGD"),
    ("dataset.path", ("no-such-value",), "the LM experiment downloads its text there"),
    ("optim.scheduler.min_ratio", (0,), "decay to zero"),
    ("optim.scheduler.warmup_*", (0,), "no warm-up"),
    ("*drop", (0,), "no dropout"),
    ("*dropout", (0,), "no dropout"),
    ("*global_tokens", (0,), "none"),
    ("*qk_conv", (0,), "no convolution"),
    ("*pad_index", (0,), "index 0 pads"),
    ("augment.crop_padding", (0,), "no padding"),
    ("dataset.num_workers", (0,), "load in the main process"),
    ("figures", (0,), "no attention figures"),
    ("trainer.max_epochs", (-1,), "train until trainer.max_steps (set in the LM experiments)"),
    ("trainer.max_steps", (-1,), "no step limit"),
    ("trainer.devices", (-1,), "every device"),
    ("trainer.num_sanity_val_steps", (0, -1), "none; all"),
    ("trainer.gradient_clip_val", (0,), "no clipping"),
    ("callbacks.model_checkpoint.save_top_k", (0, -1), "keep none; keep all"),
    ("callbacks.stop_at.threshold", (-1, 0), "any threshold of the metric"),
    ("backbone.mlp_ratio", (0,), "no MLP"),
)

EXPERIMENTS = {
    "default": [],
    "lm": ["experiment=shakespeare_char", "trainer=cpu"],
    "listops": ["experiment=listops", "trainer=cpu", "dataset.num_train=64", "dataset.num_val=16",
                "dataset.num_test=16", "dataset.min_length=20", "dataset.max_length=40"],  # fmt: skip
    "zoology": ["experiment=zoology_mqar", "trainer=cpu"],
    "cifar": ["experiment=cifar10_resnet20", "trainer=cpu"],
}


def free(key: str, value: Any) -> bool:
    return any(
        fnmatchcase(key, pattern) and any(_same(value, v) for v in values)
        for pattern, values, _ in FREE
    )


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and (a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)))  # fmt: skip


def bad_values(value: Any) -> tuple[Any, ...]:
    if isinstance(value, str):
        return BAD_STRINGS
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return BAD_NUMBERS
    return ()


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_every_bad_value_is_refused_by_name_before_the_data(experiment, data_dir, tmp_path):
    overrides = [*EXPERIMENTS[experiment], f"paths.data_dir={data_dir}"]
    if experiment == "cifar":
        write_cifar10(tmp_path)
        overrides += [f"dataset.source.path={tmp_path}", "dataset.batch_size=8"]
    if experiment == "lm":  # a text made up here, read as bytes: nothing to download
        text = synthetic_text(tmp_path / "corpus.txt")
        overrides += [f"dataset.path={text}", "dataset.source.vocab=bytes", "dataset.shape.vocab_size=256"]  # fmt: skip
    base = OmegaConf.to_container(compose_cfg(overrides, tmp_path / "run"))
    validate(OmegaConf.create(base))  # the config as it is passes
    missed, slow = [], []
    for key, value in leaves(OmegaConf.create(base)):
        for bad in bad_values(value):
            if free(key, bad):
                continue
            cfg = OmegaConf.create(base)
            OmegaConf.update(cfg, key, bad, merge=False)
            start = time.perf_counter()
            try:
                validate(cfg)
                missed.append(f"{key}={bad!r}: accepted")
            except ConfigError as e:
                message = str(e)
                if key not in message and key.rsplit(".", 1)[-1] not in message:
                    missed.append(f"{key}={bad!r}: refused without its name: {message}")
                elif "\n" in message:
                    missed.append(f"{key}={bad!r}: more than one line: {message}")
            except Exception as e:  # noqa: BLE001 - what the walk is looking for
                missed.append(f"{key}={bad!r}: {type(e).__name__}: {e}")
            if time.perf_counter() - start > 5:
                slow.append(f"{key}={bad!r}: {time.perf_counter() - start:.1f} s")
    assert not missed, "\n".join(missed)
    assert not slow, "\n".join(slow)
