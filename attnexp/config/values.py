"""What each value of a run's config may be: ``check_values(cfg)`` walks every leaf of the resolved
config and refuses the first bad one in one line naming its dotted key and what is allowed, before
any model is built or any data touched (``attnexp.config.validate`` calls it first).

``RULES`` maps key patterns (``fnmatch`` over dotted keys, first match wins) to what is allowed:
``Number`` (an integer or a number within bounds, plus named special values), ``OneOf``, ``Text``,
``Hex``, ``WritableDir`` and ``Target`` (an importable ``_target_``). ``null`` is always allowed
here: it means "unset" or "derive it", and what must be set is checked where it is used. A key no
rule matches is checked by what reads it: a module's constructor (``attention.score``), the data's
own check (``dataset.path``), the task (``objective``), all before training starts. Names a user
picks freely (``run_name``, W&B's project) are ``Text`` or ``FREE``; ``tests/test_bad_values.py``
feeds every key bad values and lists the keys that are legitimately free.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from attnexp.util.checks import ConfigError
from attnexp.util.files import check_writable_dir


@dataclass(frozen=True)
class Number:
    """An integer (``integer``) or a finite number between ``low`` and ``high`` (inclusive
    unless ``*_open``), or one of ``special`` (value, meaning). A list is checked item by item."""

    integer: bool = False
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    special: tuple[tuple[Any, str], ...] = ()

    def allows(self, value: Any) -> bool:
        if any(value == v and type(value) is type(v) for v, _ in self.special):
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if (self.integer and not isinstance(value, int)) or not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or value < self.high or (not self.high_open and value == self.high)

    def check(self, key: str, value: Any) -> None:
        for v in value if isinstance(value, list) else [value]:
            if not self.allows(v):
                raise ConfigError(f"{key} must be {self.describe()}, got {value!r}")

    def describe(self) -> str:
        what = "an integer" if self.integer else "a number"
        positive = self.low == 0 and self.low_open or self.low == 1 and self.integer and not self.low_open
        if positive and self.high is None:
            what = f"a positive {'integer' if self.integer else 'number'}"
        elif self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            what += f" in {left}{self.low:g}, {self.high:g}{right}"
        elif self.low is not None:
            what += f" {'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            what += f" {'<' if self.high_open else '<='} {self.high:g}"
        return what + "".join(f" or {v!r} ({meaning})" for v, meaning in self.special)


@dataclass(frozen=True)
class OneOf:
    values: tuple[Any, ...]

    def check(self, key: str, value: Any) -> None:
        if not any(value == v and type(value) is type(v) for v in self.values):
            allowed = ", ".join(str(v) for v in self.values)
            raise ConfigError(f"{key} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class Text:
    """Any string (a name the user picks); ``empty``: the empty string too."""

    empty: bool = False

    def check(self, key: str, value: Any) -> None:
        for v in value if isinstance(value, list) else [value]:  # e.g. W&B's tags
            if not isinstance(v, str) or (not v and not self.empty):
                what = "a string" if self.empty else "a non-empty string"
                raise ConfigError(f"{key} must be {what} (or a list of them), got {value!r}")


@dataclass(frozen=True)
class Hex:
    """A checksum: ``length`` hex digits."""

    length: int

    def check(self, key: str, value: Any) -> None:
        ok = isinstance(value, str) and len(value) == self.length
        if not ok or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise ConfigError(f"{key} must be {self.length} hex digits, got {value!r}")


@dataclass(frozen=True)
class WritableDir:
    """A directory this process can create and write in (``attnexp.util.files``)."""

    def check(self, key: str, value: Any) -> None:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} must be a directory path, got {value!r}")
        check_writable_dir(key, Path(value))


@dataclass(frozen=True)
class Target:
    """A ``_target_``: a dotted name whose module can be found. Nothing is imported to check it
    (Lightning's or W&B's classes would take seconds): the name is looked up in a module already
    imported, an attnexp or torch module is found by its file, any other by its package."""

    def check(self, key: str, value: Any) -> None:
        if not isinstance(value, str) or "." not in value:
            raise ConfigError(f"{key} must be a dotted name of a class or function, got {value!r}")
        module, _, name = value.rpartition(".")
        try:
            if module in sys.modules:
                found = hasattr(sys.modules[module], name)
            elif module.split(".")[0] in ("attnexp", "torch"):  # imports the parents only
                found = importlib.util.find_spec(module) is not None
            else:
                found = importlib.util.find_spec(module.split(".")[0]) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ConfigError(f"{key} must name an importable class or function, got {value!r}")


@dataclass(frozen=True)
class Free:
    """Any value: filled in by Hydra (``choices``), not set by hand."""

    def check(self, key: str, value: Any) -> None:
        return None


FREE = Free()
INT_AT_LEAST_0 = Number(integer=True, low=0)
COUNT = Number(integer=True, low=1)
POSITIVE = Number(low=0, low_open=True)
NON_NEGATIVE = Number(low=0)
RATE = Number(low=0, high=1, high_open=True)  # dropout, warm-up fraction: [0, 1)
FRACTION = Number(low=0, low_open=True, high=1, high_open=True)  # a split: (0, 1)
NO_LIMIT = ((-1, "no limit"),)
PRECISIONS = ("64", "64-true", "32", "32-true", "16", "16-mixed", "16-true", "bf16", "bf16-mixed", "bf16-true", 64, 32, 16)  # fmt: skip

# Count-like key endings: a positive integer (or a list of them).
COUNT_SUFFIXES = (
    "size", "sizes", "dim", "width", "depth", "heads", "samples", "classes", "pairs", "queries",
    "len", "stride", "channels", "steps_per_epoch", "length", "args", "num_train", "num_val",
    "num_test",
)  # fmt: skip

RULES: tuple[tuple[str, Any], ...] = (
    ("choices.*", FREE),
    ("*._target_", Target()),
    ("seed", INT_AT_LEAST_0),
    ("*seed", INT_AT_LEAST_0),
    ("optim.optimizer.lr", POSITIVE),
    ("optim.optimizer.weight_decay", NON_NEGATIVE),
    ("optim.optimizer.eps", POSITIVE),
    ("optim.optimizer.momentum", RATE),
    ("optim.optimizer.betas", RATE),
    ("optim.scheduler.warmup_fraction", RATE),
    ("optim.scheduler.warmup_steps", INT_AT_LEAST_0),
    ("optim.scheduler.min_ratio", Number(low=0, high=1)),
    ("optim.scheduler.gamma", Number(low=0, low_open=True, high=1)),
    ("optim.scheduler.milestones", FRACTION),
    ("dataset.path", Text()),
    ("*.path", Text()),
    ("trainer.max_epochs", Number(integer=True, low=1, special=((-1, "train until trainer.max_steps"),))),  # fmt: skip
    ("trainer.max_steps", Number(integer=True, low=1, special=NO_LIMIT)),
    ("trainer.devices", Number(integer=True, low=1, special=((-1, "every device"), ("auto", "every device")))),  # fmt: skip
    ("trainer.num_nodes", COUNT),
    ("trainer.accelerator", OneOf(("auto", "cpu", "gpu", "cuda", "mps", "tpu"))),
    ("trainer.precision", OneOf(PRECISIONS)),
    ("trainer.gradient_clip_val", NON_NEGATIVE),
    ("trainer.num_sanity_val_steps", Number(integer=True, low=0, special=((-1, "all"),))),
    ("trainer.val_check_interval", POSITIVE),
    ("trainer.limit_train_batches", POSITIVE),
    ("trainer.limit_*_batches", NON_NEGATIVE),
    ("trainer.accumulate_grad_batches", COUNT),
    ("trainer.log_every_n_steps", COUNT),
    ("trainer.check_val_every_n_epoch", COUNT),
    ("trainer.default_root_dir", WritableDir()),
    ("paths.root_dir", FREE),  # the project's own dir: found, not chosen
    ("paths.*", WritableDir()),
    ("*.save_dir", WritableDir()),
    ("*.dirpath", WritableDir()),
    ("*.data_dir", WritableDir()),
    ("logger.csv.name", Text()),
    ("logger.csv.version", Text(empty=True)),
    ("logger.wandb.offline", OneOf((True, False))),
    ("logger.wandb.log_model", OneOf((True, False, "all"))),
    *((f"logger.wandb.{k}", Text(empty=True)) for k in ("project", "name", "group", "job_type", "entity", "tags")),  # fmt: skip
    ("callbacks.model_checkpoint.filename", Text()),
    ("callbacks.model_checkpoint.mode", OneOf(("max", "min"))),
    ("callbacks.model_checkpoint.save_top_k", Number(integer=True, low=-1)),
    ("callbacks.step_checkpoint.every_*", POSITIVE),
    ("callbacks.stop_at.threshold", Number()),
    ("objective_mode", OneOf(("max", "min"))),
    ("*drop", RATE),
    ("*dropout", RATE),
    ("*fraction", FRACTION),
    ("dataset.num_workers", INT_AT_LEAST_0),
    ("figures", INT_AT_LEAST_0),
    ("run_name", Text()),
    ("*.sha256", Hex(64)),
    ("*.md5", Hex(32)),
    ("*.url", Text()),
    ("*mlp_ratio", Number(low=0, special=())),  # 0: no MLP
    ("*ratio", POSITIVE),
    ("*pad_index", INT_AT_LEAST_0),
    ("*.global_tokens", INT_AT_LEAST_0),
    ("*.qk_conv", INT_AT_LEAST_0),
    ("augment.crop_padding", INT_AT_LEAST_0),
    ("*.power_a", POSITIVE),
    ("*.max_depth", COUNT),
    *((f"*{suffix}", COUNT) for suffix in COUNT_SUFFIXES),
)


def rule_for(key: str) -> Any:
    """The rule of dotted ``key``; None when no rule matches (what reads the key checks it)."""
    return next((rule for pattern, rule in RULES if fnmatchcase(key, pattern)), None)


# Where a bad value is first looked for: keys others copy come first, so a bad ``seed`` is named
# as ``seed`` and not as ``dataset.shuffle_seed`` (``${seed}``), a bad ``dataset.shape`` value as
# itself and not as ``backbone.shape``'s copy.
SOURCES_FIRST = ("", "dataset", "optim", "trainer")


def check_values(cfg: DictConfig) -> None:
    """Refuse the first leaf of ``cfg`` its rule does not allow, naming its key (``ConfigError``)."""

    def source_rank(item: tuple[str, Any]) -> int:
        group = item[0].split(".")[0] if "." in item[0] else ""
        return SOURCES_FIRST.index(group) if group in SOURCES_FIRST else len(SOURCES_FIRST)

    for key, value in sorted(leaves(cfg), key=source_rank):
        rule = rule_for(key)
        if rule is not None and value is not None:
            rule.check(key, value)


def leaves(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` for every leaf that is not a dict (lists as lists)."""
    for k in cfg.keys():
        if isinstance(cfg, DictConfig) and OmegaConf.is_missing(cfg, k):
            continue  # ``???``: validate names it as the key to set
        v, key = cfg[k], f"{prefix}{k}"
        if isinstance(v, (dict, DictConfig)):
            yield from leaves(v, f"{key}.")
        else:
            yield key, list(v) if isinstance(v, (list, ListConfig)) else v
