"""Penalty hypergradient (eq. 4) and two-point ZO estimator (eq. 14) against ground truth."""
from __future__ import annotations

import math

import pytest
import torch

from ray_bilevel.estimators.penalty import penalty_combine, penalty_hypergradient
from ray_bilevel.estimators.zeroth_order import zo_gradient
from ray_bilevel.tasks.toy import ToyTask


def test_penalty_hypergradient_approaches_analytic_as_gamma_grows():
    task = ToyTask({"seed": 3})
    x = torch.tensor([0.7, -0.2], dtype=torch.float64)
    truth = task.true_hypergradient(x)
    errors = []
    for gamma in (1.0, 10.0, 100.0, 1000.0, 10000.0):
        y, z = task.penalty_solutions(x, gamma)
        grad = penalty_hypergradient(task.f, task.g, x, y, z, gamma)
        # closed form of eq. (4) on this problem: ρx + γ Bᵀ(y* − z*)
        closed = task.cfg.rho * x + gamma * task.B.T @ (y - z)
        assert torch.allclose(grad, closed, rtol=1e-9, atol=1e-10)
        errors.append(float((grad - truth).norm()))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    # O(1/γ): ten times the penalty, about a tenth of the error
    assert errors[-1] < 1e-3 and 0.05 < errors[-1] / errors[-2] < 0.2


def test_penalty_combine_rejects_nonpositive_gamma():
    with pytest.raises(ValueError, match="gamma"):
        penalty_combine(torch.zeros(2), torch.zeros(2), torch.zeros(2), 0.0)


def test_zo_mean_within_three_standard_errors_on_quadratic():
    a = torch.tensor([[3.0, 0.5, 0.0], [0.5, 2.0, 0.1], [0.0, 0.1, 1.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    x = torch.tensor([0.3, 0.1, -0.4], dtype=torch.float64)

    def f(p: torch.Tensor) -> float:
        return float(0.5 * p @ a @ p + b @ p)

    true = a @ x + b  # the smoothed quadratic has the same gradient
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([zo_gradient(f, x, mu=0.05, directions=1, generator=gen).grad for _ in range(4000)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert torch.all((mean - true).abs() < 3 * se), (mean, true, se)


def test_zo_common_random_numbers_cancel_shared_noise():
    x = torch.tensor([0.5, -1.0], dtype=torch.float64)
    noise_gen = torch.Generator().manual_seed(1)

    def estimate(common: bool, gen: torch.Generator) -> torch.Tensor:
        xi = torch.randn((), generator=noise_gen, dtype=torch.float64)

        def f(p: torch.Tensor) -> float:
            e = xi if common else torch.randn((), generator=noise_gen, dtype=torch.float64)
            return float(p.square().sum() + e)

        return zo_gradient(f, x, mu=0.01, directions=1, generator=gen).grad

    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    crn = torch.stack([estimate(True, g1) for _ in range(300)])
    indep = torch.stack([estimate(False, g2) for _ in range(300)])
    assert crn.var(0).sum() * 100 < indep.var(0).sum()


def test_zo_is_exactly_zero_along_a_constant_direction():
    def f(p: torch.Tensor) -> float:  # depends only on p[0]; the draw below keeps p[0] fixed
        return float(torch.sin(p[0]))

    x = torch.tensor([0.2, 0.0], dtype=torch.float64)

    # directions along e_1 only: f(x ± μ v) are equal, so the estimate is exactly zero
    gen = torch.Generator().manual_seed(0)
    result = zo_gradient(lambda p: f(torch.stack([x[0], p[1]])), x, mu=0.1, directions=3, generator=gen)
    assert torch.equal(result.grad, torch.zeros_like(x))
    assert result.evaluations == 6


@pytest.mark.parametrize("kwargs", [{"mu": 0.0}, {"directions": 0}])
def test_zo_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        zo_gradient(lambda p: 0.0, torch.zeros(2), **kwargs)
