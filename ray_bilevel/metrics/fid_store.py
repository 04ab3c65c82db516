"""The store of real-image FID features and the keys of the statistics cache (docs/algorithms.md §4).

Features of the shipped data's held-out splits ship in ``assets/fid_features`` (float16 safetensors, one file per
extractor × image set) under a key of the extractor (name, dimension, preprocessing, weights' fingerprint) and the
images' exact bytes (:func:`features_key`), so a first run does not compute them and every machine scores against
the same statistics; :class:`~ray_bilevel.metrics.fid.FIDEvaluator` looks them up before its disk cache, whose file
names and keys use the same parts (:func:`images_fingerprint`, :func:`shrinkage_spec`, :func:`safe_name`). Rebuilt by
``python tools/build_fid_features.py``.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from typing import Any

import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.metrics.features import weights_fingerprint
from ray_bilevel.paths import ASSETS_DIR

__all__ = ["STATS_VERSION", "SHIPPED_FEATURES_DIR", "images_fingerprint", "shrinkage_spec", "features_key",
           "shipped_features_path", "save_shipped_features", "load_shipped_features", "safe_name"]

#: Format version of the cached statistics; part of every key. 2: keyed by weights + image bytes.
STATS_VERSION = 2

#: Shipped real-image features (float16 safetensors, one file per extractor × image set), looked up before the
#: disk cache: every machine then scores against the same statistics (docs/algorithms.md §4).
SHIPPED_FEATURES_DIR = ASSETS_DIR / "fid_features"


def images_fingerprint(images: torch.Tensor) -> str:
    """SHA-256 (hex) of a tensor's dtype, shape and raw bytes: the exact image set.

    Cheap: 1,000 float32 images take about 2 ms at 16×16 and 5 ms at 28×28 on a shared 2-core CPU.
    """
    t = images.detach()
    h = hashlib.sha256(f"images|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        if t.device.type != "cpu":
            t = t.cpu()
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]  # ndarray is a Buffer
    return h.hexdigest()


def shrinkage_spec(shrinkage: float | str) -> str:
    """The shrinkage as the statistics cache keys it (``"ledoit_wolf"`` or the float's repr)."""
    if shrinkage == "ledoit_wolf":
        return "ledoit_wolf"
    if isinstance(shrinkage, (int, float)) and not isinstance(shrinkage, bool) and 0.0 <= shrinkage <= 1.0:
        return repr(float(shrinkage))  # 0 and 0.0 share a file
    raise ConfigError(f"shrinkage must be a number in [0, 1] or 'ledoit_wolf', got {shrinkage!r}.")


def features_key(extractor, real_images: torch.Tensor) -> dict[str, Any]:
    """What identifies the features of ``real_images`` under ``extractor``: its name, dimension, preprocessing,
    weights' fingerprint and the images' exact bytes (the statistics cache adds the shrinkage)."""
    return {
        "version": STATS_VERSION,
        "extractor": str(extractor.name),
        "dim": int(extractor.dim),
        "preprocessing": str(getattr(extractor, "preprocessing", "")),
        "weights": weights_fingerprint(extractor),
        "images": images_fingerprint(real_images),
    }


def shipped_features_path(key: dict[str, Any]) -> Any:
    """Where the shipped features of :func:`features_key` ``key`` live (the file need not exist)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return SHIPPED_FEATURES_DIR / f"{safe_name(str(key['extractor']))}-{digest}.safetensors"


def save_shipped_features(key: dict[str, Any], features: torch.Tensor, metadata: dict[str, str] | None = None) -> Any:
    """Write ``features`` (N, d) as float16 under :func:`shipped_features_path` with the key recorded; returns the path.

    Raises:
        ConfigError: a feature does not fit float16 (|x| > 65504 or not finite): ship them another way.
    """
    from safetensors.torch import save_file

    half = features.detach().to(torch.float16).contiguous().cpu()
    if not torch.isfinite(half).all():
        raise ConfigError(f"features of {key['extractor']} overflow float16 (max |x| = "
                          f"{float(features.abs().max()):.4g}).")
    path = shipped_features_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": half}, str(path), metadata={**(metadata or {}), "key": json.dumps(key, sort_keys=True)})
    return path


def load_shipped_features(key: dict[str, Any]) -> torch.Tensor | None:
    """The shipped float16 features recorded under exactly ``key``, as float64; ``None`` when none ship."""
    path = shipped_features_path(key)
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            recorded = (f.metadata() or {}).get("key")
            features = f.get_tensor("features")
    except Exception as exc:  # truncated/foreign file: fall back to the cache or a fresh computation
        warnings.warn(f"ignoring unreadable shipped FID features {path} ({exc!r}).", stacklevel=3)
        return None
    if recorded != json.dumps(key, sort_keys=True) or features.dim() != 2 or features.shape[1] != int(key["dim"]):
        warnings.warn(f"shipped FID features {path} record another extractor/image set; ignoring them.", stacklevel=3)
        return None
    return features.to(torch.float64)


def safe_name(name: str) -> str:
    """``name`` with every character but letters, digits and ``-_.`` replaced by ``_`` (a file name part)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
