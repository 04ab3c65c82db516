"""Hypergradient of the entropy strength λ from pre-trained samples: Prop. 1, estimator (33), exact form.

docs/algorithms.md §2.1-§2.2 (the exact estimator is the default; §6). Problem (9): upper ``f = −E_p[r1]``, lower
``g = −E_p[r2] + λ KL(p‖p_data)``; the penalty function (3) has the closed form

    F_γ(λ) = γ λ (ℓ* − ℓ_γ),   ℓ* = log E_{p_data}[e^{r2/λ}],   ℓ_γ = log E_{p_data}[e^{(r2 + r1/γ)/λ}],

estimated with samples ``u_i ~ p_data`` (a_i = r1(u_i), b_i = r2(u_i)) by ``logmeanexp``. Its exact
derivative (the ray_bilevel default, ``method="exact"``) is

    ∇F_γ(λ) = γ(ℓ* − ℓ_γ) + (1/λ) Σ_i w^γ_i (a_i + γ b_i) − (γ/λ) Σ_i w*_i b_i      (= (12))

with self-normalised weights ``w* = softmax(b/λ)``, ``w^γ = softmax((b + a/γ)/λ)``; it tends to
``Cov_{p*}(r1, r2)/λ²`` as γ → ∞. ``method="paper"`` is the released estimator (33),

    ĝ_33 = −mean(a)/λ − γ ℓ* + γ ℓ_γ,

computed here with log-sum-exp (the released code overflows at small λ). Everything runs in
float64. Internally ``ℓ_γ − ℓ* = log Σ_i w*_i e^{a_i/(γλ)}`` and both estimators are invariant to
constant shifts of a and b, so the rewards are centred first: no cancellation of ``γ·30/λ``-sized terms.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ray_bilevel.config import ConfigError

__all__ = ["lambda_hypergradient", "penalty_value", "project_lambda", "lambda_statistics", "lambda_curve",
           "propose_lambda", "METHODS"]

METHODS = ("exact", "paper")


def _prepare(r1: Any, r2: Any, lam: float, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(r1, dtype=torch.float64).detach().cpu().flatten()
    b = torch.as_tensor(r2, dtype=torch.float64).detach().cpu().flatten()
    if a.numel() == 0 or a.shape != b.shape:
        raise ConfigError(f"r1 and r2 must be non-empty 1-D rewards of equal length, got {a.numel()} and {b.numel()}.")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ConfigError("r1 and r2 must be finite; a scorer returned nan or inf.")
    if not (math.isfinite(lam) and lam > 0):
        raise ConfigError(f"lam must be a finite number > 0, got lam={lam}; project λ onto [lam_min, ∞).")
    if not (math.isfinite(gamma) and gamma > 0):
        raise ConfigError(f"the penalty constant gamma must be > 0, got gamma={gamma}.")
    return a, b


def _log_ratio(a_c: torch.Tensor, log_w_star: torch.Tensor, lam: float, gamma: float) -> torch.Tensor:
    """``ℓ_γ − ℓ* = log Σ_i w*_i e^{a_i/(γλ)}`` (exact identity, with centred a)."""
    return torch.logsumexp(log_w_star + a_c / (gamma * lam), dim=0)


def penalty_value(r1: Any, r2: Any, lam: float, gamma: float) -> float:
    """Empirical ``F_γ(λ) = γλ(ℓ* − ℓ_γ)`` (docs/algorithms.md §2.2), → ``−E_{p*}[r1]`` as γ → ∞."""
    a, b = _prepare(r1, r2, lam, gamma)
    a_mean = a.mean()
    log_w_star = torch.log_softmax(b / lam, dim=0)
    return float(-gamma * lam * _log_ratio(a - a_mean, log_w_star, lam, gamma) - a_mean)


def lambda_hypergradient(r1: Any, r2: Any, lam: float, gamma: float, method: str = "exact") -> float:
    """∇F_γ(λ) from rewards of pre-trained samples (Prop. 1; docs/algorithms.md §2.2, §2.4).

    Args:
        r1: upper rewards a_i (CLIP / class alignment) of samples u_i ~ p_data, shape (N,).
        r2: lower rewards b_i of the same samples, shape (N,).
        lam: entropy strength λ > 0.
        gamma: penalty constant γ > 0 (|F_γ − F| = O(1/γ): an accuracy knob).
        method: ``"exact"`` (default; derivative of the empirical F_γ) or ``"paper"`` (eq. (33)).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {list(METHODS)}.")
    a, b = _prepare(r1, r2, lam, gamma)
    a_c, b_c = a - a.mean(), b - b.mean()
    log_w_star = torch.log_softmax(b_c / lam, dim=0)
    log_ratio = _log_ratio(a_c, log_w_star, lam, gamma)                 # ℓ_γ − ℓ*
    if method == "paper":
        return float(-a_c.mean() / lam + gamma * log_ratio)             # (33) with centred a (mean 0)
    w_star = log_w_star.exp()
    w_gamma = torch.softmax((b_c + a_c / gamma) / lam, dim=0)
    return float(-gamma * log_ratio + (w_gamma * a_c).sum() / lam + gamma / lam * ((w_gamma - w_star) * b_c).sum())


def lambda_statistics(r1: Any, r2: Any, lam: float, gamma: float) -> dict[str, float]:
    """Diagnostics of one λ iteration: ``F_gamma``, the tilted means and the effective sample size of w*."""
    a, b = _prepare(r1, r2, lam, gamma)
    w_star = torch.softmax((b - b.max()) / lam, dim=0)
    return {
        "F_gamma": penalty_value(a, b, lam, gamma),
        "r1_tilted": float((w_star * a).sum()),
        "r2_tilted": float((w_star * b).sum()),
        "r1_pool": float(a.mean()),
        "r2_pool": float(b.mean()),
        "ess": float(1.0 / (w_star.square().sum())),
    }


def project_lambda(lam: float, grad: float, lr: float, lam_min: float, log_space: bool = False) -> float:
    """Projected step ``λ ← max(λ − η ĝ, λ_min)`` (Algorithm 2; λ_min > 0; docs/algorithms.md §2.4).

    ``log_space=True`` steps in log λ instead: ``log λ ← log λ − η λ ĝ`` (the chain rule
    ``∂F/∂log λ = λ ∂F/∂λ``), which keeps λ > 0 and treats 0.01 and 100 on one scale; the result is
    still projected onto ``[λ_min, ∞)``.
    """
    if not (math.isfinite(lam) and lam > 0):
        raise ConfigError(f"lam must be a finite number > 0, got lam={lam}.")
    if not math.isfinite(grad):
        raise ConfigError(f"the hypergradient must be finite, got {grad}; check the rewards and gamma.")
    if not lr > 0:
        raise ConfigError(f"the λ step size must be > 0, got lr={lr}.")
    if not lam_min > 0:
        raise ConfigError(f"lam_min must be > 0 (λ = 0 makes β0/λ infinite), got lam_min={lam_min}.")
    if log_space:
        step = max(min(lr * lam * grad, 50.0), -50.0)  # exp() stays finite; |step| = 50 is a 1e21× change anyway
        new = lam * math.exp(-step)
    else:
        new = lam - lr * grad
    return max(new, lam_min)


def lambda_curve(r1: Any, r2: Any, lams: Any) -> dict[str, torch.Tensor]:
    """The closed-form upper objective at every λ of ``lams`` from one set of pre-trained samples (docs/algorithms.md
    §2.1, §2.4 "the whole curve"): the lower level's solution is ``p*_λ ∝ p_data · e^{r2/λ}``, so with ``u_i ~ p_data``
    and self-normalised weights ``w_i(λ) = softmax(r2/λ)_i``

        F(λ) = E_{p*_λ}[r1] ≈ Σ_i w_i a_i,     dF/dλ = −Cov_w(r1, r2) / λ²,     ESS(λ) = 1 / Σ_i w_i²

    (the derivative is the γ → ∞ limit of :func:`lambda_hypergradient`, with the sign of the upper objective
    E[r1], which is maximised). The effective sample size says where the estimate can be trusted: at small λ the
    weights collapse onto the few samples of largest r2. Returns float64 tensors ``lam``, ``F``, ``dF``, ``ess``."""
    a, b = _prepare(r1, r2, 1.0, 1.0)
    lam = torch.as_tensor(lams, dtype=torch.float64).flatten()
    if lam.numel() == 0 or not bool((lam > 0).all()) or not bool(torch.isfinite(lam).all()):
        raise ConfigError(f"lams must be finite numbers > 0, got {lam.tolist()}.")
    w = torch.softmax((b - b.max())[None, :] / lam[:, None], dim=1)  # (L, N)
    f = w @ a
    cov = w @ (a * b) - f * (w @ b)
    return {"lam": lam, "F": f, "dF": -cov / lam.square(), "ess": 1.0 / w.square().sum(dim=1)}


def propose_lambda(r1: Any, r2: Any, lam_min: float, lam_max: float, points: int = 81,
                   min_ess: float = 0.1) -> dict[str, float]:
    """λ* = argmax of :func:`lambda_curve`'s F over ``points`` log-spaced λ in ``[lam_min, lam_max]``, among the λ
    whose effective sample size is at least ``min_ess`` × N (the estimate is trusted there; ESS grows with λ, so
    the largest λ always qualifies). Returns ``lam``, ``F``, ``dF``, ``ess`` at λ* and ``ess_fraction``."""
    if not (0 < lam_min < lam_max and math.isfinite(lam_max)):
        raise ConfigError(f"the λ curve needs 0 < lam_min < lam_max < inf, got {lam_min} and {lam_max}.")
    if points < 2 or not 0.0 <= min_ess <= 1.0:
        raise ConfigError(f"the λ curve needs points >= 2 and 0 <= min_ess <= 1, got {points} and {min_ess}.")
    grid = torch.logspace(math.log10(lam_min), math.log10(lam_max), points, dtype=torch.float64)
    curve = lambda_curve(r1, r2, grid)
    n = curve["F"].new_tensor(float(torch.as_tensor(r1).numel()))
    trusted = curve["ess"] >= min_ess * n
    trusted[-1] = True
    f = torch.where(trusted, curve["F"], torch.full_like(curve["F"], -math.inf))
    i = int(torch.argmax(f))
    return {"lam": float(grid[i]), "F": float(curve["F"][i]), "dF": float(curve["dF"][i]),
            "ess": float(curve["ess"][i]), "ess_fraction": float(curve["ess"][i] / n)}
