"""First-order penalty hypergradient, paper eq. (2)-(4) and Algorithm 1 (docs/algorithms.md §1).

The bilevel problem ``min_x f(x, y*(x))``, ``y*(x) = argmin_y g(x, y)`` is replaced by the penalty
function (3)

    F_γ(x) = min_z [ f(x, z) + γ (g(x, z) − g*(x)) ] ,   g*(x) = min_y g(x, y)

whose gradient (4) needs only first-order information at two solutions:

    ∇F_γ(x) = ∇_x f(x, z*) + γ (∇_x g(x, z*) − ∇_x g(x, y*))
    y* ∈ argmin_y g(x, y) ,   z* ∈ argmin_z f(x, z) + γ g(x, z).

``|F_γ − F| = O(1/γ)`` (Lemma 1), so γ is an accuracy knob.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["penalty_hypergradient", "penalty_combine", "penalty_lower_objective", "penalty_signal"]

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def penalty_combine(
    grad_x_f_z: torch.Tensor, grad_x_g_z: torch.Tensor, grad_x_g_y: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Eq. (4) from its three partial gradients: ∇_x f(x,z) + γ (∇_x g(x,z) − ∇_x g(x,y))."""
    if gamma <= 0:
        raise ValueError(f"the penalty constant gamma must be > 0, got gamma={gamma}.")
    return grad_x_f_z + gamma * (grad_x_g_z - grad_x_g_y)


def penalty_signal(upper: torch.Tensor, h_z: torch.Tensor, h_y: torch.Tensor, gamma: float) -> dict[str, float]:
    """The two terms of ∇F_γ(x) = ĝ_x + γ (h_z − h_y) (eq. 4/15): ``hypergrad_upper_norm`` = ‖ĝ_x‖,
    ``hypergrad_penalty_norm`` = ‖γ (h_z − h_y)‖ and ``hypergrad_cosine`` = their cosine (0 if either is 0)."""
    a = upper.to(torch.float64).flatten()
    b = (gamma * (h_z - h_y)).to(torch.float64).flatten()
    na, nb = float(a.norm()), float(b.norm())
    cos = float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0
    return {"hypergrad_upper_norm": na, "hypergrad_penalty_norm": nb, "hypergrad_cosine": cos}


def penalty_lower_objective(f: Objective, g: Objective, x: torch.Tensor, z: torch.Tensor, gamma: float) -> torch.Tensor:
    """The penalty problem's objective in z (eq. 3 inner): f(x, z) + γ g(x, z)."""
    return f(x, z) + gamma * g(x, z)


def penalty_hypergradient(
    f: Objective, g: Objective, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Eq. (4) by autograd at approximate solutions y ≈ y*(x) and z ≈ z*_γ(x).

    Args:
        f, g: upper and lower objectives, differentiable functions ``(x, y) -> scalar``.
        x: the upper variable; y, z: lower-level and penalty solutions (not differentiated).
        gamma: the penalty constant γ > 0.
    """
    x = x.detach().requires_grad_(True)
    y, z = y.detach(), z.detach()
    grad_f_z = _grad_x(f, x, z)
    grad_g_z = _grad_x(g, x, z)
    grad_g_y = _grad_x(g, x, y)
    return penalty_combine(grad_f_z, grad_g_z, grad_g_y, gamma)


def _grad_x(h: Objective, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    value = h(x, w)
    if value.dim() != 0:
        raise ValueError(f"objectives must return a scalar, got shape {tuple(value.shape)}.")
    (grad,) = torch.autograd.grad(value, x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad
