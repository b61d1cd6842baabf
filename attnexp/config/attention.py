"""Attention variants as config: ``conf/attention/<name>.yaml`` composed as the command line
composes it (so a yaml's ``defaults:`` list works: ``muse.yaml`` extends ``mha.yaml``) and built.

The one code path from a variant's config to a module is ``attnexp.attention.factory``: backbones
get ``factory(cfg.attention)`` (``attnexp.models.build_model``); the benchmark, the figures and the
tests call ``create`` here, which composes the yaml first. Extra
config roots (each holding ``attention/<name>.yaml``, as Hydra's ``hydra.searchpath`` adds them)
make variants outside this checkout available.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from attnexp.attention.base import AttentionModule, Kind
from attnexp.attention.factory import factory
from attnexp.config.paths import CONFIG_DIR

GROUP = "attention"


def available(search_path: Sequence[str | Path] = ()) -> list[str]:
    """The variant names: every ``attention/*.yaml`` under ``conf/`` and the ``search_path`` roots."""
    roots = [CONFIG_DIR, *map(Path, search_path)]
    return sorted({p.stem for root in roots for p in (root / GROUP).glob("*.yaml")})


def searchpath_override(search_path: Sequence[str | Path]) -> list[str]:
    """The ``hydra.searchpath=[...]`` override that adds ``search_path`` (none if empty)."""
    if not search_path:
        return []
    roots = ",".join(f"'file://{Path(p).resolve()}'" for p in search_path)
    return [f"hydra.searchpath=[{roots}]"]


def attention_config(name: str, search_path: Sequence[str | Path] = ()) -> DictConfig:
    """``cfg.attention`` as ``train.py attention=<name>`` composes it.

    Composed in Hydra's own context, which restores Hydra's global state on exit, so it is safe
    inside a running Hydra app or next to ``attnexp.config.compose.compose_train_config``.
    """
    names = available(search_path)
    if name not in names:
        raise ValueError(f"attention={name!r} is not a variant; available: {', '.join(names)}")
    overrides = [f"+{GROUP}={name}", *searchpath_override(search_path)]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(overrides=overrides)[GROUP]


def variant_kind(name: str, search_path: Sequence[str | Path] = ()) -> Kind:
    """The kind of module variant ``name`` builds, read from its class (nothing is built)."""
    return get_class(attention_config(name, search_path)._target_).kind


def create(
    name: str,
    dim: int,
    grid_ndim: int = 1,
    *,
    search_path: Sequence[str | Path] = (),
    **overrides: Any,
) -> AttentionModule:
    """Variant ``name`` built for width ``dim`` on a grid of rank ``grid_ndim``, with
    ``overrides`` of its config keys (``create("mha", 64, score="cosine")``)."""
    node = attention_config(name, search_path)
    unknown = sorted(set(overrides) - set(node))
    if unknown:
        keys = ", ".join(k for k in node if not k.startswith("_"))
        raise ValueError(f"attention={name} has no key {', '.join(unknown)}; its keys: {keys}")
    return factory(OmegaConf.merge(node, overrides))(dim=dim, grid_ndim=grid_ndim)
