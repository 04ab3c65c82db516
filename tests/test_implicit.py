"""The γ → ∞ limit of eq. (4)'s penalty term by conjugate gradients (ray_bilevel/estimators/implicit.py), against a
quadratic bilevel problem whose hypergradient is known in closed form."""
from __future__ import annotations

import pytest
import torch

from ray_bilevel.estimators.implicit import conjugate_gradient, penalty_limit
from ray_bilevel.estimators.penalty import penalty_hypergradient

D = torch.float64


def _spd(n: int, seed: int) -> torch.Tensor:
    m = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=D)
    return m @ m.T + n * torch.eye(n, dtype=D)


def test_cg_solves_an_spd_system_to_tolerance():
    a, b = _spd(12, 0), torch.randn(12, generator=torch.Generator().manual_seed(1), dtype=D)
    (w,), info = conjugate_gradient(lambda u: [a @ u[0]], [b], iters=50, tol=1e-10)
    assert info.stop == "tol" and info.iterations <= 13
    assert torch.allclose(w, torch.linalg.solve(a, b), atol=1e-8)
    (wd,), _ = conjugate_gradient(lambda u: [a @ u[0]], [b], iters=50, tol=1e-10, damping=2.0)
    assert torch.allclose(wd, torch.linalg.solve(a + 2.0 * torch.eye(12, dtype=D), b), atol=1e-8)


def test_cg_stops_at_negative_curvature_and_on_its_budget():
    h = torch.diag(torch.tensor([-1.0, 2.0], dtype=D))
    (w,), info = conjugate_gradient(lambda u: [h @ u[0]], [torch.tensor([1.0, 0.0], dtype=D)], iters=5)
    assert info.stop == "curvature" and torch.equal(w, torch.zeros(2, dtype=D))  # no step along negative curvature
    a, b = _spd(30, 2), torch.ones(30, dtype=D)
    _, info = conjugate_gradient(lambda u: [a @ u[0]], [b], iters=3, tol=0.0)
    assert info.stop == "iters" and info.iterations == 3 and 0 < info.residual < 1
    with pytest.raises(ValueError, match="iters"):
        conjugate_gradient(lambda u: u, [b], iters=0)


def _problem(seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    n, m = 6, 3
    a, bmat = _spd(n, seed), torch.randn(n, m, generator=gen, dtype=D)
    c, x = torch.randn(n, generator=gen, dtype=D), torch.randn(m, generator=gen, dtype=D)

    def g(xv, z):  # lower: y*(x) = A^-1 B x
        return 0.5 * z @ a @ z - z @ bmat @ x if xv is None else 0.5 * z @ a @ z - z @ bmat @ xv

    def f(xv, z):
        return 0.5 * ((z - c) ** 2).sum() + 0.1 * (xv ** 2).sum()

    return a, bmat, c, x, g, f


def test_penalty_limit_is_the_implicit_hypergradient_of_a_quadratic_problem():
    a, bmat, c, x, g, f = _problem()
    y = torch.linalg.solve(a, bmat @ x)
    z = y.clone().requires_grad_(True)
    xp = x.clone().requires_grad_(True)
    term, info = penalty_limit(lambda: g(xp, z), [z], [xp], [y - c], iters=50, tol=1e-12)
    assert info.stop == "tol"
    expected = bmat.T @ torch.linalg.solve(a, y - c)  # -∇²_xz g H⁻¹ ∇_z f with ∇²_xz g = -Bᵀ
    assert torch.allclose(term, expected, atol=1e-9)
    # the total derivative of F(x) = f(x, y*(x)) = its direct part + this term
    xx = x.clone().requires_grad_(True)
    (total,) = torch.autograd.grad(f(xx, torch.linalg.solve(a, bmat @ xx)), xx)
    assert torch.allclose(0.2 * x + term, total, atol=1e-9)


def test_penalty_limit_is_the_large_gamma_limit_of_eq_4():
    a, bmat, c, x, g, f = _problem(seed=5)
    y = torch.linalg.solve(a, bmat @ x)
    xp, z = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    term, _ = penalty_limit(lambda: g(xp, z), [z], [xp], [y - c], iters=50, tol=1e-12)
    errors = []
    for gamma in (1e2, 1e4):  # z*_γ = argmin f + γ g = (I + γA)⁻¹ (c + γ B x)
        z_star = torch.linalg.solve(torch.eye(len(c), dtype=D) + gamma * a, c + gamma * bmat @ x)
        eq4 = penalty_hypergradient(f, g, x, y, z_star, gamma)
        errors.append(float((eq4 - 0.2 * x - term).norm()))
    assert errors[1] < 1e-3 and errors[1] < errors[0] / 50  # O(1/γ) convergence


def test_penalty_limit_books_its_second_order_passes():
    from ray_bilevel.cost import capture, watch

    net = watch(torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1)).to(D), "toy")
    x = torch.tensor(0.7, dtype=D, requires_grad=True)
    data = torch.randn(11, 5, generator=torch.Generator().manual_seed(0), dtype=D)
    params = list(net.parameters())

    def g():
        return ((net(data * x) - 1.0) ** 2).mean()

    with capture() as forward_only:
        with torch.no_grad():
            net(data)
    fwd = forward_only.total
    v = [torch.ones_like(p) for p in params]
    with capture() as meter:
        _, info = penalty_limit(g, params, [x], v, iters=4, tol=0.0, damping=1.0)
    assert fwd > 0 and info.iterations >= 1
    # forward + backward of g (3F), then (products + 1 mixed pass) reverse passes of the gradient graph at 6F each
    passes = info.iterations + 1
    assert meter.total == pytest.approx(3 * fwd + 6 * fwd * passes)
