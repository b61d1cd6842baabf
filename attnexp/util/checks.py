"""Checks of config values shared by every part (attention, data, optimisation), each refusing a bad
value with a ValueError that names the key; no torch, so ``validate`` can use them cheaply."""

from __future__ import annotations


class ConfigError(ValueError):
    """A value of the config refused before the run starts: its message is one line that names the
    key and what is allowed, so the command line prints it without a traceback."""


def is_int_at_least(value: object, minimum: int) -> bool:
    """Whether ``value`` is an int (not a bool) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_positive(name: str, value: int, why: str = "") -> None:
    """Refuse a size that is not a positive integer, naming the key; ``why`` follows the bound in
    the message (e.g. for which inputs the size is needed)."""
    if not is_int_at_least(value, 1):
        raise ValueError(f"{name} must be a positive integer{why}, got {value!r}")


def check_int(name: str, value: int, minimum: int, why: str = "") -> None:
    """Refuse a count that is not an integer of at least ``minimum``, naming the key; ``why``
    follows the bound in the message (e.g. what 0 means)."""
    if not is_int_at_least(value, minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}{why}, got {value!r}")


def check_probability(name: str, value: float) -> None:
    """Refuse a dropout rate outside [0, 1), naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")


def check_ratio(name: str, value: float) -> None:
    """Refuse a width ratio outside (0, 1], naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a ratio in (0, 1], got {value!r}")
