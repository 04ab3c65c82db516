"""λ hypergradient (Prop. 1 / eq. (33) / exact form) against ground truth: docs/algorithms.md §2.1-§2.2."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize

from ray_bilevel.config import ConfigError
from ray_bilevel.estimators.entropy_lambda import (
    lambda_hypergradient,
    lambda_statistics,
    penalty_value,
    project_lambda,
)

LAMS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def _fd(fun, lam: float, rel: float = 1e-3) -> float:
    """Fourth-order central difference of ``fun`` at ``lam``."""
    h = rel * lam
    return (-fun(lam + 2 * h) + 8 * fun(lam + h) - 8 * fun(lam - h) + fun(lam - 2 * h)) / (12 * h)


def _clip_like(lam: float, n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of CLIP size (~30): b/λ spans a few units, so w* is not a point mass, but b/λ ≈ 3000 at λ = 0.01."""
    g = torch.Generator().manual_seed(seed)
    zb, ze = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    b = 30.0 + 2.0 * lam * zb
    a = 30.0 + 3.0 * zb + 2.0 * ze + torch.rand(n, generator=g, dtype=torch.float64) ** 3
    return a, b


@pytest.mark.parametrize("gamma", [1.0, 10.0, 1000.0])
@pytest.mark.parametrize("lam", LAMS)
def test_exact_equals_finite_difference_of_penalty_value(lam, gamma):
    a, b = _clip_like(lam)
    grad = lambda_hypergradient(a, b, lam, gamma)
    fd = _fd(lambda lam_: penalty_value(a, b, lam_, gamma), lam)
    assert math.isfinite(grad)
    assert grad == pytest.approx(fd, rel=1e-4)


@pytest.mark.parametrize("lam", (0.01, 100.0))
def test_no_overflow_with_unscaled_clip_rewards(lam):
    g = torch.Generator().manual_seed(1)
    b = 30.0 + torch.randn(256, generator=g, dtype=torch.float64)
    a = 28.0 + 0.5 * b + torch.randn(256, generator=g, dtype=torch.float64)
    naive_overflows = not math.isfinite(float(torch.exp(b / lam).mean())) if lam < 1 else False
    for method in ("exact", "paper"):
        assert math.isfinite(lambda_hypergradient(a, b, lam, 1.0, method=method))
    assert math.isfinite(penalty_value(a, b, lam, 1.0))
    assert naive_overflows or lam > 1
    # w* is (numerically) a point mass at λ = 0.01: the gradient is ~0 there, and FD agrees in absolute terms
    fd = _fd(lambda lam_: penalty_value(a, b, lam_, 1.0), lam)
    assert lambda_hypergradient(a, b, lam, 1.0) == pytest.approx(fd, rel=1e-4, abs=1e-6)


def test_paper_method_matches_naive_formula_where_naive_is_finite():
    a, b = _clip_like(5.0, n=32, seed=4)
    lam, gamma = 5.0, 2.0
    naive = (-a.mean() / lam - gamma * torch.log(torch.exp(b / lam).mean())
             + gamma * torch.log(torch.exp((a / gamma + b) / lam).mean()))
    assert lambda_hypergradient(a, b, lam, gamma, method="paper") == pytest.approx(float(naive), rel=1e-10)


def test_exact_approaches_weighted_covariance_over_lambda_squared():
    lam = 0.7
    a, b = _clip_like(lam, n=200, seed=2)
    w = torch.softmax(b / lam, 0)
    cov = float((w * a * b).sum() - (w * a).sum() * (w * b).sum()) / lam**2
    errors = [abs(lambda_hypergradient(a, b, lam, gamma) - cov) for gamma in (1e2, 1e3, 1e4, 1e5, 1e6)]
    ratios = [e2 / e1 for e1, e2 in zip(errors, errors[1:])]
    assert all(0.05 < r < 0.2 for r in ratios), (errors, ratios)  # O(1/γ)
    assert errors[-1] < 1e-4 * abs(cov)


def _uniform_toy_truth(lam: float) -> tuple[float, float]:
    """r2 ~ U[0,1], r1 = 3 r2³ (+ independent noise): dF/dλ = Cov_{p*}(r1, r2)/λ² and the γ→∞ limit of (33)."""
    z = integrate.quad(lambda u: math.exp(u / lam), 0, 1)[0]

    def mean(f):
        return integrate.quad(lambda u: f(u) * math.exp(u / lam), 0, 1)[0] / z

    exact = (mean(lambda u: 3 * u**4) - mean(lambda u: 3 * u**3) * mean(lambda u: u)) / lam**2
    paper = (mean(lambda u: 3 * u**3) - 0.75) / lam
    return exact, paper


def test_non_gaussian_toy_paper_differs_at_small_lambda_and_agrees_at_large():
    g = torch.Generator().manual_seed(0)
    b = torch.rand(400_000, generator=g, dtype=torch.float64)
    a = 3 * b**3 + 0.1 * torch.randn(400_000, generator=g, dtype=torch.float64)
    gamma = 1e4
    for lam, rel in ((0.05, 0.03), (0.2, 0.02), (5.0, 0.02)):
        exact_true, paper_true = _uniform_toy_truth(lam)
        exact = lambda_hypergradient(a, b, lam, gamma, method="exact")
        paper = lambda_hypergradient(a, b, lam, gamma, method="paper")
        assert exact == pytest.approx(exact_true, rel=rel)
        assert paper == pytest.approx(paper_true, rel=rel)
    # docs/algorithms.md §2.2 illustration: λ = 0.2 → 5.20 vs 3.64; λ = 0.05 → 36.9 vs 7.37 (paper vs exact)
    assert _uniform_toy_truth(0.2) == pytest.approx((3.644, 5.195), rel=1e-3)
    small = [lambda_hypergradient(a, b, 0.05, gamma, method=m) for m in ("paper", "exact")]
    large = [lambda_hypergradient(a, b, 5.0, gamma, method=m) for m in ("paper", "exact")]
    assert small[0] / small[1] > 4
    assert large[0] / large[1] == pytest.approx(1.0, abs=0.03)


def test_discrete_p_data_brute_force_penalty_problem():
    """min_p f + γ(g − g*) over the simplex, solved numerically, equals γλ(ℓ* − ℓγ); (12) equals the estimator."""
    counts = np.array([1, 2, 3, 1, 3])
    pi = counts / counts.sum()
    r1 = np.array([31.0, 29.5, 30.2, 33.0, 28.7])
    r2 = np.array([1.0, 2.5, 0.3, -0.4, 1.7])
    lam, gamma = 0.8, 3.0
    # the empirical sample: atom j repeated counts[j] times is exactly p_data
    a = torch.tensor(np.repeat(r1, counts))
    b = torch.tensor(np.repeat(r2, counts))

    def kl(p):
        return float(np.sum(p * np.log(p / pi)))

    def g(p):
        return -p @ r2 + lam * kl(p)

    def solve(obj):
        res = optimize.minimize(lambda t: obj(np.exp(t - t.max()) / np.exp(t - t.max()).sum()), np.zeros(5),
                                method="BFGS", options={"gtol": 1e-11})
        p = np.exp(res.x - res.x.max())
        return p / p.sum()

    p_star = solve(g)
    p_gamma = solve(lambda p: -p @ r1 + gamma * g(p))
    g_star = g(p_star)
    brute = -p_gamma @ r1 + gamma * (g(p_gamma) - g_star)
    assert penalty_value(a, b, lam, gamma) == pytest.approx(brute, rel=1e-8)
    eq12 = gamma * (kl(p_gamma) - kl(p_star))
    assert lambda_hypergradient(a, b, lam, gamma) == pytest.approx(eq12, rel=1e-5)


@pytest.mark.parametrize("gamma,expected", [(1.0, 1.125), (10.0, 0.5625), (1000.0, 0.5006)])
def test_gaussian_example(gamma, expected):
    """r2 ~ N(1,1), r1 = 25 + 2 r2 + N(0,1): ∇F_γ(λ) = (2 + 2.5/γ)/λ² (docs/algorithms.md §2.2, table at λ = 2)."""
    g = torch.Generator().manual_seed(5)
    n = 1_000_000
    b = 1 + torch.randn(n, generator=g, dtype=torch.float64)
    a = 25 + 2 * b + torch.randn(n, generator=g, dtype=torch.float64)
    lam = 2.0
    assert (2 + 2.5 / gamma) / lam**2 == pytest.approx(expected, abs=1e-4)
    assert lambda_hypergradient(a, b, lam, gamma) == pytest.approx(expected, rel=0.02)
    # Gaussian p_data with linear rewards: (33) is exact in the γ → ∞ limit (docs/algorithms.md §2.2), so the two agree
    # at γ = 1000
    if gamma == 1000.0:
        assert lambda_hypergradient(a, b, lam, gamma, method="paper") == pytest.approx(expected, rel=0.02)


def test_statistics_and_shift_invariance():
    a, b = _clip_like(1.0, n=50, seed=3)
    s = lambda_statistics(a, b, 1.0, 10.0)
    assert 1.0 <= s["ess"] <= 50.0
    assert s["F_gamma"] == pytest.approx(penalty_value(a, b, 1.0, 10.0))
    for method in ("exact", "paper"):
        g0 = lambda_hypergradient(a, b, 1.0, 10.0, method=method)
        assert lambda_hypergradient(a + 7.0, b - 3.0, 1.0, 10.0, method=method) == pytest.approx(g0, rel=1e-10)


def test_project_lambda():
    assert project_lambda(5.0, 2.0, 0.1, 1e-3) == pytest.approx(4.8)
    assert project_lambda(0.05, 10.0, 0.1, 1e-2) == 1e-2               # projected onto λ_min
    assert project_lambda(2.0, 0.5, 0.1, 1e-3, log_space=True) == pytest.approx(2.0 * math.exp(-0.1 * 2.0 * 0.5))
    assert project_lambda(2.0, 1e9, 1.0, 1e-3, log_space=True) == 1e-3  # huge step: finite, projected
    with pytest.raises(ConfigError, match="lam_min"):
        project_lambda(1.0, 0.0, 0.1, 0.0)
    with pytest.raises(ConfigError, match="finite"):
        project_lambda(1.0, float("nan"), 0.1, 1e-3)


def test_input_errors():
    with pytest.raises(ConfigError, match="equal length"):
        lambda_hypergradient([1.0, 2.0], [1.0], 1.0, 1.0)
    with pytest.raises(ConfigError, match="lam"):
        lambda_hypergradient([1.0], [1.0], 0.0, 1.0)
    with pytest.raises(ConfigError, match="method"):
        lambda_hypergradient([1.0], [1.0], 1.0, 1.0, method="est2")
