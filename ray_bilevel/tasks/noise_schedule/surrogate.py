"""A differentiable surrogate of the upper objective for the penalty network z (``z_fid_grad="surrogate"``).

The penalty problem of eq. (4) is ``z* ∈ argmin_z f(q, z) + γ g(q, z)`` with f = FID of z's DDIM samples
under q (docs/algorithms.md §1, §3.1). FID has no usable gradient in z's 1.6e5 weights through the
zeroth-order estimator (one Gaussian direction wrecks z, docs/noise_schedule.md), so z steps on

    f̃(z; q, x_T) = Fréchet distance( digit features of ddim_sample(z, ᾱ(q), x_T, surrogate_steps),
                                      the VALIDATION real statistics )

by autograd: a small batch (``surrogate_samples``) from a fresh x_T per step, a short DDIM chain, the digit
classifier's 64-d features (``DigitClassifier.features``, called directly: :class:`DigitExtractor` wraps
``no_grad``) and the same real statistics as the in-loop ``fid_domain`` (the task's ``"val"`` evaluator, never the
test split). With fewer samples than feature dimensions the fake covariance is shrunk,
Σ̂ = (1 − ρ) S + ρ (tr S / d) I (the rule of :func:`ray_bilevel.metrics.fid.feature_stats`), or replaced by its
diagonal (``covariance="diagonal"``). Everything after the features is float64.

:func:`penalty_signal` (defined in :mod:`ray_bilevel.estimators.penalty`, re-exported here) splits the hypergradient
estimate ∇F_γ(q) = ĝ_q + γ (h_z − h_y) into its two terms
(reported per bilevel step as ``hypergrad_upper_norm``, ``hypergrad_penalty_norm``, ``hypergrad_cosine``).
"""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from ray_bilevel.diffusion import ddim_sample, score_matching_loss
from ray_bilevel.estimators.penalty import penalty_signal
from ray_bilevel.estimators.schedule_step import copy_with_moments_, draw_t_noise

if TYPE_CHECKING:  # pragma: no cover
    from ray_bilevel.metrics.fid import FeatureStats

__all__ = ["shrunk_stats", "frechet_distance_t", "diagonal_frechet_distance_t", "SurrogateFID", "surrogate_for",
           "penalty_signal", "copy_with_moments_", "reference_network", "surrogate_penalty_steps"]

Covariance = Literal["full", "diagonal"]


def shrunk_stats(features: Tensor, shrinkage: float = 0.0) -> tuple[Tensor, Tensor]:
    """(μ, Σ̂) of (N, d) features in float64, differentiable: the unbiased covariance S shrunk as
    Σ̂ = (1 − ρ) S + ρ (tr S / d) I (the values of :func:`ray_bilevel.metrics.fid.feature_stats` with a fixed ρ)."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"shrunk_stats needs (N, d) features with N >= 2, got shape {tuple(features.shape)}.")
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}.")
    x = features.to(torch.float64)
    n, d = x.shape
    mu = x.mean(0)
    xc = x - mu
    sigma = xc.T @ xc / (n - 1)
    if shrinkage > 0.0:
        eye = torch.eye(d, dtype=torch.float64, device=x.device)
        sigma = (1.0 - shrinkage) * sigma + shrinkage * (torch.trace(sigma) / d) * eye
    return mu, sigma


def psd_sqrt(s: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix (float64; negative round-off eigenvalues -> 0)."""
    s = s.to(torch.float64)
    evals, evecs = torch.linalg.eigh((s + s.T) / 2)
    return (evecs * evals.clamp_min(0.0).sqrt()) @ evecs.T


def frechet_distance_t(
    mu_a: Tensor, sigma_a: Tensor, mu_b: Tensor, sigma_b: Tensor, root_a: Tensor | None = None
) -> Tensor:
    """‖μ_a − μ_b‖² + tr Σ_a + tr Σ_b − 2 Σ_k sqrt(λ_k(Σ_a^{1/2} Σ_b Σ_a^{1/2})) as a float64 tensor, differentiable in
    (μ_b, Σ_b) (the value of :func:`ray_bilevel.metrics.fid.frechet_distance`). ``root_a`` = Σ_a^{1/2} if known.

    The eigenvalues of Σ_a^{1/2} Σ_b Σ_a^{1/2} must be bounded away from 0 for a finite gradient (Σ_b shrunk, or
    N > d); eigenvalues below 1e-12 are clamped (their gradient is then 0)."""
    mu_a, sigma_a, mu_b, sigma_b = (t.to(torch.float64) for t in (mu_a, sigma_a, mu_b, sigma_b))
    root = psd_sqrt(sigma_a) if root_a is None else root_a.to(torch.float64)
    m = root @ sigma_b @ root
    trace_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(1e-12).sqrt().sum()
    diff = mu_a - mu_b
    return diff @ diff + torch.trace(sigma_a) + torch.trace(sigma_b) - 2.0 * trace_sqrt


def diagonal_frechet_distance_t(mu_a: Tensor, var_a: Tensor, mu_b: Tensor, var_b: Tensor) -> Tensor:
    """The Fréchet distance of two Gaussians with diagonal covariances: ‖μ_a − μ_b‖² + ‖sqrt(var_a) − sqrt(var_b)‖²."""
    mu_a, var_a, mu_b, var_b = (t.to(torch.float64) for t in (mu_a, var_a, mu_b, var_b))
    diff = mu_a - mu_b
    return diff @ diff + (var_a.clamp_min(0.0).sqrt() - var_b.clamp_min(1e-24).sqrt()).square().sum()


class SurrogateFID:
    """f̃(z; q, x_T): Fréchet distance of z's short-chain DDIM samples' digit features to fixed real statistics.

    Args:
        classifier: the :class:`~ray_bilevel.assets.digit_classifier.DigitClassifier` (its ``features`` is
            differentiable in its input; its weights are frozen).
        real: the real :class:`~ray_bilevel.metrics.fid.FeatureStats` (the validation split's).
        steps: DDIM steps of the sampling chain (``surrogate_steps``).
        shrinkage: ρ of the fake covariance (``surrogate_shrinkage``); ignored for ``covariance="diagonal"``.
    """

    def __init__(self, classifier: Any, real: FeatureStats, steps: int, shrinkage: float = 0.2,
                 covariance: Covariance = "full") -> None:
        if covariance not in ("full", "diagonal"):
            raise ValueError(f"covariance must be 'full' or 'diagonal', got {covariance!r}.")
        self.classifier, self.steps, self.shrinkage, self.covariance = (
            classifier,
            int(steps),
            float(shrinkage),
            covariance,
        )
        self.mu_r = real.mu.to(torch.float64)
        self.sigma_r = real.sigma.to(torch.float64)
        self.root_r = psd_sqrt(self.sigma_r)

    @classmethod
    def from_task(cls, task: Any) -> SurrogateFID:
        """The surrogate of a :class:`~ray_bilevel.tasks.noise_schedule.task.NoiseScheduleTask`, against the real
        statistics of its validation evaluator (created as ``UpperMetrics.fid_domain`` creates it, and shared)."""
        from ray_bilevel.metrics.features import digit_extractor
        from ray_bilevel.metrics.fid import FIDEvaluator

        upper, c = task.upper, task.cfg
        evaluator = upper._domain.get("val")
        if evaluator is None:  # the same construction (and disk cache) as UpperMetrics.fid_domain(..., "val")
            real = upper.real("val")
            evaluator = upper._domain["val"] = FIDEvaluator(digit_extractor(device=task.device), real.images,
                                                            cache_key=real.name, shrinkage=c.fid_shrinkage)
        return cls(evaluator.extractor.model, evaluator.real, c.surrogate_steps, c.surrogate_shrinkage,
                   c.surrogate_covariance)

    def features(self, images: Tensor) -> Tensor:
        """(N, 64) digit features of (N, C, H, W) images in [-1, 1], differentiable in the images."""
        return self.classifier.features(images.to(next(self.classifier.parameters()).dtype))

    def distance(self, features: Tensor) -> Tensor:
        """The (float64, differentiable) Fréchet distance of ``features`` to the real statistics."""
        if self.covariance == "diagonal":
            x = features.to(torch.float64)
            return diagonal_frechet_distance_t(self.mu_r, self.sigma_r.diagonal(), x.mean(0), x.var(0))
        mu, sigma = shrunk_stats(features, self.shrinkage)
        return frechet_distance_t(self.mu_r, self.sigma_r, mu, sigma, self.root_r)

    def __call__(self, model: torch.nn.Module, alphas: Tensor, x_T: Tensor, grad: bool = True) -> Tensor:
        """f̃ of ``model`` under ``alphas`` from ``x_T``; with ``grad`` the graph reaches the model's weights."""
        with torch.set_grad_enabled(grad):
            images = ddim_sample(model, alphas, x_T, self.steps, grad=grad)
            return self.distance(self.features(images))


def surrogate_for(task: Any) -> SurrogateFID:
    """The task's :class:`SurrogateFID`, built on first use and kept on the task."""
    s = getattr(task, "_surrogate", None)
    if s is None:
        s = task._surrogate = SurrogateFID.from_task(task)
    return s


def reference_network(task: Any) -> torch.nn.Module:
    """The network whose ∇_q SM is h_y in eq. (4): y, or — for ``z_fid_grad="surrogate"`` with ``surrogate_reference``
    — y' = y plus the same score-matching steps as z (same minibatch, t, ε and AdamW state), built by
    :func:`surrogate_penalty_steps` (common random numbers for the two inner problems)."""
    ref = getattr(task, "y_ref", None)
    return ref if ref is not None and task.cfg.z_fid_grad == "surrogate" and task.cfg.surrogate_reference else task.y


def surrogate_penalty_steps(task: Any, alphas: Tensor, x0: Tensor, gamma: float) -> dict[str, float]:
    """K_z AdamW steps of z on SM(z; q) + f̃(z; q, x_T)/γ (the penalty objective divided by γ), x_T fresh per step.

    With ``surrogate_reference`` a reference network y' (copied from y with its AdamW moments) takes the same
    score-matching steps without f̃ (same x0, t, ε): z − y' is then the effect of f̃ alone and h_z − h_{y'} is free of
    the minibatch noise of z's SM step, which γ would otherwise amplify (docs/noise_schedule.md). All draws come from
    the ``penalty`` stream. Reports f̃ of z before and after its steps (and of y' after) on a held-out x_T.
    """
    c, sur, gen = task.cfg, surrogate_for(task), task.gens["penalty"]
    ref = opt_ref = None
    if c.surrogate_reference:
        if getattr(task, "y_ref", None) is None:
            task.y_ref = copy.deepcopy(task.y)
            task.opt_ref = torch.optim.AdamW(task.y_ref.parameters(), lr=c.lr_z, weight_decay=c.weight_decay)
        ref, opt_ref = task.y_ref, task.opt_ref
        copy_with_moments_(ref, opt_ref, task.y, task.opt_y)

    def noise(n: int) -> Tensor:
        return torch.randn((n, *task.shape), generator=gen).to(task.device)

    check = noise(c.surrogate_samples)
    out = {"z_surrogate_before": float(sur(task.z, alphas, check, grad=False))}
    losses, values = [], []
    for _ in range(c.inner_z):
        t, eps = draw_t_noise(x0, c.T, gen)
        loss = score_matching_loss(task.z, x0, alphas, t=t, noise=eps)
        value = sur(task.z, alphas, noise(c.surrogate_samples))
        task.opt_z.zero_grad(set_to_none=True)
        (loss + value / gamma).backward()
        task.opt_z.step()
        if ref is not None and opt_ref is not None:
            opt_ref.zero_grad(set_to_none=True)
            score_matching_loss(ref, x0, alphas, t=t, noise=eps).backward()
            opt_ref.step()
        losses.append(float(loss.detach()))
        values.append(float(value.detach()))
    def dist(net: torch.nn.Module) -> float:
        return math.sqrt(sum(float((pz - pb).pow(2).sum()) for pz, pb in zip(task.z.parameters(), net.parameters())))

    with torch.no_grad():
        out["z_surrogate_after"] = float(sur(task.z, alphas, check, grad=False))
        if ref is not None:  # y' (no f~) on the same x_T, and how far z is from it
            out.update(ref_surrogate_after=float(sur(ref, alphas, check, grad=False)), zref_distance=dist(ref))
        out.update(z_loss=sum(losses) / len(losses), z_surrogate=sum(values) / len(values), z_zo_grad_norm=0.0,
                   zy_distance=dist(task.y))
    return out
