"""Two-point zeroth-order gradient estimator, paper eq. (14) (ALGORITHMS.md §5.3).

    ∇̂f(θ) = (1/m) Σ_j [f(θ + μ v_j) − f(θ − μ v_j)] / (2μ) · v_j ,   v_j ~ N(0, I_d)

It is unbiased for the gradient of the Gaussian-smoothed ``f_μ(θ) = E f(θ + μ v)``. Decision (c):
the ± evaluations of one direction must share their randomness (*common random numbers*: the
same initial noise x_T, DDIM timesteps and feature network), which is the caller's job — ``f``
is a closure over those random numbers. Then a direction along which f is constant gives an
estimate of exactly zero, and noise that is common to both evaluations cancels.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["ZOResult", "zo_gradient"]


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
    for j in range(directions):
        v = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        f_plus = float(f(x + mu * v))
        f_minus = float(f(x - mu * v))
        result.f_plus.append(f_plus)
        result.f_minus.append(f_minus)
        grad.add_(v, alpha=(f_plus - f_minus) / (2.0 * mu * directions))
    return result
