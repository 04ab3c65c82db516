"""Command-line helpers shared by the benchmarks and examples.

:func:`parse_key_values` reads the ``--set KEY=VALUE`` task-setting overrides of every command
line: ``--set eval_samples=500 --set family=sigmoid --set block_out_channels=[8,16]``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ray_bilevel.config import ConfigError

__all__ = ["parse_key_values"]


def parse_key_values(pairs: Sequence[str], flag: str = "--set") -> dict[str, Any]:
    """``["a=1", "b=x", "c=[1, 2]"]`` -> ``{"a": 1, "b": "x", "c": [1, 2]}``.

    A value is read as JSON when it parses (numbers, ``true``/``false``, ``null``, lists,
    objects, ``"quoted strings"``) and kept as the raw string otherwise; a later pair overrides
    an earlier one with the same key. The types are checked later, against the task's settings
    (:func:`ray_bilevel.config.resolve`).

    Raises:
        ConfigError: a pair without ``=`` or whose KEY is not an identifier, naming ``flag``.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"{flag} takes KEY=VALUE, got {pair!r}.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
