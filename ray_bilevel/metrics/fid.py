"""Fréchet distance between Gaussian feature statistics (FID), with a disk cache of real stats.

FID = ‖μ_r − μ_f‖² + tr(Σ_r + Σ_f − 2 (Σ_r Σ_f)^{1/2})  (docs/algorithms.md §4).

* :func:`frechet_distance` is the project's own float64 torch implementation. The trace term
  uses the symmetric form tr((Σ_r Σ_f)^{1/2}) = Σ_k sqrt(λ_k(Σ_r^{1/2} Σ_f Σ_r^{1/2})), which has
  the same eigenvalues as Σ_r Σ_f but only needs two symmetric eigendecompositions;
  tiny negative eigenvalues from round-off are clamped to 0. :func:`frechet_distance_t` is the same arithmetic as a
  differentiable float64 tensor (the noise schedule's surrogate upper objective steps on it by autograd; it clamps the
  eigenvalues at 1e-12 there), :func:`shrunk_stats` the differentiable :func:`feature_stats` with a fixed ρ, and
  :func:`diagonal_frechet_distance_t` the distance of two Gaussians with diagonal covariances.
* :func:`frechet_distance_reference` calls pytorch-fid's scipy-``sqrtm`` implementation and is
  the ground truth in tests.
* :func:`feature_stats` implements the covariance rule of docs/algorithms.md §4: the plain sample covariance, or the
  shrinkage
  Σ̂ = (1−ρ)S + ρ·(tr S/d)·I with a fixed ρ or the Ledoit–Wolf ρ (``shrinkage="ledoit_wolf"``);
  the ρ used is recorded in :class:`FeatureStats`.
* :class:`FIDEvaluator` computes the real statistics once (cached under
  ``cache_dir()/"fid_stats"``) and scores batches of generated images against them. The cache
  key hashes the extractor's weights (:func:`~ray_bilevel.metrics.features.weights_fingerprint`),
  its ``preprocessing`` string and the exact bytes of the real images, so a retrained extractor
  or another image set never reuses old statistics (docs/algorithms.md §4). Features of the shipped data's
  held-out splits ship in ``assets/fid_features`` under the same kind of key, so a first run does not compute
  them (:mod:`ray_bilevel.metrics.fid_store`: :func:`shipped_features_path`; rebuilt by
  ``python tools/build_fid_features.py``).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.cost import active_meter, capture, charge_once
from ray_bilevel.metrics.features import weights_fingerprint
from ray_bilevel.metrics.fid_store import (
    STATS_VERSION,
    features_key,
    images_fingerprint,
    load_shipped_features,
    safe_name,
    save_shipped_features,
    shipped_features_path,
    shrinkage_spec,
)
from ray_bilevel.paths import cache_dir

__all__ = [
    "FeatureStats",
    "feature_stats",
    "shrunk_stats",
    "ledoit_wolf_shrinkage",
    "psd_sqrt",
    "frechet_distance",
    "frechet_distance_t",
    "diagonal_frechet_distance_t",
    "frechet_distance_reference",
    "FIDEvaluator",
    "images_fingerprint",
    "weights_fingerprint",
    "features_key",
    "shipped_features_path",
    "save_shipped_features",
    "load_shipped_features",
]


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
        shrinkage: ρ in [0, 1] for Σ̂ = (1−ρ)S + ρ·(tr S/d)·I (docs/algorithms.md §4), or ``"ledoit_wolf"``.
    """
    x = _checked_features(features)
    rho = _shrinkage_rho(x, shrinkage)
    mu, sigma = _moments(x, rho)
    return FeatureStats(mu=mu, sigma=sigma, n=x.shape[0], shrinkage=rho)


def shrunk_stats(features: torch.Tensor, shrinkage: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, Σ̂) of (N, d) features in float64, differentiable (on the features' device): the values of
    :func:`feature_stats` with a fixed ρ = ``shrinkage``."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"shrunk_stats needs (N, d) features with N >= 2, got shape {tuple(features.shape)}.")
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}.")
    return _moments(features.to(torch.float64), shrinkage)


def _moments(x: torch.Tensor, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance of float64 (N, d) ``x``, shrunk as Σ̂ = (1−ρ)S + ρ·(tr S/d)·I when ρ > 0."""
    n, d = x.shape
    mu = x.mean(0)
    xc = x - mu
    sigma = xc.T @ xc / (n - 1)
    if rho > 0.0:
        eye = torch.eye(d, dtype=torch.float64, device=x.device)
        sigma = (1.0 - rho) * sigma + rho * (torch.trace(sigma) / d) * eye
    return mu, sigma


def _checked_features(features: torch.Tensor) -> torch.Tensor:
    """(N, d) features as float64 on the CPU; refuses N < 2 and NaN/inf (as :func:`feature_stats`)."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ConfigError(f"feature_stats needs (N, d) features with N >= 2, got shape {tuple(features.shape)}.")
    x = features.detach().to(torch.float64).cpu()
    if not torch.isfinite(x).all():
        raise ConfigError("feature_stats: features contain NaN or inf; check the images passed to the extractor.")
    return x


def _shrinkage_rho(x: torch.Tensor, shrinkage: float | str) -> float:
    """The ρ of :func:`feature_stats` for float64 features ``x``."""
    if shrinkage == "ledoit_wolf":
        return ledoit_wolf_shrinkage(x)
    if isinstance(shrinkage, (int, float)) and not isinstance(shrinkage, bool) and 0.0 <= shrinkage <= 1.0:
        return float(shrinkage)
    raise ConfigError(f"shrinkage must be a number in [0, 1] or 'ledoit_wolf', got {shrinkage!r}.")


def psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix, in float64 (negative round-off eigenvalues → 0)."""
    s = s.to(torch.float64)
    evals, evecs = torch.linalg.eigh((s + s.T) / 2)
    return (evecs * evals.clamp_min(0.0).sqrt()) @ evecs.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """‖μ_a − μ_b‖² + tr Σ_a + tr Σ_b − 2 Σ_k sqrt(λ_k(Σ_a^{1/2} Σ_b Σ_a^{1/2})), float64 (docs/algorithms.md §4)."""
    if a.mu.shape != b.mu.shape:
        raise ConfigError(f"feature dimensions differ: {tuple(a.mu.shape)} vs {tuple(b.mu.shape)}; use the same "
                          "extractor.")
    return _frechet(a, b, psd_sqrt(a.sigma))


def _frechet(a: FeatureStats, b: FeatureStats, root_a: torch.Tensor) -> float:
    """:func:`frechet_distance` given Σ_a^{1/2} (reused by :class:`FIDEvaluator` across calls)."""
    return float(frechet_distance_t(a.mu, a.sigma, b.mu, b.sigma, root_a, eig_floor=0.0))


def frechet_distance_t(mu_a: torch.Tensor, sigma_a: torch.Tensor, mu_b: torch.Tensor, sigma_b: torch.Tensor,
                       root_a: torch.Tensor | None = None, eig_floor: float = 1e-12) -> torch.Tensor:
    """‖μ_a − μ_b‖² + tr Σ_a + tr Σ_b − 2 Σ_k sqrt(λ_k(Σ_a^{1/2} Σ_b Σ_a^{1/2})) as a float64 tensor, differentiable in
    (μ_b, Σ_b): the one implementation behind :func:`frechet_distance` (which clamps the eigenvalues at
    ``eig_floor=0``). ``root_a`` = Σ_a^{1/2} if known.

    For a finite gradient the eigenvalues of Σ_a^{1/2} Σ_b Σ_a^{1/2} must be bounded away from 0 (Σ_b shrunk, or
    N > d); eigenvalues below ``eig_floor`` (default 1e-12) are clamped to it (their gradient is then 0)."""
    mu_a, sigma_a, mu_b, sigma_b = (t.to(torch.float64) for t in (mu_a, sigma_a, mu_b, sigma_b))
    root = psd_sqrt(sigma_a) if root_a is None else root_a.to(torch.float64)
    m = root @ sigma_b @ root
    trace_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(eig_floor).sqrt().sum()
    diff = mu_a - mu_b
    return diff @ diff + torch.trace(sigma_a) + torch.trace(sigma_b) - 2.0 * trace_sqrt


def diagonal_frechet_distance_t(mu_a: torch.Tensor, var_a: torch.Tensor, mu_b: torch.Tensor,
                                var_b: torch.Tensor) -> torch.Tensor:
    """The Fréchet distance of two Gaussians with diagonal covariances: ‖μ_a − μ_b‖² + ‖sqrt(var_a) − sqrt(var_b)‖²
    (float64, differentiable in (μ_b, var_b); var_b is clamped at 1e-24 for a finite gradient)."""
    mu_a, var_a, mu_b, var_b = (t.to(torch.float64) for t in (mu_a, var_a, mu_b, var_b))
    diff = mu_a - mu_b
    return diff @ diff + (var_a.clamp_min(0.0).sqrt() - var_b.clamp_min(1e-24).sqrt()).square().sum()


def _frechet_few_samples(a: FeatureStats, root_a: torch.Tensor, features: torch.Tensor, shrinkage: float | str,
                         root_a_squared: Callable[[], torch.Tensor]) -> float:
    """:func:`frechet_distance` of ``a`` and ``feature_stats(features, shrinkage)`` for N < d fake features.

    The same value (up to round-off) without forming Σ_b or the product Σ_a^{1/2} Σ_b Σ_a^{1/2} (2 d³ flops):
    with B = X_c Σ_a^{1/2} (X_c the centred features), Σ_a^{1/2} S Σ_a^{1/2} = BᵀB/(N−1), whose non-zero
    eigenvalues are those of the N×N matrix BBᵀ/(N−1); and tr Σ_b = tr S = ‖X_c‖²/(N−1) (shrinkage keeps the
    trace). With ρ > 0, Σ_a^{1/2} Σ_b Σ_a^{1/2} = (1−ρ) BᵀB/(N−1) + ρ (tr S/d) Σ_a^{1/2}Σ_a^{1/2} (d×d), where
    ``root_a_squared()`` returns Σ_a^{1/2}Σ_a^{1/2} (computed once by :class:`FIDEvaluator`). With ρ = 0 it is
    also more accurate: the d×d form clamps d−N round-off eigenvalues to 0, each adding up to sqrt(ε‖M‖).
    """
    x = _checked_features(features)
    n, d = x.shape
    rho = _shrinkage_rho(x, shrinkage)
    mu = x.mean(0)
    xc = x - mu
    b = xc @ root_a
    trace_b = xc.square().sum() / (n - 1)
    if rho == 0.0:
        m = b @ b.T / (n - 1)
    else:
        m = (1.0 - rho) * (b.T @ b) / (n - 1) + (rho * trace_b / d) * root_a_squared()
    trace_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0.0).sqrt().sum()
    diff = a.mu.to(torch.float64) - mu
    return float(diff @ diff + torch.trace(a.sigma.to(torch.float64)) + trace_b - 2.0 * trace_sqrt)


def frechet_distance_reference(a: FeatureStats, b: FeatureStats) -> float:
    """pytorch-fid's ``calculate_frechet_distance`` (scipy ``sqrtm``): the reference value."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    with warnings.catch_warnings():
        # scipy >= 1.17 deprecates sqrtm(disp=...), which pytorch-fid passes
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(
            calculate_frechet_distance(a.mu.numpy(), a.sigma.numpy(), b.mu.numpy(), b.sigma.numpy())
        )


class FIDEvaluator:
    """Fréchet distance of generated images to a fixed real set, under one feature extractor.

    The real statistics are computed once and cached on disk as ``.npz`` under
    ``cache_dir()/"fid_stats"`` (docs/algorithms.md §4). The file name is
    ``<extractor name>[-<cache_key>]-<key>.npz`` where ``key`` is a SHA-256 of

    * the format version ``STATS_VERSION``;
    * the extractor's ``name``, ``dim`` and ``preprocessing`` string, and its weights'
      fingerprint (:func:`~ray_bilevel.metrics.features.weights_fingerprint`, computed once
      per process and module);
    * the exact real image set: dtype, shape and raw bytes (:func:`images_fingerprint`,
      always, whether or not ``cache_key`` is given);
    * the shrinkage.

    ``cache_key`` is only a human-readable label in the file name; it never stands in for the
    images. The ``.npz`` also records the weights and images fingerprints and the full key;
    a file whose records do not match is ignored and rewritten.

    Before the cache, the evaluator looks for shipped features of exactly these weights and images
    (:func:`load_shipped_features`: the Inception features of the shipped data's held-out splits at the smoke and
    quick presets, float16); found, the statistics are computed from them (a fraction of a second) and nothing is
    cached. Shipped first, so that every machine scores against the same statistics.

    Attributes:
        real: the real :class:`FeatureStats`.
        cache_path: the stats file.
        key_parts: what the key hashes (``weights``, ``images`` fingerprints included).
        from_cache: whether :attr:`real` was read from :attr:`cache_path`.
        source: ``"shipped"``, ``"cache"`` or ``"computed"``: where :attr:`real` came from.
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
        self.key_parts: dict[str, Any] = {
            **features_key(extractor, real_images),
            "shrinkage": shrinkage_spec(shrinkage),
        }
        key_json = json.dumps(self.key_parts, sort_keys=True)
        digest = hashlib.sha256(key_json.encode()).hexdigest()[:24]
        label = "" if cache_key is None else f"-{safe_name(str(cache_key))[:64]}"
        self.cache_path = cache_dir() / "fid_stats" / f"{safe_name(extractor.name)}{label}-{digest}.npz"
        self._key_json = key_json
        with capture():  # the reference's cost is booked below at what computing it costs, wherever it came from
            shipped = load_shipped_features({k: v for k, v in self.key_parts.items() if k != "shrinkage"})
            loaded = None if shipped is not None else self._load()
            self.source = "shipped" if shipped is not None else "cache" if loaded is not None else "computed"
            self.from_cache = loaded is not None
            if shipped is not None:
                self.real = feature_stats(shipped, shrinkage)
            else:
                self.real = loaded or self._compute_and_store(real_images)
        if active_meter() is not None:  # cost_flops: N real images through the extractor, once per trial
            with capture() as one:
                extractor(real_images[:1])
            charge_once(f"fid_reference:{digest}", {k: v * len(real_images) for k, v in one.by_network.items()})
        self._real_root = psd_sqrt(self.real.sigma)  # Σ_r^{1/2}, once: each call then needs one eigvalsh
        self._real_root_sq: torch.Tensor | None = None  # Σ_r^{1/2} Σ_r^{1/2}, once, for shrunk fakes with N < d

    def _load(self) -> FeatureStats | None:
        """The cached stats if the file exists, reads cleanly and records this exact key; else ``None``."""
        if not self.cache_path.is_file():
            return None
        try:
            with np.load(self.cache_path, allow_pickle=False) as z:
                recorded = (
                    int(z["version"]),
                    str(z["weights_fingerprint"]),
                    str(z["images_fingerprint"]),
                    str(z["key"]),
                )
                stats = FeatureStats(
                    torch.from_numpy(z["mu"]), torch.from_numpy(z["sigma"]), int(z["n"]), float(z["shrinkage"])
                )
        except Exception as exc:  # truncated/foreign file: recompute and overwrite
            warnings.warn(
                f"ignoring unreadable FID stats cache {self.cache_path} ({exc!r}); recomputing.", stacklevel=3
            )
            return None
        expected = (STATS_VERSION, self.key_parts["weights"], self.key_parts["images"], self._key_json)
        if recorded != expected:
            warnings.warn(f"FID stats cache {self.cache_path} records another extractor/image set; "
                          "recomputing.", stacklevel=3)
            return None
        return stats

    def _compute_and_store(self, real_images: torch.Tensor) -> FeatureStats:
        stats = self.stats(real_images)
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(
            tmp, mu=stats.mu.numpy(), sigma=stats.sigma.numpy(), n=stats.n, shrinkage=stats.shrinkage,
            version=STATS_VERSION, weights_fingerprint=self.key_parts["weights"],
            images_fingerprint=self.key_parts["images"], key=self._key_json,
        )
        os.replace(tmp, self.cache_path)  # atomic for concurrent trials
        return stats

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Extractor features of (N, C, H, W) images in batches of ``batch_size``, no grad."""
        with torch.no_grad():
            return torch.cat(
                [self.extractor(images[i : i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
            )

    def stats(self, images: torch.Tensor) -> FeatureStats:
        """:class:`FeatureStats` of ``images`` with this evaluator's shrinkage."""
        return feature_stats(self.features(images), self.shrinkage)

    def __call__(self, fake_images: torch.Tensor) -> float:
        """FID of ``fake_images`` (N, C, H, W) in [-1, 1] against the real statistics."""
        n, dim = int(fake_images.shape[0]), int(self.extractor.dim)
        if n < dim + 1 and self.shrinkage == 0.0:
            warnings.warn(
                f"FID with {n} fake images for {dim}-d features: the covariance is rank-deficient (docs/algorithms.md "
                "§4); "
                f"use >= {dim + 1} images or shrinkage > 0.",
                stacklevel=2,
            )
        features = self.features(fake_images)
        if features.dim() == 2 and 2 <= features.shape[0] < features.shape[1]:
            # fewer fakes than dimensions (e.g. 500 Inception features): an N×N eigenproblem instead of
            # two d×d products, same value up to round-off (studies/micro.py: 2048-d, 500 fakes ~10x faster)
            return _frechet_few_samples(self.real, self._real_root, features, self.shrinkage, self._root_squared)
        return _frechet(self.real, feature_stats(features, self.shrinkage), self._real_root)

    def _root_squared(self) -> torch.Tensor:
        if self._real_root_sq is None:
            self._real_root_sq = self._real_root @ self._real_root
        return self._real_root_sq
