"""Two-point zeroth-order gradient estimator, paper eq. (14) (docs/algorithms.md §3.3).

    ∇̂f(θ) = (1/m) Σ_j [f(θ + μ v_j) − f(θ − μ v_j)] / (2μ) · v_j ,   v_j ~ N(0, I_d)

It is unbiased for the gradient of the Gaussian-smoothed ``f_μ(θ) = E f(θ + μ v)``. Decision (c):
the ± evaluations of one direction must share their randomness (*common random numbers*: the
same initial noise x_T, DDIM timesteps and feature network), which is the caller's job — ``f``
is a closure over those random numbers. Then a direction along which f is constant gives an
estimate of exactly zero, and noise that is common to both evaluations cancels.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["ZOResult", "zo_gradient", "coordinate_zo"]


@dataclass
class ZOResult:
    """The estimate and what it cost."""

    grad: torch.Tensor
    #: f(θ + μ v_j) and f(θ − μ v_j), one pair per direction.
    f_plus: list[float] = field(default_factory=list)
    f_minus: list[float] = field(default_factory=list)

    @property
    def evaluations(self) -> int:
        return len(self.f_plus) + len(self.f_minus)


def zo_gradient(
    f: Callable[[torch.Tensor], float],
    x: torch.Tensor,
    mu: float = 0.01,
    directions: int = 1,
    generator: torch.Generator | None = None,
) -> ZOResult:
    """Eq. (14): the two-point Gaussian-direction estimate of ∇f at ``x``.

    Args:
        f: objective at a perturbed copy of ``x`` (same shape); returns a float. It must use
            common random numbers within one direction (see the module docstring).
        x: the point, any shape; it is not modified.
        mu: smoothing radius μ > 0 (released value 0.01).
        directions: number m of random directions averaged (paper: 1).
        generator: draws the directions v_j (seeded by the caller for reproducibility).

    Returns:
        :class:`ZOResult` with ``grad`` of ``x``'s shape and dtype.
    """
    if mu <= 0:
        raise ValueError(f"the ZO radius mu must be > 0, got mu={mu}; the released value is 0.01.")
    if directions < 1:
        raise ValueError(f"the number of ZO directions must be >= 1, got {directions}.")
    x = x.detach()
    grad = torch.zeros_like(x)
    result = ZOResult(grad=grad)
    for _ in range(directions):
        v = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        f_plus = float(f(x + mu * v))
        f_minus = float(f(x - mu * v))
        result.f_plus.append(f_plus)
        result.f_minus.append(f_minus)
        grad.add_(v, alpha=(f_plus - f_minus) / (2.0 * mu * directions))
    return result


def coordinate_zo(f: Callable[[torch.Tensor], float], x: torch.Tensor, mu: float,
                  lower: Sequence[float], upper: Sequence[float], skip: Sequence[bool] | None = None) -> ZOResult:
    """Two-point differences (14) along the coordinate directions v_j = e_j, kept inside the box [lower, upper].

    Central ``(f(x + mu e_j) - f(x - mu e_j)) / (2 mu)`` where both probes are feasible; one-sided
    (forward/backward, sharing one f(x)) at an active bound; 0 if neither probe fits or ``skip[j]``. With common
    random numbers inside ``f`` this is the gradient up to O(mu^2) (O(mu) one-sided), with no
    cross-talk between coordinates of very different sensitivity, which a single Gaussian
    direction has (in 4-d, the tau component of a one-direction estimate is dominated by the
    end/start components at the DDIM default). Cost: 2 evaluations per free coordinate.
    """
    x = x.detach()
    grad = torch.zeros_like(x)
    res = ZOResult(grad=grad)
    f0: float | None = None
    for j in range(x.numel()):
        e = torch.zeros_like(x)
        e.view(-1)[j] = mu
        xj = float(x.view(-1)[j])
        up, down = xj + mu <= upper[j], xj - mu >= lower[j]
        if skip is not None and skip[j]:
            continue
        if up and down:
            fp, fm = float(f(x + e)), float(f(x - e))
            grad.view(-1)[j] = (fp - fm) / (2 * mu)
        elif up or down:
            if f0 is None:
                f0 = float(f(x))
            fp, fm = (float(f(x + e)), f0) if up else (f0, float(f(x - e)))
            grad.view(-1)[j] = (fp - fm) / mu
        else:
            continue
        res.f_plus.append(fp)
        res.f_minus.append(fm)
    return res

