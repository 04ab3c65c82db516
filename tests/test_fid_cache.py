"""The FID real-statistics cache cannot go stale (docs/algorithms.md §4).

Its key hashes the extractor's weights (``weights_fingerprint``), its ``preprocessing``
string and the exact bytes of the real images; ``cache_key`` is only a label.
"""
from __future__ import annotations

import copy
import os
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ray_bilevel.config import ConfigError  # noqa: E402
from ray_bilevel.metrics import features as feat  # noqa: E402
from ray_bilevel.metrics.fid import FIDEvaluator, images_fingerprint, weights_fingerprint  # noqa: E402


class _TinyExtractor(nn.Module):
    """A linear map of the flattened pixels, counting the images it sees."""

    name = "tiny_linear"

    def __init__(self, dim: int = 6, pixels: int = 64, preprocessing: str = "flatten 8x8, no resize, [-1,1]") -> None:
        super().__init__()
        self.dim, self.preprocessing, self.seen = dim, preprocessing, 0
        self.lin = nn.Linear(pixels, dim)
        self.register_buffer("offset", torch.zeros(dim))
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            self.lin.weight.copy_(torch.randn(dim, pixels, generator=g))
            self.lin.bias.copy_(torch.randn(dim, generator=g))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen += len(images)
        return self.lin(images.flatten(1).float()) + self.offset


def _images(n: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_BILEVEL_CACHE", str(tmp_path))
    return tmp_path / "fid_stats"


def test_same_weights_preprocessing_and_images_hit_the_cache(cache):
    real = _images()
    ext = _TinyExtractor()
    ev = FIDEvaluator(ext, real, batch_size=16)
    assert ext.seen == 40 and not ev.from_cache and ev.cache_path.parent == cache
    ext2 = _TinyExtractor()  # another object, same weights
    ev2 = FIDEvaluator(ext2, real.clone())
    assert ext2.seen == 0 and ev2.from_cache and ev2.cache_path == ev.cache_path
    assert torch.equal(ev2.real.mu, ev.real.mu) and torch.equal(ev2.real.sigma, ev.real.sigma)
    # the file records what it was computed from
    with np.load(ev.cache_path) as z:
        assert str(z["weights_fingerprint"]) == weights_fingerprint(ext) == ev.key_parts["weights"]
        assert str(z["images_fingerprint"]) == images_fingerprint(real)
    assert len(list(cache.glob("*.npz"))) == 1 and not list(cache.glob("*tmp*"))


def test_changing_one_weight_changes_the_key_and_a_stale_file_is_not_used(cache):
    real = _images()
    ext = _TinyExtractor()
    old = FIDEvaluator(ext, real)
    fp_old = weights_fingerprint(ext)

    # a retrained copy: one weight differs
    retrained = copy.deepcopy(ext)
    retrained.seen = 0
    with torch.no_grad():
        retrained.lin.weight[2, 5] += 1e-3
    assert weights_fingerprint(retrained) != fp_old
    new = FIDEvaluator(retrained, real)
    assert new.cache_path != old.cache_path and not new.from_cache and retrained.seen == 40
    assert not torch.equal(new.real.mu, old.real.mu)  # the stale stats were not reused

    # a buffer counts too; and in-place edits of the *same* object are seen (no stale cached fingerprint)
    with torch.no_grad():
        ext.offset[0] = 0.5
    assert weights_fingerprint(ext) not in (fp_old, weights_fingerprint(retrained))
    ext.load_state_dict(_TinyExtractor().state_dict())
    assert weights_fingerprint(ext) == fp_old


def test_stale_file_under_the_current_name_is_detected(cache):
    """Belt and braces: a file at the right path that records other weights is recomputed and rewritten."""
    real = _images()
    ext = _TinyExtractor()
    ev = FIDEvaluator(ext, real)
    bogus = dict(np.load(ev.cache_path))
    bogus["weights_fingerprint"] = np.array("0" * 64)
    bogus["mu"] = bogus["mu"] + 1000.0
    np.savez(ev.cache_path, **bogus)
    ext2 = _TinyExtractor()
    with pytest.warns(UserWarning, match="another extractor/image set"):
        ev2 = FIDEvaluator(ext2, real)
    assert ext2.seen == 40 and not ev2.from_cache and torch.allclose(ev2.real.mu, ev.real.mu)
    ev3 = FIDEvaluator(_TinyExtractor(), real)  # rewritten: a hit again
    assert ev3.from_cache
    ev3.cache_path.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="unreadable"):
        assert not FIDEvaluator(_TinyExtractor(), real).from_cache


def test_one_pixel_preprocessing_shrinkage_change_the_key_cache_key_is_only_a_label(cache):
    real = _images()
    base = FIDEvaluator(_TinyExtractor(), real)
    one_pixel = real.clone()
    one_pixel[17, 0, 3, 4] += 1e-6
    ext = _TinyExtractor()
    ev = FIDEvaluator(ext, one_pixel)
    assert ev.cache_path != base.cache_path and ext.seen == 40
    other_pre = FIDEvaluator(_TinyExtractor(preprocessing="flatten 8x8, no resize, [0,1]"), real)
    assert other_pre.cache_path != base.cache_path and not other_pre.from_cache
    assert FIDEvaluator(_TinyExtractor(), real.double()).cache_path != base.cache_path  # dtype is part of the bytes
    assert FIDEvaluator(_TinyExtractor(), real, shrinkage=0.1).cache_path != base.cache_path
    assert FIDEvaluator(_TinyExtractor(), real, shrinkage=0).cache_path == base.cache_path  # 0 == 0.0
    # cache_key labels the file but never replaces the content hash
    a = FIDEvaluator(_TinyExtractor(), real, cache_key="heldout/mnist5k 16px")
    ext_b = _TinyExtractor()
    b = FIDEvaluator(ext_b, one_pixel, cache_key="heldout/mnist5k 16px")
    assert "heldout_mnist5k_16px" in a.cache_path.name and a.cache_path != b.cache_path
    assert ext_b.seen == 40 and torch.equal(b.real.mu, ev.real.mu)
    assert a.key_parts == base.key_parts


def test_extractor_without_weights_is_refused(cache):
    class NoWeights:
        name, dim, preprocessing = "identity", 64, "flatten"

        def __call__(self, images):
            return images.flatten(1)

    with pytest.raises(ConfigError, match="cannot be fingerprinted"):
        FIDEvaluator(NoWeights(), _images())


def test_digit_extractor_fingerprint_tracks_the_classifier_weights(cache):
    ext = feat.digit_extractor()
    fp = ext.weights_fingerprint
    assert len(fp) == 64 and fp == weights_fingerprint(feat.digit_extractor())  # shared model, same fingerprint
    assert ext.preprocessing == feat.DIGIT_PREPROCESSING and "28x28" in ext.preprocessing
    real = _images(300).repeat_interleave(2, -1).repeat_interleave(2, -2)  # 16x16
    ev = FIDEvaluator(ext, real)
    retrained = feat.DigitExtractor(copy.deepcopy(ext.model))
    with torch.no_grad():
        retrained.model.fc1.weight[0, 0] += 1e-4
    assert weights_fingerprint(retrained) != fp
    ev2 = FIDEvaluator(retrained, real)
    assert ev2.cache_path != ev.cache_path and not ev2.from_cache
    assert FIDEvaluator(feat.digit_extractor(), real).from_cache


def test_hashing_is_cheap():
    """1,000 images of 28x28 (3.1 MB float32) hash in milliseconds; the digit CNN's weights once per process."""
    imgs = torch.rand(1000, 1, 28, 28) * 2 - 1
    images_fingerprint(imgs)
    start = time.perf_counter()
    for _ in range(5):
        images_fingerprint(imgs)
    per_call = (time.perf_counter() - start) / 5
    assert per_call < 0.1, per_call  # measured ~2-4 ms; generous bound for a shared 2-core machine
    ext = feat.digit_extractor()
    weights_fingerprint(ext)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weights_fingerprint(ext)  # cached: only the state_dict stamp is checked
    assert time.perf_counter() - start < 0.05
