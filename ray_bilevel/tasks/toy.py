"""An analytic bilevel problem with a closed-form optimum and hypergradient.

It exercises the whole machinery (Task protocol, penalty hypergradient eq. 4, Tune layer)
in milliseconds, and is the ground truth the tests check against:

    g(x, y) = ½ yᵀ H y − yᵀ B x              lower level, y*(x) = H⁻¹ B x = M x
    f(x, y) = ½ ‖y − c‖² + ½ ρ ‖x‖²           upper level
    F(x)    = f(x, y*(x)),  ∇F(x) = Mᵀ(M x − c) + ρ x,  x* = (MᵀM + ρI)⁻¹ Mᵀ c

The penalty solution of (3) is z*_γ = (I + γH)⁻¹ (c + γ B x), and eq. (4) gives
∇F_γ(x) = ρx + γ Bᵀ(y* − z*_γ) → ∇F(x) as γ → ∞ (error O(1/γ)).
H, B and c are drawn from ``seed``; H has eigenvalues in [1, 2] and M = H⁻¹B has singular
values in [0.8, 1.2], so plain gradient descent converges at every level.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ray_bilevel.config import ConfigError, resolve
from ray_bilevel.cost import book
from ray_bilevel.estimators.penalty import penalty_hypergradient
from ray_bilevel.space import Param, SearchSpace
from ray_bilevel.tasks.base import Task

__all__ = ["ToySettings", "ToyTask", "PRESETS"]


@dataclass
class ToySettings:
    seed: int = 0
    #: the upper variable x = (x0, x1): its starting point (and, for fixed trials, its value)
    x0: float = 1.0
    x1: float = -1.0
    dim_y: int = 5
    rho: float = 0.1
    gamma: float = 1000.0
    inner_y: int = 10
    inner_z: int = 10
    lr_x: float = 0.5
    outer_steps: int = 60


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"outer_steps": 20},
    "quick": {},
    "paper": {"outer_steps": 200, "inner_y": 20, "inner_z": 20},
}


class ToyTask(Task):
    """Quadratic bilevel problem solved by Algorithm 1 with exact-gradient inner solvers."""

    name = "toy"
    metric = "upper_loss"
    mode = "min"
    metric_modes = {"upper_loss_exact": "min", "dist_to_opt": "min", "lower_loss": "min"}

    @classmethod
    def search_space(cls) -> SearchSpace:
        """x = (x0, x1) in [-3, 3]^2 around its start (1, -1) [derived; not in the paper]."""
        grid = (0.0, -2.0, 2.0, -1.0, 1.0)
        return SearchSpace(
            params=(Param("x0", -3.0, 3.0, default=1.0, grid=grid), Param("x1", -3.0, 3.0, default=-1.0, grid=grid)),
            n_calls=10, acq_func="EI", random_state=42, note="analytic toy",
        )

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.cfg = resolve(ToySettings, PRESETS, config)
        c = self.cfg
        for key in ("dim_y", "inner_y", "inner_z", "outer_steps"):
            if getattr(c, key) < 1:
                raise ConfigError(f"toy setting {key!r} must be >= 1, got {getattr(c, key)}.")
        if c.gamma <= 0:
            raise ConfigError(f"gamma must be > 0, got gamma={c.gamma}.")
        gen = torch.Generator().manual_seed(c.seed)
        d = c.dim_y
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
        self.H = q @ torch.diag(torch.linspace(1.0, 2.0, d, dtype=torch.float64)) @ q.T
        u, _ = torch.linalg.qr(torch.randn(d, 2, generator=gen, dtype=torch.float64))
        self.M = u @ torch.diag(torch.tensor([1.2, 0.8], dtype=torch.float64))
        self.B = self.H @ self.M
        self.c = torch.randn(d, generator=gen, dtype=torch.float64)
        self.x = torch.tensor([c.x0, c.x1], dtype=torch.float64)
        self.y = torch.zeros(d, dtype=torch.float64)
        self.z = torch.zeros(d, dtype=torch.float64)
        self.lower_steps = 0
        self.outer_steps = 0

    # -- problem ---------------------------------------------------------------------------
    def f(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * (y - self.c).square().sum() + 0.5 * self.cfg.rho * x.square().sum()

    def g(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * y @ self.H @ y - y @ self.B @ x

    def x_star(self) -> torch.Tensor:
        """Closed-form optimum of F."""
        a = self.M.T @ self.M + self.cfg.rho * torch.eye(2, dtype=torch.float64)
        return torch.linalg.solve(a, self.M.T @ self.c)

    def true_hypergradient(self, x: torch.Tensor) -> torch.Tensor:
        """∇F(x) = Mᵀ(Mx − c) + ρx."""
        return self.M.T @ (self.M @ x - self.c) + self.cfg.rho * x

    def penalty_solutions(self, x: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact y*(x) and z*_γ(x)."""
        eye = torch.eye(self.cfg.dim_y, dtype=torch.float64)
        y = torch.linalg.solve(self.H, self.B @ x)
        z = torch.linalg.solve(eye + gamma * self.H, self.c + gamma * self.B @ x)
        return y, z

    def upper_value(self, x: torch.Tensor) -> float:
        """F(x) = f(x, y*(x))."""
        return float(self.f(x, self.M @ x))

    # -- Task protocol ---------------------------------------------------------------------
    def hyperparameters(self) -> dict[str, float]:
        return {"x0": float(self.x[0]), "x1": float(self.x[1])}

    def set_hyperparameters(self, values: Mapping[str, float]) -> None:
        for i, key in enumerate(("x0", "x1")):
            if key in values:
                self.x[i] = float(values[key])

    @property
    def lower_budget(self) -> int:
        return self.cfg.outer_steps * self.cfg.inner_y

    @property
    def outer_budget(self) -> int:
        return self.cfg.outer_steps

    def _y_step(self) -> None:
        # gradient descent on g(x, ·) with step 1/L, L = λ_max(H) = 2
        self.y = self.y - 0.5 * (self.H @ self.y - self.B @ self.x)
        self.lower_steps += 1
        book("toy", self._step_flops)

    def _z_step(self) -> None:
        # gradient descent on f + γ g in z; L = 1 + 2γ
        gamma = self.cfg.gamma
        grad = (self.z - self.c) + gamma * (self.H @ self.z - self.B @ self.x)
        self.z = self.z - grad / (1.0 + 2.0 * gamma)
        book("toy", self._step_flops)

    @property
    def _step_flops(self) -> float:
        """Counted compute of one y or z step (cost_flops): the products H·v (d×d) and B·x (d×2), 2 FLOPs a term."""
        d = self.cfg.dim_y
        return 2.0 * d * d + 4.0 * d

    def lower_step(self) -> dict[str, float]:
        self._y_step()
        return {"lower_loss": float(self.g(self.x, self.y)), "samples_seen": float(self.lower_steps)}

    def hyper_step(self) -> dict[str, float]:
        c = self.cfg
        for _ in range(c.inner_y):
            self._y_step()
        for _ in range(c.inner_z):
            self._z_step()
        grad = penalty_hypergradient(self.f, self.g, self.x, self.y, self.z, c.gamma)
        self.x = self.x - c.lr_x * grad
        self.outer_steps += 1
        return {
            "hypergrad_norm": float(grad.norm()),
            "lower_loss": float(self.g(self.x, self.y)),
            "penalty_gap": float(self.g(self.x, self.z) - self.g(self.x, self.y)),
            "samples_seen": float(self.lower_steps),
        }

    def evaluate(self, final: bool = False) -> dict[str, float]:
        upper = float(self.f(self.x, self.y))
        dist = float((self.x - self.x_star()).norm())
        if not math.isfinite(upper):
            raise FloatingPointError(f"toy upper loss is {upper}; lower lr_x (now {self.cfg.lr_x}).")
        return {"upper_loss": upper, "upper_loss_exact": self.upper_value(self.x), "dist_to_opt": dist}

    def state_dict(self) -> dict[str, Any]:
        return {
            "x": self.x.clone(),
            "y": self.y.clone(),
            "z": self.z.clone(),
            "lower_steps": self.lower_steps,
            "outer_steps": self.outer_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.x = state["x"].clone()
        self.y = state["y"].clone()
        self.z = state["z"].clone()
        self.lower_steps = int(state["lower_steps"])
        self.outer_steps = int(state["outer_steps"])
