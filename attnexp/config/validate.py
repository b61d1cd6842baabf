"""``validate(cfg)``: refuse a bad config in seconds, before any data is generated or Lightning
is imported, with one line (``ConfigError``) naming the key and what is allowed. Runs once per run, in the start step (``attnexp.runs.prepare.prepare``), which the
command line and Python callers of ``attnexp.training.pipeline.train`` both go through.

First every leaf against its rule (``attnexp.config.values``: counts, rates, paths, choices), then
what the modules cannot see alone, then builds the model once, so every constructor check of the attention and backbone modules (an
unknown ``score``, an even MUSE kernel, ``num_heads`` not dividing ``dim``, ...) also fires here.
Last it loads the dataset's source (cached or generated in about a second; no Lightning) to check
what needs the data: a batch larger than the training split, an unreadable cached file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from attnexp.config.values import check_values, leaves
from attnexp.tasks.spec import MAX, check_direction, task_of
from attnexp.util.checks import ConfigError

ODD_KEYS = ("kernel_size", "kernel_sizes")
CHECKED_GROUPS = ("attention", "backbone", "dataset")


def validate(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` naming the key and what is allowed for the first bad value found."""
    try:
        _validate(cfg)
    except ConfigError:
        raise
    except ValueError as e:  # a module's or the data's own check: its message names the key
        raise ConfigError(" ".join(str(e).split())) from e


def _validate(cfg: DictConfig) -> None:
    check_values(cfg)  # every leaf by its rule: nothing built or read yet
    _check_files(cfg)  # a bad file is said before the keys it would have answered
    _check_missing(cfg)
    for key, value in leaves(cfg):
        if key.split(".")[0] in CHECKED_GROUPS and key.rsplit(".", 1)[-1] in ODD_KEYS:
            for k in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(k, int) and k % 2 == 0:
                    raise ValueError(
                        f"{key} must be odd (same padding keeps the grid), got {value!r}"
                    )
    if cfg.trainer.get("max_epochs") == -1 and cfg.trainer.get("max_steps") in (None, -1):
        # Training by steps (the LM experiments) ends at max_steps; without it, never.
        raise ValueError(
            "trainer.max_epochs=-1 trains until trainer.max_steps: set trainer.max_steps to a "
            "positive integer (or trainer.max_epochs)"
        )
    _check_compile(cfg)
    _check_shape(cfg)
    _check_objective(cfg)  # after the shape: the task depends on it
    _check_stop_at(cfg)
    _check_checkpoint_monitor(cfg)
    model = _check_model(cfg)
    _check_optim(cfg, model)
    _check_augment(cfg)
    _check_data(cfg)


def _check_files(cfg: DictConfig) -> None:
    """Files a dataset reads whose faults are said before the keys they would have answered: the
    text file of a language model (a directory, a binary, an empty file) before
    ``dataset.shape.vocab_size``, an image folder's classes before ``dataset.shape.num_classes``."""
    dataset = cfg.dataset
    source = dataset.get("source") or {}
    if "path" not in dataset or OmegaConf.is_missing(dataset, "path"):
        return
    path = Path(str(dataset.path))
    if source.get("_target_") in ("attnexp.data.text.load_text", "attnexp.data.bpe.load_bpe_text"):
        from attnexp.data.text import check_text_file

        check_text_file(path, bool(dataset.get("download")), source.get("url"))
    elif source.get("_target_") == "attnexp.data.images.load_image_folder":
        from attnexp.data.images import image_folder_classes

        image_folder_classes(path)


def _check_missing(cfg: DictConfig) -> None:
    """A ``???`` value (e.g. ``dataset.path`` of ``dataset=text``) named as the key to set, not as
    OmegaConf's error from wherever it is first read (often an interpolation of it)."""
    missing = OmegaConf.missing_keys(cfg)
    # The source key, not the keys that interpolate it (``backbone.shape`` is ``${dataset.shape}``).
    own = sorted(k for k in missing if k.startswith("dataset.")) or sorted(missing)
    if own:
        raise ValueError(f"{own[0]} must be set: it has no default (??? in the config)")


def _check_compile(cfg: DictConfig) -> None:
    compile_ = cfg.get("compile", False)
    if not isinstance(compile_, bool):
        raise ValueError(f"compile must be true or false, got {compile_!r}")
    if not compile_:
        return
    import torch._dynamo

    backend = cfg.compile_backend
    allowed = torch._dynamo.list_backends(exclude_tags=())
    if backend not in allowed:
        raise ValueError(f"compile_backend must be one of {', '.join(allowed)}, got {backend!r}")


def _check_shape(cfg: DictConfig) -> None:
    """The data's shape facts alone first, so a bad one is not reported as a bad model."""
    from hydra.utils import instantiate

    if "shape" not in cfg.dataset:  # a dataset yaml (or a run's saved config) of the old layout
        raise ValueError(
            "dataset.shape is missing: a dataset config holds its shape facts (input_type, grid, "
            "in_channels or vocab_size, num_classes) in one shape node, as conf/dataset/*.yaml do"
        )
    try:
        instantiate(cfg.dataset.shape)
    except InstantiationException as e:
        raise ValueError(str(e.__cause__ or e)) from e


def _check_objective(cfg: DictConfig) -> None:
    mode = check_direction("objective_mode", cfg.get("objective_mode"))
    task = task_of(cfg)
    objective = cfg.get("objective")
    direction = task.direction_of(str(objective))
    if direction is None:
        best = next((k for k in task.keys() if k.endswith("_best")), None)
        hint = f"; e.g. objective={best} objective_mode={task.direction_of(best)}" if best else ""
        raise ValueError(
            f"objective must be a metric the {task.name} task logs ({', '.join(task.keys())}), "
            f"got {objective!r}{hint}"
        )
    _check_mode("objective_mode", mode, "optimises", objective, direction)


def _check_mode(key: str, mode: str, verb: str, metric: str, direction: str) -> None:
    """Refuse a ``mode`` against the declared ``direction`` of ``metric``, naming ``key``."""
    if mode != direction:
        raise ValueError(
            f"{key}={mode} {verb} {metric} the wrong way: it is "
            f"{'higher' if direction == MAX else 'lower'}-is-better; set {key}={direction}"
        )


def _check_stop_at(cfg: DictConfig) -> None:
    """``callbacks.stop_at`` watches a validation metric of the task, the right way round: a typo
    would fail only after the first epoch, and a wrong mode would stop at once or never."""
    stop = (cfg.get("callbacks") or {}).get("stop_at")
    if stop is None:
        return
    task = task_of(cfg)
    monitor = str(stop.get("monitor"))
    direction = task.direction_of(monitor)
    if direction is None or not monitor.startswith("val/"):
        allowed = ", ".join(k for k in task.keys() if k.startswith("val/"))
        raise ValueError(
            f"callbacks.stop_at.monitor must be a validation metric the {task.name} task logs "
            f"({allowed}), got {monitor!r}"
        )
    mode = check_direction("callbacks.stop_at.mode", stop.get("mode", MAX))
    _check_mode("callbacks.stop_at.mode", mode, "watches", monitor, direction)
    threshold = stop.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"callbacks.stop_at.threshold must be a number, got {threshold!r}")


def _check_checkpoint_monitor(cfg: DictConfig) -> None:
    """``callbacks.model_checkpoint.monitor`` picks the best checkpoint, which the run tests: a
    metric the task does not log would fail after the first validation."""
    callback = (cfg.get("callbacks") or {}).get("model_checkpoint")
    monitor = callback.get("monitor") if callback else None
    if monitor is None:  # Lightning then keeps the last checkpoint as the best
        return
    task = task_of(cfg)
    if task.direction_of(str(monitor)) is None or not str(monitor).startswith("val/"):
        allowed = ", ".join(k for k in task.keys() if k.startswith("val/"))
        raise ValueError(
            f"callbacks.model_checkpoint.monitor must be a validation metric the {task.name} task "
            f"logs ({allowed}), got {monitor!r}"
        )


def _check_model(cfg: DictConfig) -> Any:
    from attnexp.models import build_model  # the one way a model is built; no Lightning

    try:
        return build_model(cfg)
    except (ValueError, TypeError, InstantiationException) as e:
        cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ else e
        choices = cfg.get("choices") or {}
        where = f"attention={choices.get('attention')}, backbone={choices.get('backbone')}"
        raise ValueError(f"bad model config ({where}): {_unknown_key(cfg, cause) or cause}") from e


def _check_optim(cfg: DictConfig, model: Any) -> None:
    """The optimiser and schedule built on the model as the run will (an unknown key, torch's own
    range checks), over a stand-in number of steps."""
    from hydra.utils import instantiate

    from attnexp.tasks.optim import param_groups

    optim = cfg.get("optim") or {}
    for key in ("optimizer", "scheduler"):
        if optim.get(key) is not None and not optim[key].get("_partial_"):
            raise ValueError(f"optim.{key} needs `_partial_: true`: the run gives it the parameters")
    try:
        optimizer = instantiate(optim.optimizer)(
            params=param_groups(model.parameters(), bool(optim.get("decay_matrices_only")))
        )
        if optim.get("scheduler") is not None:
            instantiate(optim.scheduler)(optimizer=optimizer, total_steps=1000)
    except (ValueError, TypeError, InstantiationException) as e:
        cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ else e
        raise ValueError(f"bad optim config: {cause}") from e


def _unknown_key(cfg: DictConfig, cause: BaseException) -> str | None:
    """A constructor's "unexpected keyword argument 'k'" said as the config key that set it."""
    match = re.search(r"unexpected keyword argument '(\w+)'", str(cause))
    if not isinstance(cause, TypeError) or match is None:
        return None
    key = match.group(1)
    for group in ("backbone", "attention"):
        if key in (cfg.get(group) or {}):
            choice = (cfg.get("choices") or {}).get(group)
            return (
                f"{group}.{key} is not a setting of {group}={choice} (an experiment or override set "
                f"it for another {group}; LM experiments pick the backbone with lm_backbone=<name>, "
                "which sets each backbone's own keys)"
            )
    return None


def _check_augment(cfg: DictConfig) -> None:
    """``augment`` crops, flips and normalises images of a classifier: refused elsewhere."""
    node = cfg.get("augment")
    if node is None:
        return
    from hydra.utils import instantiate

    try:
        augment = instantiate(node)
        shape = instantiate(cfg.dataset.shape)
    except InstantiationException as e:
        raise ValueError(str(e.__cause__ or e)) from e
    augment.check(shape)


def _check_data(cfg: DictConfig) -> None:
    """What needs the data itself, as the data module named by ``dataset._target_`` will see it
    (each check is Lightning-free; a data module not listed here checks itself when it loads)."""
    check = DATA_CHECKS.get(cfg.dataset.get("_target_"))
    if check is not None:
        check(cfg.dataset)


def _check_arrays(dataset: DictConfig) -> None:
    from hydra.utils import instantiate

    from attnexp.data.splits import (  # as the data module will
        DEFAULT_LOADER,
        DEFAULT_NUM_WORKERS,
        arrange_splits,
        check_loader,
        check_trim_padding,
    )

    check_trim_padding(dataset.get("trim_padding", False), instantiate(dataset.shape))
    check_loader(
        dataset.get("loader", DEFAULT_LOADER),
        dataset.get("num_workers", DEFAULT_NUM_WORKERS),
        dataset.get("pin_memory"),
    )
    arrays = instantiate(dataset.source)()
    arrange_splits(arrays, dataset.val_fraction, dataset.split_seed, dataset.batch_size)


def _check_token_stream(dataset: DictConfig) -> None:
    from hydra.utils import instantiate

    from attnexp.data.text import check_eval_stride

    check_eval_stride(dataset.get("eval_stride"), dataset.context_len)
    # Reads (downloads, encodes, caches) the text, so a missing file fails before training.
    data = instantiate(dataset.source)(path=dataset.path, download=dataset.download)
    data.check(
        dataset.shape.vocab_size, dataset.context_len, dataset.batch_size, dataset.steps_per_epoch
    )


DATA_CHECKS = {
    "attnexp.data.datamodule.ArrayDataModule": _check_arrays,
    "attnexp.data.lm.TokenStreamDataModule": _check_token_stream,
}
