"""Fréchet distance between Gaussian feature statistics (FID), with a disk cache of real stats.

FID = ‖μ_r − μ_f‖² + tr(Σ_r + Σ_f − 2 (Σ_r Σ_f)^{1/2})  (ALGORITHMS.md §5.4).

* :func:`frechet_distance` is the project's own float64 torch implementation. The trace term
  uses the symmetric form tr((Σ_r Σ_f)^{1/2}) = Σ_k sqrt(λ_k(Σ_r^{1/2} Σ_f Σ_r^{1/2})), which has
  the same eigenvalues as Σ_r Σ_f (§5.4) but only needs two symmetric eigendecompositions;
  tiny negative eigenvalues from round-off are clamped to 0.
* :func:`frechet_distance_reference` calls pytorch-fid's scipy-``sqrtm`` implementation and is
  the ground truth in tests.
* :func:`feature_stats` implements decision (f): the plain sample covariance, or the shrinkage
  Σ̂ = (1−ρ)S + ρ·(tr S/d)·I with a fixed ρ or the Ledoit–Wolf ρ (``shrinkage="ledoit_wolf"``);
  the ρ used is recorded in :class:`FeatureStats`.
* :class:`FIDEvaluator` computes the real statistics once (cached under
  ``cache_dir()/"fid_stats"``) and scores batches of generated images against them.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.paths import cache_dir

__all__ = [
    "FeatureStats",
    "feature_stats",
    "ledoit_wolf_shrinkage",
    "frechet_distance",
    "frechet_distance_reference",
    "FIDEvaluator",
]

_STATS_VERSION = 1


@dataclass
class FeatureStats:
    """Gaussian statistics of a feature set: mean (d,), covariance (d, d), both float64."""

    mu: torch.Tensor
    sigma: torch.Tensor
    n: int
    shrinkage: float = 0.0


def ledoit_wolf_shrinkage(features: torch.Tensor) -> float:
    """Ledoit–Wolf (2004) optimal ρ for shrinking towards (tr S/d)·I (same estimate as scikit-learn)."""
    x = features.to(torch.float64)
    x = x - x.mean(0)
    n, d = x.shape
    x2 = x * x
    emp_trace = x2.sum(0) / n  # diagonal of the biased covariance
    mu = emp_trace.sum() / d
    beta_ = (x2.T @ x2).sum()
    delta_ = ((x.T @ x) ** 2).sum() / n**2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * emp_trace.sum() + d * mu**2) / d
    beta = torch.minimum(beta, delta)
    return 0.0 if float(delta) == 0.0 else float(beta / delta)


def feature_stats(features: torch.Tensor, shrinkage: float | str = 0.0) -> FeatureStats:
    """Mean and (unbiased, optionally shrunk) covariance of (N, d) features, in float64.

    Args:
        features: (N, d) with N >= 2.
        shrinkage: ρ in [0, 1] for Σ̂ = (1−ρ)S + ρ·(tr S/d)·I (decision (f)), or ``"ledoit_wolf"``.
    """
    if features.dim() != 2 or features.shape[0] < 2:
        raise ConfigError(f"feature_stats needs (N, d) features with N >= 2, got shape {tuple(features.shape)}.")
    x = features.detach().to(torch.float64).cpu()
    if not torch.isfinite(x).all():
        raise ConfigError("feature_stats: features contain NaN or inf; check the images passed to the extractor.")
    n, d = x.shape
    if shrinkage == "ledoit_wolf":
        rho = ledoit_wolf_shrinkage(x)
    elif isinstance(shrinkage, (int, float)) and not isinstance(shrinkage, bool) and 0.0 <= shrinkage <= 1.0:
        rho = float(shrinkage)
    else:
        raise ConfigError(f"shrinkage must be a number in [0, 1] or 'ledoit_wolf', got {shrinkage!r}.")
    mu = x.mean(0)
    xc = x - mu
    sigma = xc.T @ xc / (n - 1)
    if rho > 0.0:
        sigma = (1.0 - rho) * sigma + rho * (torch.trace(sigma) / d) * torch.eye(d, dtype=torch.float64)
    return FeatureStats(mu=mu, sigma=sigma, n=n, shrinkage=rho)


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues → 0)."""
    evals, evecs = torch.linalg.eigh((s + s.T) / 2)
    return (evecs * evals.clamp_min(0.0).sqrt()) @ evecs.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """‖μ_a − μ_b‖² + tr Σ_a + tr Σ_b − 2 Σ_k sqrt(λ_k(Σ_a^{1/2} Σ_b Σ_a^{1/2})), float64 (§5.4)."""
    if a.mu.shape != b.mu.shape:
        raise ConfigError(f"feature dimensions differ: {tuple(a.mu.shape)} vs {tuple(b.mu.shape)}; use the same extractor.")
    return _frechet(a, b, _psd_sqrt(a.sigma.to(torch.float64)))


def _frechet(a: FeatureStats, b: FeatureStats, root_a: torch.Tensor) -> float:
    """:func:`frechet_distance` given Σ_a^{1/2} (reused by :class:`FIDEvaluator` across calls)."""
    mu_a, mu_b = a.mu.to(torch.float64), b.mu.to(torch.float64)
    s_a, s_b = a.sigma.to(torch.float64), b.sigma.to(torch.float64)
    m = root_a @ s_b @ root_a
    trace_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0.0).sqrt().sum()
    diff = mu_a - mu_b
    value = diff @ diff + torch.trace(s_a) + torch.trace(s_b) - 2.0 * trace_sqrt
    return float(value)


def frechet_distance_reference(a: FeatureStats, b: FeatureStats) -> float:
    """pytorch-fid's ``calculate_frechet_distance`` (scipy ``sqrtm``): the reference value."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy 1.17: sqrtm(disp=...) (ENVIRONMENT §8.1)
        return float(
            calculate_frechet_distance(a.mu.numpy(), a.sigma.numpy(), b.mu.numpy(), b.sigma.numpy())
        )


class FIDEvaluator:
    """Fréchet distance of generated images to a fixed real set, under one feature extractor.

    The real statistics are computed once and cached on disk as ``.npz`` under
    ``cache_dir()/"fid_stats"``. The file name hashes the extractor's ``name`` and
    ``preprocessing`` (if it has one), the real images' shape, the shrinkage, and either
    ``cache_key`` (when given; the caller vouches that it identifies the real images, e.g.
    ``ImageData.name``) or a SHA-1 of the real images' bytes.

    Attributes:
        real: the real :class:`FeatureStats`.
        cache_path: the stats file.
    """

    def __init__(
        self,
        extractor,
        real_images: torch.Tensor,
        *,
        cache_key: str | None = None,
        batch_size: int = 64,
        shrinkage: float | str = 0.0,
    ) -> None:
        if real_images.dim() != 4:
            raise ConfigError(f"real_images must be (N, C, H, W) in [-1, 1], got shape {tuple(real_images.shape)}.")
        self.extractor = extractor
        self.batch_size = int(batch_size)
        self.shrinkage = shrinkage
        self.cache_path = cache_dir() / "fid_stats" / f"{_safe(extractor.name)}-{self._key(real_images, cache_key)}.npz"
        self.real = self._load() or self._compute_and_store(real_images)
        self._real_root = _psd_sqrt(self.real.sigma)  # Σ_r^{1/2}, once: each call then needs one eigvalsh

    def _key(self, real_images: torch.Tensor, cache_key: str | None) -> str:
        h = hashlib.sha1()
        parts = [f"v{_STATS_VERSION}", self.extractor.name, str(getattr(self.extractor, "preprocessing", "")),
                 str(tuple(real_images.shape)), str(self.shrinkage)]
        h.update("|".join(parts).encode())
        if cache_key is not None:
            h.update(b"key:" + str(cache_key).encode())
        else:
            h.update(real_images.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def _load(self) -> FeatureStats | None:
        if not self.cache_path.is_file():
            return None
        with np.load(self.cache_path) as z:
            return FeatureStats(torch.from_numpy(z["mu"]), torch.from_numpy(z["sigma"]), int(z["n"]), float(z["shrinkage"]))

    def _compute_and_store(self, real_images: torch.Tensor) -> FeatureStats:
        stats = self.stats(real_images)
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, mu=stats.mu.numpy(), sigma=stats.sigma.numpy(), n=stats.n, shrinkage=stats.shrinkage)
        os.replace(tmp, self.cache_path)  # atomic for concurrent trials
        return stats

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Extractor features of (N, C, H, W) images in batches of ``batch_size``, no grad."""
        with torch.no_grad():
            return torch.cat([self.extractor(images[i : i + self.batch_size]) for i in range(0, len(images), self.batch_size)])

    def stats(self, images: torch.Tensor) -> FeatureStats:
        """:class:`FeatureStats` of ``images`` with this evaluator's shrinkage."""
        return feature_stats(self.features(images), self.shrinkage)

    def __call__(self, fake_images: torch.Tensor) -> float:
        """FID of ``fake_images`` (N, C, H, W) in [-1, 1] against the real statistics."""
        n, dim = int(fake_images.shape[0]), int(self.extractor.dim)
        if n < dim + 1 and self.shrinkage == 0.0:
            warnings.warn(
                f"FID with {n} fake images for {dim}-d features: the covariance is rank-deficient (decision (f)); "
                f"use >= {dim + 1} images or shrinkage > 0.",
                stacklevel=2,
            )
        return _frechet(self.real, self.stats(fake_images), self._real_root)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
