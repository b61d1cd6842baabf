"""What makes two runs the same: the config hash, and the part of a config a checkpoint depends on.

- ``config_hash(cfg)``: the identity recorded in ``results.json``; a sweep re-run skips a job whose
  completed results carry the same hash.
- ``computed_config(cfg)``: what a checkpoint's weights depend on, stamped into every checkpoint
  (``attnexp.runs.checkpoint.ConfigStamp``); a run refuses to continue from a checkpoint of another.

Both are taken of the config with every ``_target_`` written as it was when the hash was first
recorded (``CANONICAL_TARGETS``): a module that moves must not make a finished sweep's jobs look new
(they would retrain in silence). ``current_targets`` does the opposite for a saved config, so an old
run dir still builds. No torch or Lightning.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Keys that say where or how a run is recorded or started, not what it computes: left out of the
# hash (a resumed run computes what the uninterrupted one would have). ``force`` only says whether
# to re-run a completed job, ``figures`` how many test samples to draw after testing.
UNHASHED_KEYS = (
    "paths", "logger", "callbacks", "choices", "run_name", "hydra", "force", "figures", "resume",
    "ckpt_path", "objective", "objective_mode", "report_by", "report_best_over",
    "report_baseline",
)  # fmt: skip
# Keys of the dataset node that say how batches reach the model, not which: both loaders serve the
# same batches in the same order (attnexp/data/datamodule.py).
UNHASHED_DATASET_KEYS = ("loader", "num_workers", "pin_memory")
# Keys that may change between a checkpoint and the run continuing from it: where and how long
# to train, not what is trained.
RESUMABLE_KEYS = (*UNHASHED_KEYS, "trainer")

# Keys added after runs were recorded, with the value that keeps a run as it was: left out of the
# hash and the checkpoint stamp while they hold it, so a finished sweep's jobs stay the same jobs
# (and are skipped, or continued) when a new knob arrives. A new knob goes here with its default.
ADDED_KEYS = {
    ("attention", "num_kv_heads"): None,
    ("attention", "qk_norm"): None,
    ("attention", "softcap"): None,
    ("attention", "sink"): False,
    ("attention", "alibi"): False,
    ("attention", "gate"): None,
    ("attention", "differential"): False,
    ("attention", "kv_latent_dim"): None,
    ("attention", "forget_gate"): False,
    ("dataset", "eval_stride"): None,
}

# Modules that moved: their name now, and the name runs were first recorded with. A config's
# ``_target_`` is hashed under the second, and built under the first.
CANONICAL_TARGETS = {
    "attnexp.tasks.optim.": "attnexp.optim.",
    "attnexp.training.callbacks.": "attnexp.callbacks.",
}


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the resolved config minus the keys that only say where/how it is recorded.

    Paths elsewhere in the config (the trainer's root dir, the data cache) are hashed as
    ``${paths.<key>}``, so a run hashes the same wherever its outputs and checkout live.
    """
    data = OmegaConf.to_container(cfg, resolve=True)
    paths = {f"${{paths.{k}}}": str(v) for k, v in (data.get("paths") or {}).items() if v}
    data = without(data, UNHASHED_KEYS)
    data = _replace_paths(data, sorted(paths.items(), key=lambda kv: -len(kv[1])))
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def computed_config(cfg: DictConfig) -> dict[str, Any]:
    """The part of ``cfg`` that decides what a checkpoint's weights are (not where or how long)."""
    return without(OmegaConf.to_container(cfg, resolve=True), RESUMABLE_KEYS)


def without(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The resolved config ``data`` without the top-level ``keys``, the dataset's loader keys and
    the ``ADDED_KEYS`` that hold their unchanged value, its targets in their canonical form."""
    data = {k: v for k, v in data.items() if k not in keys}
    if isinstance(data.get("dataset"), dict):
        dataset = data["dataset"]
        data["dataset"] = {k: v for k, v in dataset.items() if k not in UNHASHED_DATASET_KEYS}
    for (group, key), unchanged in ADDED_KEYS.items():
        node = data.get(group)
        if isinstance(node, dict) and key in node and node[key] == unchanged:
            data[group] = {k: v for k, v in node.items() if k != key}
    return _rename_targets(data, CANONICAL_TARGETS)


def current_targets(data: Any) -> Any:
    """A saved config (plain data) with every moved ``_target_`` under its current name."""
    return _rename_targets(data, {new: old for old, new in CANONICAL_TARGETS.items()})


def _rename_targets(data: Any, renames: dict[str, str]) -> Any:
    if isinstance(data, dict):
        out = {k: _rename_targets(v, renames) for k, v in data.items()}
        target = out.get("_target_")
        if isinstance(target, str):
            for prefix, replacement in renames.items():
                if target.startswith(prefix):
                    out["_target_"] = replacement + target[len(prefix) :]
        return out
    if isinstance(data, list):
        return [_rename_targets(v, renames) for v in data]
    return data


def _replace_paths(data: Any, paths: list[tuple[str, str]]) -> Any:
    """``data`` with every string that starts with a path value starting with its name instead
    (the longest, most specific path first)."""
    if isinstance(data, dict):
        return {k: _replace_paths(v, paths) for k, v in data.items()}
    if isinstance(data, list):
        return [_replace_paths(v, paths) for v in data]
    if isinstance(data, str):
        for name, value in paths:
            if data == value or data.startswith(value.rstrip("/") + "/"):
                return name + data[len(value) :]
    return data


def config_diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for every leaf where two nested configs differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            out += config_diff(a.get(k, "<absent>"), b.get(k, "<absent>"), key)
        return out
    return [] if a == b else [(prefix, a, b)]
