"""λ from the whole closed-form curve (``lam_search="curve"``, docs/algorithms.md §2.4): the curve and its
derivative against finite differences and the exact hypergradient, the ESS guard, and the task's one-step search."""
from __future__ import annotations

import pytest
import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.estimators.entropy_lambda import lambda_curve, lambda_hypergradient, propose_lambda


def _rewards(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(n, generator=g, dtype=torch.float64) * 3 + 12  # r2: ink
    a = 40 - 0.4 * (b - 15).square() + torch.randn(n, generator=g, dtype=torch.float64)  # r1 peaks at ink 15
    return a, b


def test_curve_derivative_matches_finite_differences_and_the_exact_hypergradient():
    a, b = _rewards()
    for lam in (0.3, 1.0, 4.0, 20.0):
        h = 1e-5 * lam
        fd = (lambda_curve(a, b, [lam + h])["F"] - lambda_curve(a, b, [lam - h])["F"]) / (2 * h)
        d = lambda_curve(a, b, [lam])["dF"]
        assert float(d) == pytest.approx(float(fd), rel=1e-5, abs=1e-9)
        # the upper objective is E[r1] (maximised); the hypergradient is of F_gamma = -E[r1], gamma -> inf
        assert float(d) == pytest.approx(-lambda_hypergradient(a, b, lam, 1e7), rel=1e-4, abs=1e-7)


def test_curve_at_large_lambda_is_the_pool_mean_and_ess_grows_with_lambda():
    a, b = _rewards()
    c = lambda_curve(a, b, [0.05, 1.0, 1e6])
    assert float(c["F"][-1]) == pytest.approx(float(a.mean()), rel=1e-6)
    assert float(c["ess"][-1]) == pytest.approx(len(a), rel=1e-6)
    assert bool((c["ess"][1:] >= c["ess"][:-1]).all())


def test_proposal_is_the_argmax_among_trusted_lambdas():
    a, b = _rewards()
    best = propose_lambda(a, b, 0.01, 100.0, points=201, min_ess=0.0)
    grid = torch.logspace(-2, 2, 201, dtype=torch.float64)
    f = lambda_curve(a, b, grid)["F"]
    assert best["lam"] == pytest.approx(float(grid[int(torch.argmax(f))]))
    # one sample with a huge r2 and a huge r1: at small λ the weights collapse onto it and F looks great
    a2, b2 = torch.cat([a, a.new_tensor([500.0])]), torch.cat([b, b.new_tensor([60.0])])
    naive = propose_lambda(a2, b2, 0.01, 100.0, min_ess=0.0)
    guarded = propose_lambda(a2, b2, 0.01, 100.0, min_ess=0.1)
    assert naive["ess"] < 2 and guarded["ess_fraction"] >= 0.1 and guarded["lam"] > naive["lam"]
    with pytest.raises(ConfigError, match="lam_min < lam_max"):
        propose_lambda(a, b, 1.0, 0.5)


def test_task_curve_search_takes_one_step_on_the_validation_reference_set():
    from ray_bilevel.tasks import get_task

    task = get_task("reward_lambda")({"preset": "smoke", "seed": 100, "lam_search": "curve"})
    assert task.outer_budget == 1
    ref = task._reference("val")
    row = task.hyper_step()
    expected = propose_lambda(ref["r1"], ref["r2"], task.cfg.lam_min, task.cfg.curve_lam_max, task.cfg.curve_points,
                              task.cfg.curve_min_ess)
    assert task.lam == expected["lam"] and row["ess"] == expected["ess"] and row["F_curve"] == expected["F"]
    assert task.cfg.curve_min_ess * len(ref["r1"]) <= row["ess"]
    quick = get_task("reward_lambda")({"preset": "quick", "seed": 100})
    assert quick.cfg.lam_search == "curve" and quick.outer_budget == 1  # the quick preset's bilevel λ method
