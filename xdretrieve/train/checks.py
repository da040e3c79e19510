"""Ranges of the training hyper-parameters, checked when a config is made: a bad value stops
at once, named, not minutes later in a traceback from deep inside torch (``epochs=0`` left
no best epoch to load; ``dim=0`` trained a space of no dimension and said nothing)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from xdretrieve.errors import ConfigError

Rule = tuple[Callable[[Any], bool], str]  # (whether a value is allowed, what is allowed)


def at_least(low: float) -> Rule:
    return (lambda v: v >= low), f">= {low}"


def above(low: float) -> Rule:
    return (lambda v: v > low), f"> {low}"


def fraction() -> Rule:
    return (lambda v: 0 <= v < 1), "in [0, 1)"


def rank_range() -> Rule:
    return (lambda v: 0 <= v[0] < v[1]), "(low, high) with 0 <= low < high"


def one_of(*allowed: str) -> Rule:
    return (lambda v: v in allowed), f"one of {', '.join(allowed)}"


def optional(rule: Rule) -> Rule:
    ok, allowed = rule
    return (lambda v: v is None or ok(v)), f"None or {allowed}"


def check_fields(config: Any, **rules: Rule) -> None:
    """Raise :class:`ConfigError` naming every field of the dataclass ``config`` whose value
    breaks its rule (a value of the wrong type breaks it too)."""
    names = {f.name for f in fields(config)}
    bad = []
    for name, (ok, allowed) in rules.items():
        assert name in names, name  # a rule for a field that does not exist is our bug
        value = getattr(config, name)
        try:
            good = bool(ok(value))
        except TypeError:
            good = False
        if not good:
            bad.append(f"{name}={value!r} (allowed: {allowed})")
    if bad:
        raise ConfigError(f"{type(config).__name__}: {'; '.join(bad)}")
