"""Checks of docs/algorithms.md §3.2 for ray_bilevel.schedules (cosine (16) / sigmoid (34), both forms)."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from ray_bilevel.config import ConfigError
from ray_bilevel.schedules import DDIM_DEFAULT, NoiseSchedule, alphas_cumprod_from, betas_from

F64 = torch.float64


def q_of(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def random_admissible(family: str, rng: np.random.Generator) -> torch.Tensor:
    if family == "cosine":
        s = rng.uniform(0.0, 0.5)
        return q_of(s, rng.uniform(s + 0.05, 1.0), rng.uniform(0.3, 4.0), rng.uniform(0.0, 0.1))
    s = rng.uniform(-6.0, 0.0)
    return q_of(s, s + rng.uniform(0.5, 10.0), rng.uniform(0.1, 3.0), rng.uniform(-2.0, 2.0))


@pytest.mark.parametrize("family", ["cosine", "sigmoid"])
def test_chen2023_endpoints_and_monotone_for_random_admissible_q(family):
    rng = np.random.default_rng(0)
    for _ in range(25):
        q = random_admissible(family, rng)
        a = alphas_cumprod_from(q, family, "chen2023", 1000)
        assert a.dtype == F64 and a.shape == (1000,)
        assert a[0] > 0.98, (q, a[0])
        assert a[-1] <= 1e-3, (q, a[-1])
        assert bool((a[1:] <= a[:-1]).all()), q
        assert bool((a > 0).all())


def test_paper_and_chen2023_coincide_at_ddim_default():
    q = q_of(0.0, 1.0, 1.0, 0.008)
    a = alphas_cumprod_from(q, "cosine", "chen2023", 1000)
    b = alphas_cumprod_from(q, "cosine", "paper", 1000)
    assert float((a - b).abs().max()) < 1e-12


@pytest.mark.parametrize(
    "family,q,expected",
    [
        ("cosine", (0.4, 0.8, 1.0, 0.008), 0.65),
        ("sigmoid", (0.0, 1.0, 1.0, 0.008), 0.685),
        ("sigmoid", (-3.0, 3.0, 1.0, 0.0), 0.009),
    ],
)
def test_paper_form_terminal_values(family, q, expected):
    a = alphas_cumprod_from(q_of(*q), family, "paper", 1000)
    assert abs(float(a[-1]) - expected) < 0.005 + 0.01 * expected


def test_chen2023_at_released_counterexample_is_noise():
    a = alphas_cumprod_from(q_of(0.4, 0.8, 1.0, 0.008), "cosine", "chen2023", 1000)
    assert 1e-7 < float(a[-1]) < 1e-6  # ≈ 7e-7 (docs/algorithms.md §3.2), against 0.65 in the released form


def test_ddim_default_equals_diffusers_squaredcos_cap_v2():
    """The DDIM default is Nichol & Dhariwal's cosine: diffusers' own implementation is the reference."""
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod.to(F64)
    ours = NoiseSchedule(**DDIM_DEFAULT).alphas_cumprod().detach()
    assert float((ours - ref).abs().max()) < 1e-6


def test_golden_values_closed_form_and_numbers():
    T = 1000
    ours = NoiseSchedule("cosine", T=T).alphas_cumprod().detach().numpy()
    f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 250, 500, 750, 900):  # no beta is clipped before t = T-1: abar_t = f((t+1)/T) / f(0)
        assert abs(ours[t] - f((t + 1) / T) / f(0.0)) < 1e-12
    assert abs(ours[250] - 0.8458879864968829) < 1e-12
    assert abs(ours[500] - 0.4922851724488026) < 1e-12
    chen_sig = NoiseSchedule("sigmoid", T=T, start=-3, end=3, tau=1, eps=0).alphas_cumprod().detach().numpy()
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731  (Chen 2023 Alg. 1, sigmoid)
    g = lambda u: (sig(3.0) - sig(6 * u - 3)) / (sig(3.0) - sig(-3.0))  # noqa: E731
    for t in (0, 250, 500, 750):
        assert abs(chen_sig[t] - g((t + 1) / T)) < 1e-12
    assert abs(chen_sig[250] - 0.8498630091830929) < 1e-12
    paper_sig = alphas_cumprod_from(q_of(-3, 3, 1, 0), "sigmoid", "paper", T).numpy()
    assert abs(paper_sig[250] - 0.5150508363492636) < 1e-12


@pytest.mark.parametrize("family", ["cosine", "sigmoid"])
@pytest.mark.parametrize("parameterisation", ["chen2023", "paper"])
def test_export_to_diffusers_reproduces_alphas_cumprod(family, parameterisation):
    kw = (
        dict(start=0.1, end=0.9, tau=1.3, eps=0.01)
        if family == "cosine"
        else dict(start=-2.0, end=4.0, tau=0.7, eps=0.1)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = NoiseSchedule(family, parameterisation, T=1000, **kw)
    d = sched.to_diffusers()
    assert d.config.num_train_timesteps == 1000 and d.config.clip_sample is False and d.config.set_alpha_to_one is True
    assert float((d.alphas_cumprod.to(F64) - sched.alphas_cumprod().detach()).abs().max()) < 1e-6


@pytest.mark.parametrize(
    "family,parameterisation,q",
    [
        ("cosine", "chen2023", (0.1, 0.9, 1.3, 0.01)),
        ("cosine", "paper", (0.2, 0.9, 1.2, 0.02)),
        ("sigmoid", "chen2023", (-2.0, 4.0, 0.7, 0.1)),
        ("sigmoid", "paper", (-3.0, 3.0, 0.8, 0.1)),
    ],
)
def test_gradient_matches_finite_differences(family, parameterisation, q):
    weights = torch.linspace(0.5, 1.5, 200, dtype=F64)

    def fn(qv):
        return (alphas_cumprod_from(qv, family, parameterisation, 200) * weights).sum()

    q = q_of(*q).requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (q,), eps=1e-6, atol=1e-6, rtol=1e-4)
    (g,) = torch.autograd.grad(fn(q), q)
    assert bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0


def test_gradient_guarded_where_cosine_reaches_zero():
    # end > 1 (a zeroth-order probe just outside the bounds): cos clamps to exactly 0 near t = 1
    for tau in (1.0, 0.3):
        q = q_of(0.0, 1.02, tau, 0.0).requires_grad_(True)
        a = alphas_cumprod_from(q, "cosine", "chen2023", 100)
        (g,) = torch.autograd.grad(a.sum(), q)
        assert bool(torch.isfinite(a).all()) and bool(torch.isfinite(g).all())
        a = alphas_cumprod_from(q, "cosine", "paper", 100)
        (g,) = torch.autograd.grad(a.sum(), q)
        assert bool(torch.isfinite(g).all())


def test_module_parameters_betas_and_hyperparameters():
    s = NoiseSchedule()
    assert [n for n, _ in s.named_parameters()] == ["start", "end", "tau", "eps"]
    assert all(p.dtype == F64 for p in s.parameters())
    assert s.hyperparameters() == DDIM_DEFAULT
    assert torch.allclose(torch.cumprod(1 - s.betas(), 0), s.alphas_cumprod())
    assert torch.equal(betas_from(s.q.detach(), "cosine", "chen2023", 1000), s.betas().detach())
    s.alphas_cumprod()[100].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad) for p in s.parameters())
    assert NoiseSchedule("sigmoid").hyperparameters() == dict(start=-3.0, end=3.0, tau=1.0, eps=0.0)


def test_config_round_trip_through_json():
    s = NoiseSchedule("sigmoid", "chen2023", T=500, start=-2.5, end=2.0, tau=0.9, eps=0.1)
    cfg = json.loads(json.dumps(s.to_config(), allow_nan=False))
    assert cfg["family"] == "sigmoid" and cfg["parameterisation"] == "chen2023"
    s2 = NoiseSchedule.from_config(cfg)
    assert s2.bounds == s.bounds and s2.hyperparameters() == s.hyperparameters()
    assert torch.equal(s2.alphas_cumprod(), s.alphas_cumprod())


def test_set_hyperparameters_in_place_and_rollback():
    s = NoiseSchedule()
    tau_param = s.tau
    s.set_hyperparameters({"tau": 1.2})
    assert s.tau is tau_param and s.hyperparameters()["tau"] == 1.2
    with pytest.raises(ConfigError, match="`end` must be > `start`"):
        s.set_hyperparameters({"start": 0.9, "end": 0.4})
    assert s.hyperparameters()["start"] == 0.0 and s.hyperparameters()["end"] == 1.0
    with pytest.raises(ConfigError, match="unknown schedule parameter"):
        s.set_hyperparameters({"lam": 1.0})


def test_project_clamps_with_warning_and_is_silent_inside():
    s = NoiseSchedule()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.project_()
    with torch.no_grad():
        s.end.fill_(1.3)
        s.tau.fill_(0.5)
    with pytest.warns(UserWarning, match="projected the noise schedule"):
        out = s.project_()
    assert out["end"] == 1.0 and out["tau"] == 1.0 and s.hyperparameters()["tau"] == 1.0
    s = NoiseSchedule("sigmoid", bounds={"tau": (0.2, 2.0)})
    with torch.no_grad():
        s.end.fill_(-5.0)
    with pytest.warns(UserWarning):
        s.project_()
    assert s.hyperparameters()["end"] == pytest.approx(-3.0 + 1e-10, abs=1e-12)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(start=0.9, end=0.4), r"`end` must be > `start`, got start=0.9 end=0.4"),
        (dict(tau=0.0), r"`tau` must be > 0"),
        (dict(tau=-1.0), r"`tau` must be > 0"),
        (dict(start=-0.1), r"cosine `start` must be >= 0"),
        (dict(end=1.2), r"cosine `end` must be <= 1"),
        (dict(eps=-0.01), r"cosine `eps` must be >= 0"),
        (dict(tau=math.nan), r"must be finite"),
        (dict(family="sigmoid", start=10.0, end=20.0, tau=0.01), r"non-finite alphas_cumprod"),
        (dict(family="linear"), r"unknown schedule family"),
        (dict(parameterisation="chen"), r"unknown parameterisation"),
        (dict(T=1), r"T \(number of diffusion steps\)"),
        (dict(bounds={"lam": (0, 1)}), r"unknown bound"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        NoiseSchedule(**kwargs)


def test_paper_form_not_reaching_noise_warns():
    with pytest.warns(UserWarning, match="does not match the training marginal"):
        NoiseSchedule("cosine", "paper", start=0.4, end=0.8)
    with pytest.raises(ConfigError, match="unknown NoiseSchedule config key"):
        NoiseSchedule.from_config({"family": "cosine", "gamma": 1.0})
    with pytest.raises(ConfigError, match="4-vector"):
        alphas_cumprod_from(torch.zeros(3, dtype=F64))
