"""Shipped real-image features (ray_bilevel/assets/fid_features, rebuilt by tools/build_fid_features.py;
docs/algorithms.md §4): used before the cache, only under their exact key, and the shipped files are the features
this code computes today (not stale)."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ray_bilevel.metrics import fid_store  # noqa: E402
from ray_bilevel.metrics.fid import (  # noqa: E402
    FIDEvaluator,
    feature_stats,
    features_key,
    load_shipped_features,
    save_shipped_features,
    shipped_features_path,
)


class _Linear(nn.Module):
    name, dim, preprocessing = "tiny_linear", 5, "flatten"

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 5)
        self.seen = 0
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(5, 64, generator=torch.Generator().manual_seed(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen += len(images)
        return self.lin(images.flatten(1))


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture
def shipped(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_BILEVEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fid_store, "SHIPPED_FEATURES_DIR", tmp_path / "shipped")
    return tmp_path / "shipped"


def test_shipped_features_are_used_before_the_cache_and_give_their_statistics(shipped):
    ext, real = _Linear(), _images(30, 0)
    with torch.no_grad():
        feats = ext(real)
    path = save_shipped_features(features_key(ext, real), feats)
    assert path.parent == shipped and path.is_file()
    ext.seen = 0
    ev = FIDEvaluator(ext, real, shrinkage=0.1)
    assert ev.source == "shipped" and not ev.from_cache and ext.seen == 0  # no pass over the real images
    expected = feature_stats(feats.to(torch.float16).to(torch.float64), 0.1)
    assert torch.equal(ev.real.mu, expected.mu) and torch.equal(ev.real.sigma, expected.sigma)
    assert ev.real.shrinkage == pytest.approx(0.1)
    # float16 rounding of these features moves the statistics by less than 1e-3 relative
    exact = feature_stats(feats, 0.1)
    assert torch.allclose(ev.real.sigma, exact.sigma, rtol=1e-3, atol=1e-3 * float(exact.sigma.abs().max()))


def test_other_images_or_weights_do_not_use_the_shipped_file(shipped):
    ext, real = _Linear(), _images(30, 0)
    with torch.no_grad():
        save_shipped_features(features_key(ext, real), ext(real))
    other = real.clone()
    other[0, 0, 0, 0] += 0.5  # one pixel
    assert FIDEvaluator(ext, other).source == "computed"
    retrained = _Linear()
    with torch.no_grad():
        retrained.lin.bias.add_(1e-3)
    assert FIDEvaluator(retrained, real).source == "computed"
    assert FIDEvaluator(ext, real).source == "shipped"


def test_a_file_recording_another_key_is_ignored_with_a_warning(shipped):
    ext, real, other = _Linear(), _images(30, 0), _images(30, 1)
    with torch.no_grad():
        src = save_shipped_features(features_key(ext, other), ext(other))
    src.replace(shipped_features_path(features_key(ext, real)))  # the right name, another image set inside
    with pytest.warns(UserWarning, match="record another extractor/image set"):
        assert load_shipped_features(features_key(ext, real)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert FIDEvaluator(ext, real).source == "computed"


def test_features_that_overflow_float16_are_refused(shipped):
    ext, real = _Linear(), _images(4, 0)
    with pytest.raises(Exception, match="overflow float16"):
        save_shipped_features(features_key(ext, real), torch.full((4, 5), 1e6))


def _build_fid_features():
    """tools/build_fid_features.py (a script outside the package), loaded by path."""
    name = "_build_fid_features_under_test"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "tools" / "build_fid_features.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _record() -> dict:
    return json.loads(_build_fid_features().RECORD_PATH.read_text())


def test_the_shipped_record_lists_existing_files_and_a_small_float16_effect():
    record = _record()
    names = {(f["preset"], f["split"]) for f in record["files"]}
    assert names == {(p, s) for p in ("smoke", "quick") for s in ("val", "test")}
    total = 0
    for f in record["files"]:
        path = fid_store.SHIPPED_FEATURES_DIR / f["file"]
        assert path.is_file() and path.stat().st_size == f["bytes"], f
        total += f["bytes"]
    assert total < 5e6  # the package carries them: a few MB at most
    assert record["float16_effect"]["quick"]["rel_diff"] < 1e-3


@pytest.mark.parametrize("preset", ["smoke", "quick"])
def test_shipped_files_are_what_the_task_computes_today(preset, monkeypatch, tmp_path):
    """The key the task builds today finds a shipped file, and its first rows equal freshly computed features
    (so a change to the data split, the preprocessing or the Inception weights shows here, not as a silent miss)."""
    from ray_bilevel.metrics.features import inception_extractor

    _real_images = _build_fid_features()._real_images

    monkeypatch.setenv("RAY_BILEVEL_CACHE", str(tmp_path))
    ext = inception_extractor()
    for split in ("val", "test"):
        images, _ = _real_images(preset, split)
        shipped_rows = load_shipped_features(features_key(ext, images))
        assert shipped_rows is not None, f"no shipped features for {preset}/{split}: rebuild them (module docstring)"
        assert shipped_rows.shape == (len(images), ext.dim)
        with torch.no_grad():
            fresh = ext(images[:3]).to(torch.float64)
        assert torch.allclose(shipped_rows[:3], fresh, rtol=2e-3, atol=1e-3), (preset, split)
