"""Small helpers every part of the benchmark uses: finite numbers, plain scalars and the progress log."""
from __future__ import annotations

import math
from typing import Any

__all__ = ["finite", "plain", "log"]


def finite(value: Any, bool_ok: bool = True) -> float | None:
    """``float(value)`` if it is a finite number, else ``None`` (``bool_ok=False``: a bool is no number either)."""
    if not bool_ok and isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def plain(value: Any) -> Any:
    """A numpy / torch scalar as the Python number it holds; anything else as it is."""
    return value.item() if hasattr(value, "item") else value


def log(msg: str) -> None:
    """A progress line of the comparison (``[compare] ...``), flushed at once."""
    print(f"[compare] {msg}", flush=True)
