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
diagonal (``covariance="diagonal"``). Everything after the features is float64. The statistics and distances are
:mod:`ray_bilevel.metrics.fid`'s differentiable ones (:func:`~ray_bilevel.metrics.fid.shrunk_stats`,
:func:`~ray_bilevel.metrics.fid.frechet_distance_t`, :func:`~ray_bilevel.metrics.fid.diagonal_frechet_distance_t`;
re-exported here): one Fréchet distance for the reported FID and the surrogate.

:func:`penalty_signal` (defined in :mod:`ray_bilevel.estimators.penalty`, re-exported here) splits the hypergradient
estimate ∇F_γ(q) = ĝ_q + γ (h_z − h_y) into its two terms
(reported per bilevel step as ``hypergrad_upper_norm``, ``hypergrad_penalty_norm``, ``hypergrad_cosine``).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from ray_bilevel.diffusion import ddim_sample, score_matching_loss
from ray_bilevel.estimators.implicit import penalty_limit
from ray_bilevel.estimators.penalty import penalty_signal
from ray_bilevel.estimators.schedule_step import copy_with_moments_, draw_t_noise
from ray_bilevel.metrics.fid import (
    FeatureStats,
    diagonal_frechet_distance_t,
    frechet_distance_t,
    psd_sqrt,
    shrunk_stats,
)

__all__ = ["shrunk_stats", "frechet_distance_t", "diagonal_frechet_distance_t", "SurrogateFID", "SurrogatePenalty",
           "penalty_signal", "copy_with_moments_"]

Covariance = Literal["full", "diagonal"]


class SurrogateFID:
    """f̃(z; q, x_T): Fréchet distance of z's short-chain DDIM samples' digit features to fixed real statistics.

    Args:
        classifier: the :class:`~ray_bilevel.models.digit_classifier.DigitClassifier` (its ``features`` is
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


class SurrogatePenalty:
    """The penalty network's steps under ``z_fid_grad="surrogate"``: a strategy object the noise-schedule task owns.

    Its inputs are explicit: the surrogate f̃ (:class:`SurrogateFID`), the step settings, the sample shape and the
    ``penalty`` random stream; the networks and their AdamW optimisers are passed to :meth:`steps`. With
    ``use_reference`` it owns the reference network y' (copied from y with its AdamW moments at every bilevel step,
    so a checkpoint of the task need not hold it) and :meth:`reference` returns it as the network of h_y in eq. (4).

    Args:
        fid: f̃, against the validation real statistics.
        T: the diffusion steps (t ~ U{0..T-1} of the score-matching draws).
        inner_z: K_z, the AdamW steps of z per bilevel step.
        samples: ``surrogate_samples``, the batch of each f̃ evaluation.
        lr, weight_decay: y' 's AdamW settings (z's: ``lr_z``, ``weight_decay``).
        use_reference: ``surrogate_reference``.
        shape: (C, H, W) of one sample; ``device``: where the networks live.
        generator: the task's ``penalty`` stream (every draw of these steps comes from it).
    """

    def __init__(self, fid: SurrogateFID, *, T: int, inner_z: int, samples: int, lr: float, weight_decay: float,
                 use_reference: bool, shape: tuple[int, ...], device: torch.device | str,
                 generator: torch.Generator) -> None:
        self.fid, self.T, self.inner_z, self.samples = fid, int(T), int(inner_z), int(samples)
        self.lr, self.weight_decay, self.use_reference = float(lr), float(weight_decay), bool(use_reference)
        self.shape, self.device, self.generator = tuple(shape), device, generator
        self.y_ref: torch.nn.Module | None = None
        self.opt_ref: torch.optim.Optimizer | None = None

    def reference(self, y: torch.nn.Module) -> torch.nn.Module:
        """The network whose ∇_q SM is h_y in eq. (4): y' once :meth:`steps` has built it (``use_reference``), else y.
        y' = y plus the same score-matching steps as z (same minibatch, t, ε and AdamW state): common random numbers
        for the two inner problems."""
        return self.y_ref if self.y_ref is not None and self.use_reference else y

    def _noise(self, n: int) -> Tensor:
        return torch.randn((n, *self.shape), generator=self.generator).to(self.device)

    def steps(self, z: torch.nn.Module, opt_z: torch.optim.Optimizer, y: torch.nn.Module,
              opt_y: torch.optim.Optimizer, alphas: Tensor, x0: Tensor, gamma: float) -> dict[str, float]:
        """K_z AdamW steps of z on SM(z; q) + f̃(z; q, x_T)/γ (the penalty objective divided by γ), x_T fresh per step.

        With ``use_reference`` y' (copied from y with its AdamW moments) takes the same score-matching steps without
        f̃ (same x0, t, ε): z − y' is then the effect of f̃ alone and h_z − h_{y'} is free of the minibatch noise of
        z's SM step, which γ would otherwise amplify (docs/noise_schedule.md). Reports f̃ of z before and after its
        steps (and of y' after) on a held-out x_T.
        """
        sur, gen = self.fid, self.generator
        ref = opt_ref = None
        if self.use_reference:
            if self.y_ref is None:
                self.y_ref = copy.deepcopy(y)
                self.opt_ref = torch.optim.AdamW(self.y_ref.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            ref, opt_ref = self.y_ref, self.opt_ref
            assert opt_ref is not None
            copy_with_moments_(ref, opt_ref, y, opt_y)
        check = self._noise(self.samples)
        out = {"z_surrogate_before": float(sur(z, alphas, check, grad=False))}
        losses, values = [], []
        for _ in range(self.inner_z):
            t, eps = draw_t_noise(x0, self.T, gen)
            loss = score_matching_loss(z, x0, alphas, t=t, noise=eps)
            value = sur(z, alphas, self._noise(self.samples))
            opt_z.zero_grad(set_to_none=True)
            (loss + value / gamma).backward()
            opt_z.step()
            if ref is not None and opt_ref is not None:
                opt_ref.zero_grad(set_to_none=True)
                score_matching_loss(ref, x0, alphas, t=t, noise=eps).backward()
                opt_ref.step()
            losses.append(float(loss.detach()))
            values.append(float(value.detach()))

        def dist(net: torch.nn.Module) -> float:
            return math.sqrt(sum(float((pz - pb).pow(2).sum()) for pz, pb in zip(z.parameters(), net.parameters())))

        with torch.no_grad():
            out["z_surrogate_after"] = float(sur(z, alphas, check, grad=False))
            if ref is not None:  # y' (no f~) on the same x_T, and how far z is from it
                out.update(ref_surrogate_after=float(sur(ref, alphas, check, grad=False)), zref_distance=dist(ref))
            out.update(z_loss=sum(losses) / len(losses), z_surrogate=sum(values) / len(values), z_zo_grad_norm=0.0,
                       zy_distance=dist(y))
        return out

    def limit(self, y: torch.nn.Module, q_params: list[Tensor], alphas_of_q: Callable[[], Tensor], x0: Tensor,
              t: Tensor, eps: Tensor, *, iters: int, tol: float, damping: float) -> tuple[Tensor, dict[str, float]]:
        """``z_solve="cg"``: the γ → ∞ limit of eq. (4)'s penalty term, −∇²_qy SM(y) (H + δI)⁻¹ ∇_y f̃(y), with
        H = ∇²_yy SM(y; q) on the minibatch ``x0`` and the draw ``(t, eps)`` (the one h_y uses), f̃ on a fresh x_T
        (:func:`~ray_bilevel.estimators.implicit.penalty_limit`). ``alphas_of_q()`` must build ᾱ(q) with its graph
        to ``q_params``. Returns the (4,) float64 term and what the solve did."""
        params = [p for p in y.parameters() if p.requires_grad]
        value = self.fid(y, alphas_of_q().detach(), self._noise(self.samples))
        grads = torch.autograd.grad(value, params, allow_unused=True)
        v = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
        term, info = penalty_limit(lambda: score_matching_loss(y, x0, alphas_of_q(), t=t, noise=eps), params,
                                   q_params, v, iters=iters, tol=tol, damping=damping)
        return term, {"z_surrogate": float(value.detach()), "cg_iterations": float(info.iterations),
                      "cg_residual": info.residual, "cg_curvature_stop": float(info.stop == "curvature"),
                      "surrogate_grad_norm": math.sqrt(sum(float(g.pow(2).sum()) for g in v))}
