"""Rebuild the shipped FID features: ``python tools/build_fid_features.py``.

The noise-schedule task scores its final Inception FID against at most ``final_real`` held-out real images of a
split (docs/algorithms.md §4). Their pool3 features cost about 110 CPU-s per split of 500 images at the quick preset
(2 CPU cores), once
per machine. This script computes them for the shipped data (``mnist5k``) at the given presets and both splits, and
writes them to ``ray_bilevel/assets/fid_features/`` as float16 safetensors, each keyed by the extractor's weights, its
preprocessing and the images' exact bytes (:func:`~ray_bilevel.metrics.fid.features_key`);
:class:`~ray_bilevel.metrics.fid.FIDEvaluator` loads them before its disk cache, so a first run on a new machine
computes none of them, and every machine scores against the same statistics.

Why float16 features and not statistics: one 2048 × 2048 covariance is 16 MB in float32; 500 feature rows in
float16 are 2 MB and give the covariance exactly up to the rounding of the features. The cost of that rounding is
measured here and written to ``fid_features/record.json``: the FID of the validation images against the test
statistics, from float32 and from float16 features.

The domain FID's statistics (64-d digit features) cost under a second and are not shipped.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from ray_bilevel.paths import ASSETS_DIR

__all__ = ["build", "main", "RECORD_PATH"]

#: What was built, when, at which commit, and the measured effect of the float16 rounding.
RECORD_PATH = ASSETS_DIR / "fid_features" / "record.json"


def _real_images(preset: str, split: str) -> tuple[torch.Tensor, str]:
    """The noise-schedule task's Inception reference images of ``split`` at ``preset`` (the task's own code path)."""
    from ray_bilevel.config import resolve
    from ray_bilevel.tasks.noise_schedule.evaluation import UpperMetrics
    from ray_bilevel.tasks.noise_schedule.settings import PRESETS, NoiseScheduleSettings

    cfg = resolve(NoiseScheduleSettings, PRESETS, {"preset": preset})
    real = UpperMetrics(cfg, torch.device("cpu")).real(split)
    ref = real.images[: cfg.final_real]
    return ref, f"{real.name}[:{len(ref)}]"


def build(presets: tuple[str, ...] = ("smoke", "quick"), log: Any = print) -> dict[str, Any]:
    """Compute, write and record the Inception features of both splits at each preset; returns the record."""
    from ray_bilevel.metrics.features import inception_extractor
    from ray_bilevel.metrics.fid import feature_stats, features_key, frechet_distance, save_shipped_features

    ext = inception_extractor()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    record: dict[str, Any] = {"built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "commit": commit, "extractor": ext.name, "files": []}
    for preset in presets:
        feats: dict[str, torch.Tensor] = {}
        for split in ("val", "test"):
            images, label = _real_images(preset, split)
            t0 = time.process_time()
            with torch.no_grad():
                feats[split] = ext(images)
            key = features_key(ext, images)
            path = save_shipped_features(key, feats[split], {"label": label, "preset": preset, "split": split})
            cpu = time.process_time() - t0
            log(f"{preset}/{split}: {len(images)} images, {cpu:.0f} CPU-s -> {path.name} "
                f"({path.stat().st_size / 1e6:.2f} MB)")
            record["files"].append({"file": path.name, "preset": preset, "split": split, "label": label,
                                    "n": len(images), "dim": int(ext.dim), "bytes": path.stat().st_size,
                                    "features_cpu_s": round(cpu, 1)})
        if min(len(f) for f in feats.values()) >= 2:
            exact = frechet_distance(feature_stats(feats["val"]), feature_stats(feats["test"]))
            half = {s: f.to(torch.float16).to(torch.float64) for s, f in feats.items()}
            rounded = frechet_distance(feature_stats(feats["val"]), feature_stats(half["test"]))
            log(f"{preset}: FID(val images, test statistics) = {exact:.6f} from float32 features, "
                f"{rounded:.6f} from shipped float16 ones")
            record.setdefault("float16_effect", {})[preset] = {
                "fid_val_vs_test_float32": exact, "fid_val_vs_test_float16": rounded,
                "abs_diff": abs(rounded - exact), "rel_diff": abs(rounded - exact) / max(abs(exact), 1e-12)}
    RECORD_PATH.parent.mkdir(parents=True, exist_ok=True)
    RECORD_PATH.write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="smoke,quick", help="noise-schedule presets to build (default smoke,quick)")
    a = p.parse_args(argv)
    build(tuple(s.strip() for s in a.presets.split(",") if s.strip()))


if __name__ == "__main__":
    main()
