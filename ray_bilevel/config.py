"""Presets as data: resolve ``(preset name, overrides)`` into a task's config dataclass.

Every task declares a dataclass of settings and a mapping ``{"smoke": {...}, "quick": {...},
"paper": {...}}`` of field overrides. :func:`resolve` builds the dataclass, applies the preset,
then the user's overrides, and rejects anything it does not know with a one-line error that
names the fix.
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["resolve", "ConfigError", "RESERVED_KEYS"]

T = TypeVar("T")

#: Keys every task config may carry that are not fields of the task's settings dataclass.
RESERVED_KEYS = frozenset({"task", "preset"})


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the value and the fix."""


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def resolve(
    cls: type[T],
    presets: Mapping[str, Mapping[str, Any]],
    config: Mapping[str, Any],
    default_preset: str = "quick",
) -> T:
    """Build ``cls`` from ``presets[config["preset"]]`` updated by the other keys of ``config``.

    Raises:
        ConfigError: unknown preset, unknown key, or a value of the wrong type.
    """
    preset = config.get("preset", default_preset)
    if preset not in presets:
        raise ConfigError(
            f"unknown preset {preset!r}; choose one of {sorted(presets)}." + _suggest(str(preset), list(presets))
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = dict(presets[preset])
    for key, value in config.items():
        if key in RESERVED_KEYS:
            continue
        if key not in fields:
            raise ConfigError(
                f"unknown config key {key!r} for {cls.__name__}; valid keys: {sorted(fields)}."
                + _suggest(key, list(fields))
            )
        values[key] = value
    for key, value in values.items():
        values[key] = _coerce(key, value, fields[key])
    return cls(**values)


def _coerce(key: str, value: Any, field: dataclasses.Field) -> Any:
    """Accept ints for float fields and numpy scalars (Tune samples them); reject the rest."""
    if hasattr(value, "item") and not hasattr(value, "__len__"):
        value = value.item()
    ftype = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    if ftype == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if ftype == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}.")
        return int(value)
    if ftype == "float":
        raise ConfigError(f"config key {key!r} must be a number, got {value!r}.")
    if ftype == "bool" and not isinstance(value, bool):
        raise ConfigError(f"config key {key!r} must be true or false, got {value!r}.")
    return value
