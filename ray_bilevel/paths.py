"""Where ray_bilevel keeps derived files (parsed datasets, reference statistics)."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "ASSETS_DIR"]

#: Shipped small weights and their metadata.
ASSETS_DIR = Path(__file__).resolve().parent / "assets"


def cache_dir() -> Path:
    """``$RAY_BILEVEL_CACHE`` or ``~/.cache/ray_bilevel``; created on first use."""
    path = Path(os.environ.get("RAY_BILEVEL_CACHE", Path.home() / ".cache" / "ray_bilevel")).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create the cache folder {path}: {exc}; set RAY_BILEVEL_CACHE to a writable "
                      "folder.") from exc
    return path
