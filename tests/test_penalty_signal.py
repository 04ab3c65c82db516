"""The penalty term of eq. (4) carries signal (docs/noise_schedule.md "Does the penalty term carry signal?").

Known answers, smoke scale, seconds, no Ray:

* the differentiable Fréchet distance of the surrogate equals ``metrics.fid.frechet_distance`` on the same stats;
* its gradient reaches the images through the digit classifier and the weights through the DDIM chain, and one
  small step of z along −∇_z f̃ lowers f̃;
* with z moved from y along a direction that lowers f̃, γ(h_z − h_y) is non-zero and equals (value and sign) a central
  finite difference in q of γ(g(q, z) − g(q, y)) on the same (x0, t, ε).
"""
from __future__ import annotations

import pytest
import torch

from ray_bilevel.diffusion import score_matching_loss
from ray_bilevel.metrics.fid import FeatureStats, feature_stats, frechet_distance
from ray_bilevel.schedules import NAMES, alphas_cumprod_from
from ray_bilevel.tasks.noise_schedule import NoiseScheduleTask
from ray_bilevel.tasks.noise_schedule.surrogate import (
    diagonal_frechet_distance_t,
    frechet_distance_t,
    penalty_signal,
    shrunk_stats,
)

pytestmark = [pytest.mark.filterwarnings("ignore:FID with"), pytest.mark.filterwarnings("ignore:noise_schedule. "
                                                                                        "projected:UserWarning")]


def smoke(**over) -> NoiseScheduleTask:
    return NoiseScheduleTask({"task": "noise_schedule", "preset": "smoke", "seed": 5, "tau": 1.3, "start": 0.05,
                              "end": 0.95, **over})


def test_differentiable_frechet_matches_metrics_fid():
    gen = torch.Generator().manual_seed(0)
    real = (
        torch.randn(300, 64, generator=gen, dtype=torch.float64)
        @ torch.randn(64, 64, generator=gen, dtype=torch.float64)
        / 8
    )
    fake = torch.randn(32, 64, generator=gen) + 0.3  # fewer samples than dimensions: shrunk covariance
    ref_real = feature_stats(real)
    for rho in (0.2, 0.5):
        mu, sigma = shrunk_stats(fake, rho)
        ref_fake = feature_stats(fake, rho)
        assert torch.allclose(sigma, ref_fake.sigma) and torch.allclose(mu, ref_fake.mu)
        ours = frechet_distance_t(ref_real.mu, ref_real.sigma, mu, sigma)
        assert ours.dtype == torch.float64
        assert float(ours) == pytest.approx(frechet_distance(ref_real, ref_fake), rel=1e-9)
    # the diagonal form equals the Fréchet distance of the diagonal Gaussians
    var_r, var_f = ref_real.sigma.diagonal(), fake.double().var(0)
    diag = diagonal_frechet_distance_t(ref_real.mu, var_r, fake.double().mean(0), var_f)
    ref = frechet_distance(
        FeatureStats(ref_real.mu, torch.diag(var_r), 300), FeatureStats(fake.double().mean(0), torch.diag(var_f), 32)
    )
    assert float(diag) == pytest.approx(ref, rel=1e-9)


@pytest.mark.slow
def test_surrogate_gradient_flows_and_one_small_step_lowers_it():
    task = smoke(z_fid_grad="surrogate")
    for _ in range(2):
        task.hyper_step()
    sur = task.surrogate
    assert "test" not in task.upper._real  # the validation statistics, never the test split
    assert torch.equal(sur.mu_r, task.upper.domain_evaluator("val").real.mu.double())
    # through the classifier: DigitExtractor wraps no_grad, the surrogate calls DigitClassifier.features
    images = (torch.rand(8, *task.shape) * 2 - 1).requires_grad_(True)
    sur.distance(sur.features(images)).backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0
    # through the DDIM chain to z's weights; one normalised gradient step lowers f~ on the same x_T
    alphas, x_T = task._alphas(), torch.randn(16, *task.shape, generator=torch.Generator().manual_seed(1))
    params = list(task.z.parameters())
    value = sur(task.z, alphas, x_T)
    grads = torch.autograd.grad(value, params)
    norm = torch.sqrt(sum(g.double().pow(2).sum() for g in grads))
    assert float(norm) > 0
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(1e-2 * g / norm)
    after = sur(task.z, alphas, x_T, grad=False)
    assert float(after) < float(value.detach())


def _fd_value_gap(task, q, x0, t, noise, gamma):
    """gamma (g(q, z) - g(q, y)) on the fixed draw, in float64."""
    s = task.schedule
    a = alphas_cumprod_from(q, s.family, s.parameterisation, s.T, s.clip_min)
    with torch.no_grad():
        return gamma * float(
            score_matching_loss(task.z, x0, a, t=t, noise=noise) - score_matching_loss(task.y, x0, a, t=t, noise=noise)
        )


@pytest.mark.slow
def test_penalty_term_is_nonzero_and_matches_a_finite_difference_of_g_in_q():
    gamma = 10.0
    task = smoke(z_fid_grad="none", z_init="copy_y")
    for _ in range(2):
        task.hyper_step()
    task.y.double(), task.z.double()
    task.z.load_state_dict(task.y.state_dict())
    sur, alphas = task.surrogate, task._alphas()
    x_T = torch.randn(16, *task.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    f_y = float(sur(task.y, alphas, x_T, grad=False))
    params = list(task.z.parameters())
    for _ in range(3):  # z moves from y along -grad f~ (a direction that lowers f)
        grads = torch.autograd.grad(sur(task.z, alphas, x_T) / gamma, params)
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(2e-2 * g / norm)
    assert float(sur(task.z, alphas, x_T, grad=False)) < f_y
    x0 = task.last_x0.double()
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(0, task.cfg.T, (x0.shape[0],), generator=gen)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    h_y, h_z = task.sm_schedule_gradients(x0, t, noise)
    penalty = gamma * (h_z - h_y)
    q0, delta = task.schedule.q.detach().clone(), 1e-5
    fd = torch.zeros(4, dtype=torch.float64)
    for j in range(4):
        e = torch.zeros(4, dtype=torch.float64)
        e[j] = delta
        fd[j] = (
            _fd_value_gap(task, q0 + e, x0, t, noise, gamma) - _fd_value_gap(task, q0 - e, x0, t, noise, gamma)
        ) / (2 * delta)
    assert float(penalty.norm()) > 1e-3 * float(gamma * h_y.norm())  # non-zero: z is not y
    big = penalty.abs() > 1e-3 * float(penalty.abs().max())
    assert torch.equal(torch.sign(penalty[big]), torch.sign(fd[big])), (penalty, fd)  # the right sign
    assert torch.allclose(penalty, fd, rtol=1e-4, atol=1e-6 * float(penalty.abs().max())), (NAMES, penalty, fd)
    report = penalty_signal(-penalty, h_z, h_y, gamma)  # an upper term opposite to the penalty: cosine -1
    assert report["hypergrad_penalty_norm"] == pytest.approx(float(penalty.norm()))
    assert report["hypergrad_cosine"] == pytest.approx(-1.0)


def test_surrogate_bilevel_step_reports_the_penalty_signal():
    task = smoke(z_fid_grad="surrogate", z_init="copy_y", gamma=10.0, gamma_end=10.0)
    task.hyper_step()
    out = task.hyper_step()
    for key in ("hypergrad_upper_norm", "hypergrad_penalty_norm", "hypergrad_cosine", "z_surrogate_before",
                "z_surrogate_after", "hypergrad_norm", "zo_grad_norm", "penalty_grad_norm"):
        assert key in out and out[key] == out[key], key
    assert out["hypergrad_upper_norm"] == pytest.approx(out["zo_grad_norm"])
    assert out["hypergrad_penalty_norm"] == pytest.approx(10.0 * out["penalty_grad_norm"])
    assert out["hypergrad_penalty_norm"] > 0 and -1 <= out["hypergrad_cosine"] <= 1
