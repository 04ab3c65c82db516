"""Presets as data: resolve ``(preset name, overrides)`` into a task's config dataclass.

Every task declares a dataclass of settings and a mapping ``{"smoke": {...}, "quick": {...},
"paper": {...}}`` of field overrides. :func:`resolve` builds the dataclass, applies the preset,
then the user's overrides, checks every value against its field's annotation and rejects
anything it does not know with a one-line error that names the fix.

Annotations checked: ``int`` (integral floats become ints), ``float`` (ints become floats),
``bool``, ``str``, ``X | None``, ``tuple`` / ``tuple[X, ...]`` / ``list[X]`` (a list or tuple,
converted), ``dict`` / ``dict[K, V]`` (any mapping), ``Literal["a", "b"]``, unions of these,
``Any`` (anything) and other classes (``isinstance``). Numpy scalars (Tune samples them) become
Python values first.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

__all__ = ["resolve", "ConfigError", "RESERVED_KEYS"]

T = TypeVar("T")

#: Keys every task config may carry that are not fields of the task's settings dataclass.
RESERVED_KEYS = frozenset({"task", "preset"})

_UNIONS = (Union, types.UnionType)
#: (singular, plural) descriptions of the plain types, as the error messages word them.
_NAMES: dict[Any, tuple[str, str]] = {
    int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "true/false values"),
    str: ("a string", "strings"), type(None): ("None", "None"), Any: ("anything", "anything"),
}
_PLAIN = {"int": int, "float": float, "bool": bool, "str": str}


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the value and the fix."""


class _Mismatch(Exception):
    """``value`` does not fit the annotation (turned into a ConfigError naming the key)."""


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
        ConfigError: unknown preset, unknown key, or a value that does not fit its field's annotation.
    """
    preset = config.get("preset", default_preset)
    if preset not in presets:
        raise ConfigError(
            f"unknown preset {preset!r}; choose one of {sorted(presets)}." + _suggest(str(preset), list(presets))
        )
    hints = _hints(cls)  # type: ignore[arg-type]  # mypy does not see that type[T] is Hashable
    values: dict[str, Any] = dict(presets[preset])
    for key, value in config.items():
        if key in RESERVED_KEYS:
            continue
        if key not in hints:
            raise ConfigError(
                f"unknown config key {key!r} for {cls.__name__}; valid keys: {sorted(hints)}."
                + _suggest(key, list(hints))
            )
        values[key] = value
    return cls(**{key: _check(key, value, hints[key]) for key, value in values.items()})


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Each field's annotation, evaluated (the task modules use ``from __future__ import annotations``)."""
    fields = dataclasses.fields(cls)
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError, SyntaxError):  # e.g. a name imported under TYPE_CHECKING: check the plain types only
        hints = {f.name: _PLAIN.get(f.type, Any) if isinstance(f.type, str) else f.type for f in fields}
    return {f.name: hints.get(f.name, Any) for f in fields}


def _check(key: str, value: Any, hint: Any) -> Any:
    """``value`` converted to fit ``hint``, or a one-line ConfigError naming the key, the type and the value."""
    value = _plain(value)
    try:
        return _convert(value, hint)
    except _Mismatch:
        choices = [c for c in _literals(hint) if isinstance(c, str)]
        hint_text = _suggest(value, choices) if isinstance(value, str) and choices else ""
        raise ConfigError(f"config key {key!r} must be {_describe(hint)}, got {value!r}.{hint_text}") from None


def _plain(value: Any) -> Any:
    """A numpy (or torch) scalar as the Python value it holds."""
    return value.item() if hasattr(value, "item") and not hasattr(value, "__len__") else value


def _convert(value: Any, hint: Any) -> Any:
    """``value`` fitted to ``hint`` (ints to floats, lists to tuples, ...), or :class:`_Mismatch`."""
    if hint is Any:
        return value
    value = _plain(value)
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin in _UNIONS:
        for member in args:
            try:
                return _convert(value, member)
            except _Mismatch:
                pass
    elif origin is Literal:
        if any(type(value) is type(choice) and value == choice for choice in args):
            return value
    elif origin in (None, type(None)):
        if value is None:
            return None
    elif origin is bool:
        if isinstance(value, bool):
            return value
    elif origin is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif origin is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif origin is str:
        if isinstance(value, (str, os.PathLike)):  # a pathlib.Path for a path setting
            return str(os.fspath(value))
    elif origin in (tuple, list):
        if not isinstance(value, (list, tuple)) and getattr(value, "ndim", 0) >= 1 and hasattr(value, "tolist"):
            value = value.tolist()  # a numpy array
        if isinstance(value, (list, tuple)):
            return origin(_items(value, origin, args))
    elif isinstance(origin, type) and issubclass(origin, Mapping):
        if isinstance(value, Mapping):
            return {_convert(k, args[0]): _convert(v, args[1]) for k, v in value.items()} if len(args) == 2 else value
    elif isinstance(origin, type):
        if isinstance(value, origin):
            return value
    else:
        return value  # an annotation this module does not check (a TypeVar, a Callable, ...)
    raise _Mismatch


def _items(value: list | tuple, origin: type, args: tuple) -> list[Any]:
    """The items of a list/tuple, each fitted to its annotation (``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``)."""
    if not args or (origin is list and len(args) != 1):
        return list(value)
    if origin is list or (len(args) == 2 and args[1] is Ellipsis):
        return [_convert(item, args[0]) for item in value]
    if len(value) != len(args):
        raise _Mismatch
    return [_convert(item, member) for item, member in zip(value, args)]


def _literals(hint: Any) -> list[Any]:
    """The ``Literal`` choices anywhere in ``hint`` (for a did-you-mean hint)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return list(args)
    return [c for member in args for c in _literals(member)] if origin in _UNIONS else []


def _describe(hint: Any, plural: bool = False) -> str:
    """``hint`` in words: ``float | None`` -> ``"a number or None"``."""
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin in _UNIONS:
        return " or ".join(_describe(member, plural) for member in args)
    if origin in _NAMES:
        return _NAMES[origin][plural]
    if plural:
        return f"items that are {_describe(hint)}"
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in (tuple, list):
        kind = "a list or tuple" if origin is tuple else "a list"
        if not args:
            return kind
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            return f"{kind} of {_describe(args[0], plural=True)}"
        return f"{kind} of {len(args)} items ({', '.join(_describe(a) for a in args)})"
    if isinstance(origin, type) and issubclass(origin, Mapping):
        if len(args) == 2:
            return f"a mapping of {_describe(args[0], plural=True)} to {_describe(args[1], plural=True)}"
        return "a mapping"
    return f"a {getattr(origin, '__name__', origin)}"
